// A real OAuth 2.0 / OpenID Connect provider for the test suite: `oidc-provider` on 127.0.0.1 with an
// ephemeral port, over plain HTTP. It issues JWT access tokens (RFC 9068) signed with keys generated at
// start, publishes discovery and a JWKS, and stands in for the organisation's IdP in end-to-end tests.
//
//   discovery   ${issuer}/.well-known/openid-configuration
//   JWKS        ${issuer}/jwks            (from the metadata's jwks_uri; RS256 and ES256 keys)
//   token       ${issuer}/token           client_credentials, USER_GRANT_TYPE and TOKEN_EXCHANGE_GRANT (below)
//
// Tokens. Every access token names a resource (RFC 8707 resource indicator, e.g. the MCP server URL
// behind the gateway): its `aud` is exactly the string asked for. Claims: iss, sub, aud, exp, iat, jti,
// scope, client_id, azp; for users also email, groups and any extra claims configured for the user.
// A user's `sub` is its username unless configured otherwise; a client_credentials token's `sub` is
// the client id. A token request without `resource` gets an OPAQUE token (oidc-provider 9 decides the
// format per resource server), which the processor cannot verify — the helpers always send one.
//
// Users without a browser. USER_GRANT_TYPE is a custom grant registered with `registerGrantType`: an
// authenticated client posts `username`, `resource`, `scope` (and, for tests, `ttl` and `backdate`) and
// gets an access token for that user minted by the provider's own AccessToken model, so it is signed,
// shaped and claim-extended exactly like any other access token.
//
// Token exchange (RFC 8693). TOKEN_EXCHANGE_GRANT is registered the same way, and every client may use
// it; the default client `gateway` is the one meant to. The client posts `subject_token` with
// `subject_token_type` (access_token or jwt token type URIs, nothing else), a target (`resource`, else
// `audience`: one is required, or invalid_target), and optionally `scope`, `actor_token` +
// `actor_token_type` and `requested_token_type` (access_token or jwt). The subject (and actor) token
// must be one this IdP issued: it is verified with jose against the IdP's own public keys, current and
// retired (issuer, signature, exp; `typ` at+jwt for the access_token type; any `aud`); anything else is
// invalid_grant with a description saying why. The answer is a new access token from the AccessToken
// model: `sub` and the user claims of the subject token's subject, `client_id`/`azp` the exchanging
// client, `aud` the target, `scope` as requested (default: the subject token's scope; not narrowed to
// it — scope policy is the caller's), lifetime `exchangeTokenTtlSeconds`. It carries an RFC 8693 §4.1
// `act` claim naming the party acting for the subject: the actor token's `sub` when one was given, else
// the subject token's `azp` (or `client_id`), i.e. the agent the user's token was issued to; an `act`
// already in the subject token is nested inside the new one. Response: access_token,
// issued_token_type (access_token), token_type Bearer, expires_in, scope. `refuseExchanges(mode)` makes
// every exchange fail with invalid_grant or unauthorized_client (HTTP 400) until called with undefined.
//
// Client authentication. client_secret_basic (default), client_secret_post, or private_key_jwt for a
// client configured with a public `jwks`. A private_key_jwt client assertion (client_assertion_type
// urn:ietf:params:oauth:client-assertion-type:jwt-bearer) is checked by oidc-provider itself: iss and
// sub the client id, `aud` the issuer identifier or the token endpoint URL (a string, or an array with
// one of them), `exp` and `jti` required, the `jti` usable once, alg one of oidc-provider's defaults
// (RS256, PS256, ES256, Ed25519/EdDSA; HS256 is for client_secret_jwt). A failure is 401 invalid_client.
// `tokenRequest` cannot sign for such a client: it only adds `client_id`, the caller adds
// `client_assertion_type` and `client_assertion` to the form.
//
// Availability. `pause('refuse')` closes the listening socket (connections are refused) and `resume()`
// listens again on the same port with the same keys; `pause('hang')` keeps accepting connections but
// never answers (for timeout tests). `rotateKeys()` swaps in fresh signing keys (new kids) without
// touching the socket: oidc-provider fixes its keystore at construction, so a new Provider instance
// with the same issuer, clients and users replaces the old one behind the same HTTP server.
//
// Negative tokens (never valid against this IdP's JWKS): forgeToken (a throwaway key), unsignedToken
// (alg "none"), tamperToken (a real token with edited claims, signature kept), MALFORMED_TOKENS. An
// expired but otherwise genuine token comes from `idp.expiredToken(...)`.

import { createServer } from 'node:http';
import type { IncomingMessage, Server as HttpServer, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createRequire } from 'node:module';
import { calculateJwkThumbprint, createLocalJWKSet, exportJWK, generateKeyPair, jwtVerify, SignJWT } from 'jose';
import type { JWK, JWTPayload, JWTVerifyGetKey } from 'jose';

// ---------------------------------------------------------------------------------------------
// Public types and defaults

/** The custom grant that issues a user's access token to an authenticated client, no browser. */
export const USER_GRANT_TYPE = 'urn:mcp-ext-proc:test:user';
/** RFC 8693 token exchange: a client trades a token this IdP issued for one aimed at another target. */
export const TOKEN_EXCHANGE_GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';
/** RFC 8693 token type of an access token (accepted as subject/actor token type, and the issued type). */
export const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
/** RFC 8693 token type of a JWT (accepted as subject/actor token type and as requested_token_type). */
export const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
/** `client_assertion_type` of a private_key_jwt client assertion (RFC 7523). */
export const CLIENT_ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
/** Scope the token helpers ask for when the caller gives none. */
export const DEFAULT_SCOPE = 'mcp';
/** Default access token lifetime, seconds. */
export const DEFAULT_TOKEN_TTL_SECONDS = 300;

export interface IdpUser {
  readonly username: string;
  /** Token `sub`; defaults to the username. */
  readonly sub?: string;
  readonly email?: string;
  readonly groups?: readonly string[];
  /** Further claims for this user's access tokens (cannot override iss, sub, aud, exp, iat, jti, scope, client_id). */
  readonly claims?: Readonly<Record<string, unknown>>;
}

export type ClientAuthMethod = 'client_secret_basic' | 'client_secret_post' | 'private_key_jwt';

export interface IdpClient {
  readonly clientId: string;
  /** Defaults to `${clientId}-secret`; unused (and not registered) for private_key_jwt. */
  readonly clientSecret?: string;
  /** Defaults to client_secret_basic. */
  readonly authMethod?: ClientAuthMethod;
  /** The client's PUBLIC keys; required for private_key_jwt (oidc-provider refuses private members). */
  readonly jwks?: { readonly keys: readonly JWK[] };
}

export const DEFAULT_USERS: readonly IdpUser[] = [
  { username: 'alice', email: 'alice@example.com', groups: ['analysts'] },
  { username: 'bob', email: 'bob@example.com', groups: ['engineering'] },
  { username: 'admin', email: 'admin@example.com', groups: ['mcp-admins'] },
];

export const DEFAULT_CLIENTS: readonly IdpClient[] = [
  { clientId: 'agent-a', authMethod: 'client_secret_basic' },
  { clientId: 'agent-b', authMethod: 'client_secret_post' },
  // The MCP gateway itself, which exchanges the tokens agents present for tokens aimed at a downstream.
  { clientId: 'gateway', authMethod: 'client_secret_basic', clientSecret: 'gateway-secret' },
];

/** What `refuseExchanges` makes every token exchange fail with (HTTP 400). */
export type ExchangeRefusal = 'invalid_grant' | 'unauthorized_client';

export type AccessTokenAlg = 'RS256' | 'ES256';

export interface StartIdpOptions {
  /** Replaces DEFAULT_USERS. */
  readonly users?: readonly IdpUser[];
  /** Replaces DEFAULT_CLIENTS. Every client may use client_credentials, USER_GRANT_TYPE and TOKEN_EXCHANGE_GRANT. */
  readonly clients?: readonly IdpClient[];
  /** Algorithm of access token signatures; both an RS256 and an ES256 key are published either way. */
  readonly accessTokenAlg?: AccessTokenAlg;
  /** Default access token lifetime, seconds (DEFAULT_TOKEN_TTL_SECONDS). */
  readonly tokenTtlSeconds?: number;
  /** Lifetime of tokens issued by TOKEN_EXCHANGE_GRANT, seconds (default: tokenTtlSeconds). */
  readonly exchangeTokenTtlSeconds?: number;
}

export interface UserTokenRequest {
  /** A configured username. */
  readonly user: string;
  /** A configured client id: the agent the token is issued to. */
  readonly client: string;
  /** Resource indicator; becomes `aud` verbatim. */
  readonly resource: string;
  /** Space-separated; DEFAULT_SCOPE when absent. */
  readonly scope?: string;
  readonly ttlSeconds?: number;
}

export interface ClientTokenRequest {
  readonly client: string;
  readonly resource: string;
  readonly scope?: string;
}

export interface ExpiredTokenRequest extends UserTokenRequest {
  /** How long ago `exp` was; default 600 (beyond any sane clock tolerance). */
  readonly expiredSecondsAgo?: number;
}

/** The raw answer of the token endpoint, for tests of the IdP's own errors. */
export interface TokenResponse {
  readonly status: number;
  readonly body: Readonly<Record<string, unknown>>;
}

export type PauseMode = 'refuse' | 'hang';

export interface Idp {
  /** `http://127.0.0.1:<port>`, no trailing slash. */
  readonly issuer: string;
  readonly port: number;
  readonly discoveryUrl: string;
  readonly jwksUri: string;
  readonly tokenEndpoint: string;
  readonly users: readonly IdpUser[];
  readonly clients: readonly IdpClient[];
  /** A user's access token (JWT) issued to `client` for `resource`, via USER_GRANT_TYPE. */
  userToken(request: UserTokenRequest): Promise<string>;
  /** The client's own access token (JWT), via client_credentials. */
  clientToken(request: ClientTokenRequest): Promise<string>;
  /** A genuine user token (real keys, real claims) whose `exp` is already in the past. */
  expiredToken(request: ExpiredTokenRequest): Promise<string>;
  /**
   * POST to the token endpoint as `client` with the given form fields; never throws on OAuth errors.
   * A private_key_jwt client gets only `client_id` added: put client_assertion(_type) in `form`.
   */
  tokenRequest(client: string, form: Readonly<Record<string, string>>): Promise<TokenResponse>;
  /** Token endpoint requests seen (including failed ones), for one grant type or all. */
  tokenRequests(grantType?: string): number;
  /**
   * From now on every TOKEN_EXCHANGE_GRANT request (of an authenticated client) fails with this OAuth
   * error, HTTP 400 `{ error, error_description }`; `undefined` makes exchanges work again.
   */
  refuseExchanges(mode: ExchangeRefusal | undefined): void;
  /** `kid` of the key currently signing access tokens. */
  signingKid(): string;
  /**
   * New RS256 and ES256 keys (new kids) take over signing at once; same port, issuer, users, clients.
   * The old keys leave the JWKS unless `keepPrevious` (then they stay published, no longer signing).
   */
  rotateKeys(options?: { keepPrevious?: boolean }): Promise<void>;
  /** 'refuse' (default): the port is closed. 'hang': connections are accepted, never answered. */
  pause(mode?: PauseMode): Promise<void>;
  /** Answer again, on the same port with the same keys. */
  resume(): Promise<void>;
  stop(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// The slice of oidc-provider this file uses.
//
// oidc-provider ships no type declarations (they live in @types/oidc-provider, not installed), so a
// static import would be an implicit `any`. It is loaded through createRequire (Node 24 can require an
// ES module) and cast once to the shapes below, which cover only what is used here.

interface OidcClientModel {
  readonly clientId: string;
}

interface OidcParams {
  readonly [name: string]: unknown;
}

interface OidcContext {
  readonly oidc: {
    readonly params?: OidcParams;
    readonly client?: OidcClientModel;
    readonly route?: string;
  };
  body: unknown;
}

interface ResourceServerInfo {
  readonly scope: string;
  readonly audience?: string;
  readonly accessTokenFormat: 'jwt' | 'opaque';
  readonly accessTokenTTL?: number;
  readonly jwt?: { readonly sign?: { readonly alg: string; readonly kid?: string } };
}

interface OidcResourceServer {
  readonly accessTokenTTL?: number;
}

/** AccessToken / ClientCredentials model instances, as extraTokenClaims and the grant see them. */
interface OidcToken {
  readonly kind: string;
  readonly clientId?: string;
  readonly accountId?: string;
  readonly resourceServer?: OidcResourceServer;
}

interface OidcAccessToken extends OidcToken {
  resourceServer?: OidcResourceServer;
  readonly expiration: number;
  save(): Promise<string>;
}

interface AccessTokenInit {
  readonly accountId: string;
  readonly client: OidcClientModel;
  readonly gty: string;
  readonly scope?: string;
  readonly iat?: number;
  readonly exp?: number;
}

interface OidcAccount {
  readonly accountId: string;
  claims(): Promise<Record<string, unknown>>;
}

/** What a pre/post middleware sees: any request, including those no oidc-provider route matched. */
interface OidcRequestContext {
  readonly oidc?: OidcContext['oidc'];
}

type Middleware = (ctx: OidcRequestContext, next: () => Promise<void>) => Promise<void>;

interface ClientMetadata {
  readonly client_id: string;
  readonly client_secret?: string;
  readonly jwks?: { readonly keys: readonly JWK[] };
  readonly token_endpoint_auth_method: ClientAuthMethod;
  readonly grant_types: readonly string[];
  readonly response_types: readonly string[];
  readonly redirect_uris: readonly string[];
}

interface ProviderConfiguration {
  readonly adapter: new (model: string) => MemoryStore;
  readonly clients: readonly ClientMetadata[];
  readonly jwks: { readonly keys: readonly JWK[] };
  readonly findAccount: (ctx: OidcContext, id: string) => Promise<OidcAccount | undefined>;
  readonly extraTokenClaims: (ctx: OidcContext, token: OidcToken) => Promise<Record<string, unknown> | undefined>;
  readonly features: {
    readonly clientCredentials: { readonly enabled: boolean };
    readonly devInteractions: { readonly enabled: boolean };
    readonly resourceIndicators: {
      readonly enabled: boolean;
      readonly defaultResource: (ctx: OidcContext) => Promise<string | undefined>;
      readonly useGrantedResource: (ctx: OidcContext) => Promise<boolean>;
      readonly getResourceServerInfo: (
        ctx: OidcContext,
        resourceIndicator: string,
        client: OidcClientModel,
      ) => Promise<ResourceServerInfo>;
    };
  };
  readonly ttl: {
    readonly AccessToken: (ctx: OidcContext, token: OidcToken) => number;
    readonly ClientCredentials: (ctx: OidcContext, token: OidcToken) => number;
  };
  readonly cookies: { readonly keys: readonly string[] };
}

type Stored = Record<string, unknown>;

/**
 * oidc-provider's storage interface, kept in a Map: the same as its built-in memory adapter, minus the
 * "development-only adapter" warning that adapter prints for every Provider instance. JWT access tokens
 * are never stored; only opaque artefacts (a client_credentials token without resource) are.
 */
class MemoryStore {
  readonly #entries = new Map<string, { payload: Stored; expiresAt: number | undefined }>();

  upsert(id: string, payload: Stored, expiresIn: number | undefined): Promise<void> {
    const expiresAt = expiresIn === undefined ? undefined : Date.now() + expiresIn * 1000;
    this.#entries.set(id, { payload, expiresAt });
    return Promise.resolve();
  }

  find(id: string): Promise<Stored | undefined> {
    const entry = this.#entries.get(id);
    if (entry === undefined) return Promise.resolve(undefined);
    if (entry.expiresAt !== undefined && entry.expiresAt <= Date.now()) {
      this.#entries.delete(id);
      return Promise.resolve(undefined);
    }
    return Promise.resolve(entry.payload);
  }

  async findByUserCode(userCode: string): Promise<Stored | undefined> {
    return this.#findBy('userCode', userCode);
  }

  async findByUid(uid: string): Promise<Stored | undefined> {
    return this.#findBy('uid', uid);
  }

  async consume(id: string): Promise<void> {
    const payload = await this.find(id);
    if (payload !== undefined) payload.consumed = Math.floor(Date.now() / 1000);
  }

  destroy(id: string): Promise<void> {
    this.#entries.delete(id);
    return Promise.resolve();
  }

  revokeByGrantId(grantId: string): Promise<void> {
    for (const [id, { payload }] of this.#entries) if (payload.grantId === grantId) this.#entries.delete(id);
    return Promise.resolve();
  }

  async #findBy(field: string, value: string): Promise<Stored | undefined> {
    for (const [id, { payload }] of this.#entries) if (payload[field] === value) return this.find(id);
    return undefined;
  }
}

/**
 * oidc-provider's error classes. Most take the `error_description` as argument; InvalidGrant and
 * InvalidClientAuth instead take a detail that is logged, not answered (see `invalidGrant` below).
 */
type OidcErrorClass = new (description?: string) => Error;

interface OidcProvider {
  callback(): (req: IncomingMessage, res: ServerResponse) => Promise<void>;
  use(middleware: Middleware): unknown;
  registerGrantType(
    name: string,
    handler: (ctx: OidcContext) => Promise<void>,
    parameters: readonly string[],
  ): void;
  on(event: 'server_error', listener: (ctx: OidcContext, err: Error) => void): unknown;
  readonly AccessToken: new (init: AccessTokenInit) => OidcAccessToken;
  readonly ResourceServer: new (identifier: string, info: ResourceServerInfo) => OidcResourceServer;
}

interface OidcProviderModule {
  readonly Provider: new (issuer: string, configuration: ProviderConfiguration) => OidcProvider;
  readonly errors: {
    readonly InvalidRequest: OidcErrorClass;
    readonly InvalidGrant: OidcErrorClass;
    readonly InvalidTarget: OidcErrorClass;
    readonly UnauthorizedClient: OidcErrorClass;
  };
}

const oidc = createRequire(import.meta.url)('oidc-provider') as OidcProviderModule;

// ---------------------------------------------------------------------------------------------
// Keys

interface SigningKeys {
  readonly RS256: JWK;
  readonly ES256: JWK;
}

async function generateSigningKey(alg: AccessTokenAlg): Promise<JWK> {
  const { privateKey } = await generateKeyPair(alg, { extractable: true });
  const jwk = await exportJWK(privateKey);
  const kid = await calculateJwkThumbprint(jwk);
  return { ...jwk, kid, alg, use: 'sig' };
}

async function generateSigningKeys(): Promise<SigningKeys> {
  const [rs, es] = await Promise.all([generateSigningKey('RS256'), generateSigningKey('ES256')]);
  return { RS256: rs, ES256: es };
}

function kidOf(jwk: JWK): string {
  if (jwk.kid === undefined) throw new Error('generated key without kid');
  return jwk.kid;
}

/** The public half of one of the IdP's signing keys, as published in its JWKS. */
function publicJwk(jwk: JWK): JWK {
  const { kty, crv, x, y, n, e, kid, alg, use } = jwk;
  return { kty, crv, x, y, n, e, kid, alg, use };
}

// ---------------------------------------------------------------------------------------------
// Helpers

function stringParam(params: OidcParams | undefined, name: string): string | undefined {
  const value = params?.[name];
  return typeof value === 'string' && value !== '' ? value : undefined;
}

function integerParam(params: OidcParams | undefined, name: string, min: number): number | undefined {
  const raw = stringParam(params, name);
  if (raw === undefined) return undefined;
  const value = Number(raw);
  if (!/^\d+$/.test(raw) || !Number.isSafeInteger(value) || value < min) {
    throw new oidc.errors.InvalidRequest(`${name} must be an integer >= ${min}`);
  }
  return value;
}

/**
 * invalid_grant whose `error_description` says why: oidc-provider's InvalidGrant keeps its argument as
 * an internal detail and always answers "grant request is invalid".
 */
function invalidGrant(description: string): Error {
  return Object.assign(new oidc.errors.InvalidGrant(description), { error_description: description });
}

/** subject_token_type / actor_token_type / requested_token_type values this IdP understands. */
const EXCHANGEABLE_TOKEN_TYPES: ReadonlySet<string> = new Set([ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE]);

function tokenTypeParam(params: OidcParams | undefined, name: string): string | undefined {
  const value = stringParam(params, name);
  if (value !== undefined && !EXCHANGEABLE_TOKEN_TYPES.has(value)) {
    throw new oidc.errors.InvalidRequest(`unsupported ${name} ${value}`);
  }
  return value;
}

/**
 * RFC 8693 §4.1 `act` of an exchanged token: the actor token's subject when there is one, else the
 * client the subject token was issued to; an `act` the subject token already carries (it was itself
 * exchanged) becomes the nested prior actor.
 */
function actClaim(subject: JWTPayload, actor: JWTPayload | undefined): Record<string, unknown> | undefined {
  const azp = typeof subject.azp === 'string' ? subject.azp : undefined;
  const clientId = typeof subject.client_id === 'string' ? subject.client_id : undefined;
  const actorSub = actor === undefined ? (azp ?? clientId) : actor.sub;
  if (actorSub === undefined) return undefined;
  return isRecord(subject.act) ? { sub: actorSub, act: subject.act } : { sub: actorSub };
}

function closeServer(server: HttpServer): Promise<void> {
  return new Promise((resolve, reject) => {
    server.close((err) => {
      if (err) reject(err);
      else resolve();
    });
    server.closeAllConnections();
  });
}

function listen(server: HttpServer, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => {
      reject(err);
    };
    server.once('error', onError);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', onError);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

// ---------------------------------------------------------------------------------------------
// startIdp

type IdpState = 'running' | 'refusing' | 'hanging' | 'stopped';

export async function startIdp(options: StartIdpOptions = {}): Promise<Idp> {
  const users = options.users ?? DEFAULT_USERS;
  const clients = options.clients ?? DEFAULT_CLIENTS;
  const accessTokenAlg = options.accessTokenAlg ?? 'RS256';
  const defaultTtl = options.tokenTtlSeconds ?? DEFAULT_TOKEN_TTL_SECONDS;
  const exchangeTtl = options.exchangeTokenTtlSeconds ?? defaultTtl;

  const usersByName = new Map(users.map((u) => [u.username, u]));
  const usersBySub = new Map(users.map((u) => [u.sub ?? u.username, u]));
  const clientsById = new Map(clients.map((c) => [c.clientId, c]));
  if (usersByName.size !== users.length || usersBySub.size !== users.length) throw new Error('duplicate user');
  if (clientsById.size !== clients.length) throw new Error('duplicate client');
  for (const c of clients) {
    if (c.authMethod === 'private_key_jwt' && (c.jwks?.keys.length ?? 0) === 0) {
      throw new Error(`client ${c.clientId} uses private_key_jwt but has no jwks`);
    }
  }

  const counts = new Map<string, number>();
  const serverErrors: Error[] = [];
  let keys = await generateSigningKeys();
  let retiredKeys: JWK[] = [];
  let state: IdpState = 'running';
  const hung = new Set<ServerResponse>();
  let exchangeRefusal: ExchangeRefusal | undefined;
  // The `act` claim of each token minted by the exchange grant, keyed by the AccessToken instance:
  // extraTokenClaims receives that very instance when the token is formatted (during save()), and
  // oidc-provider overwrites the model's own `extra` with extraTokenClaims' result, so this is the
  // channel for a per-token claim.
  const actClaims = new WeakMap<object, Record<string, unknown>>();

  let dispatch: ((req: IncomingMessage, res: ServerResponse) => Promise<void>) | undefined;
  const server = createServer((req, res) => {
    // No keep-alive: a client never holds a pooled connection, so after pause('refuse') its next request
    // is refused outright (ECONNREFUSED) instead of failing on a socket the IdP closed under it.
    res.setHeader('connection', 'close');
    if (state === 'hanging' || dispatch === undefined) {
      hung.add(res);
      res.once('close', () => hung.delete(res));
      return;
    }
    void dispatch(req, res);
  });
  const port = await listen(server, 0);
  const issuer = `http://127.0.0.1:${port}`;

  const clientMetadata: ClientMetadata[] = clients.map((c) => ({
    client_id: c.clientId,
    ...(c.authMethod === 'private_key_jwt' ? {} : { client_secret: c.clientSecret ?? `${c.clientId}-secret` }),
    ...(c.jwks === undefined ? {} : { jwks: c.jwks }),
    token_endpoint_auth_method: c.authMethod ?? 'client_secret_basic',
    grant_types: ['client_credentials', USER_GRANT_TYPE, TOKEN_EXCHANGE_GRANT],
    response_types: [],
    redirect_uris: [],
  }));

  function resourceServerInfo(scope: string, ttl?: number): ResourceServerInfo {
    return {
      // Whatever the client asked for is granted: this IdP does not model per-resource scope policy.
      scope,
      accessTokenFormat: 'jwt',
      ...(ttl === undefined ? {} : { accessTokenTTL: ttl }),
      jwt: { sign: { alg: accessTokenAlg, kid: kidOf(keys[accessTokenAlg]) } },
    };
  }

  function buildProvider(): OidcProvider {
    // What the exchange grant trusts: this IdP's own public keys, the signing ones and any retired ones
    // still published (the same set as the JWKS endpoint; rotateKeys builds a new provider).
    const ownKeys: JWTVerifyGetKey = createLocalJWKSet({
      keys: [keys.RS256, keys.ES256, ...retiredKeys].map(publicJwk),
    });

    /** A token this IdP issued (signature, issuer, exp, sub); invalid_grant naming the parameter if not. */
    async function verifyOwnToken(token: string, param: string, tokenType: string): Promise<JWTPayload & { sub: string }> {
      let payload: JWTPayload;
      try {
        ({ payload } = await jwtVerify(token, ownKeys, {
          issuer,
          algorithms: ['RS256', 'ES256'],
          requiredClaims: ['exp', 'sub'],
          ...(tokenType === ACCESS_TOKEN_TYPE ? { typ: 'at+jwt' } : {}),
        }));
      } catch (err) {
        throw invalidGrant(`${param} rejected: ${err instanceof Error ? err.message : String(err)}`);
      }
      const { sub } = payload;
      if (sub === undefined) throw invalidGrant(`${param} has no sub`);
      return { ...payload, sub };
    }

    const provider = new oidc.Provider(issuer, {
      adapter: MemoryStore,
      clients: clientMetadata,
      jwks: { keys: [keys.RS256, keys.ES256, ...retiredKeys] },
      findAccount: (_ctx, id) => {
        const user = usersBySub.get(id);
        if (user === undefined) return Promise.resolve(undefined);
        return Promise.resolve({
          accountId: id,
          claims: () => Promise.resolve({ sub: id, email: user.email, groups: user.groups }),
        });
      },
      extraTokenClaims: (_ctx, token) => {
        const claims: Record<string, unknown> = { azp: token.clientId };
        const user = token.accountId === undefined ? undefined : usersBySub.get(token.accountId);
        if (user !== undefined) {
          Object.assign(claims, user.claims);
          if (user.email !== undefined) claims.email = user.email;
          claims.groups = [...(user.groups ?? [])];
        }
        const act = actClaims.get(token);
        if (act !== undefined) claims.act = act;
        return Promise.resolve(claims);
      },
      features: {
        clientCredentials: { enabled: true },
        devInteractions: { enabled: false },
        resourceIndicators: {
          enabled: true,
          defaultResource: () => Promise.resolve(undefined),
          useGrantedResource: () => Promise.resolve(false),
          getResourceServerInfo: (ctx) =>
            Promise.resolve(resourceServerInfo(stringParam(ctx.oidc.params, 'scope') ?? '')),
        },
      },
      ttl: {
        AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? defaultTtl,
        ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? defaultTtl,
      },
      cookies: { keys: ['idp-test-cookie-key'] },
    });

    provider.use(async (ctx: OidcRequestContext, next) => {
      try {
        await next();
      } finally {
        // ctx.oidc exists only on routes oidc-provider knows (not on a 404).
        if (ctx.oidc?.route === 'token') {
          const grant = stringParam(ctx.oidc.params, 'grant_type') ?? '(none)';
          counts.set(grant, (counts.get(grant) ?? 0) + 1);
        }
      }
    });

    provider.on('server_error', (_ctx, err) => {
      serverErrors.push(err);
    });

    provider.registerGrantType(
      USER_GRANT_TYPE,
      async (ctx) => {
        const params = ctx.oidc.params;
        const client = ctx.oidc.client;
        if (client === undefined) throw new oidc.errors.InvalidRequest('client not authenticated');
        const username = stringParam(params, 'username');
        if (username === undefined) throw new oidc.errors.InvalidRequest('missing username');
        const user = usersByName.get(username);
        if (user === undefined) throw new oidc.errors.InvalidGrant(`unknown user ${username}`);
        const resource = stringParam(params, 'resource');
        if (resource === undefined) throw new oidc.errors.InvalidTarget('resource is required');
        const href = URL.parse(resource)?.href;
        if (href === undefined || href.includes('#')) {
          throw new oidc.errors.InvalidTarget('resource indicator must be an absolute URI without fragment');
        }
        const scope = stringParam(params, 'scope');
        const ttl = integerParam(params, 'ttl', 1) ?? defaultTtl;
        const backdate = integerParam(params, 'backdate', 0) ?? 0;

        const now = Math.floor(Date.now() / 1000);
        const token = new provider.AccessToken({
          accountId: user.sub ?? user.username,
          client,
          gty: USER_GRANT_TYPE,
          ...(scope === undefined ? {} : { scope }),
          ...(backdate > 0 ? { iat: now - backdate, exp: now - backdate + ttl } : {}),
        });
        token.resourceServer = new provider.ResourceServer(resource, resourceServerInfo(scope ?? '', ttl));
        const accessToken = await token.save();
        ctx.body = {
          access_token: accessToken,
          token_type: 'Bearer',
          expires_in: backdate > 0 ? Math.max(0, ttl - backdate) : token.expiration,
          ...(scope === undefined ? {} : { scope }),
        };
      },
      ['username', 'resource', 'scope', 'ttl', 'backdate'],
    );

    provider.registerGrantType(
      TOKEN_EXCHANGE_GRANT,
      async (ctx) => {
        const params = ctx.oidc.params;
        const client = ctx.oidc.client;
        if (client === undefined) throw new oidc.errors.InvalidRequest('client not authenticated');
        if (exchangeRefusal === 'unauthorized_client') {
          throw new oidc.errors.UnauthorizedClient(`client ${client.clientId} may not exchange tokens`);
        }
        if (exchangeRefusal === 'invalid_grant') throw invalidGrant('token exchange refused by policy');

        const subjectToken = stringParam(params, 'subject_token');
        if (subjectToken === undefined) throw new oidc.errors.InvalidRequest('missing subject_token');
        const subjectTokenType = tokenTypeParam(params, 'subject_token_type');
        if (subjectTokenType === undefined) throw new oidc.errors.InvalidRequest('missing subject_token_type');
        const actorToken = stringParam(params, 'actor_token');
        const actorTokenType = tokenTypeParam(params, 'actor_token_type');
        if ((actorToken === undefined) !== (actorTokenType === undefined)) {
          throw new oidc.errors.InvalidRequest('actor_token and actor_token_type go together');
        }
        tokenTypeParam(params, 'requested_token_type');

        const resource = stringParam(params, 'resource');
        if (resource !== undefined) {
          const href = URL.parse(resource)?.href;
          if (href === undefined || href.includes('#')) {
            throw new oidc.errors.InvalidTarget('resource indicator must be an absolute URI without fragment');
          }
        }
        const target = resource ?? stringParam(params, 'audience');
        if (target === undefined) throw new oidc.errors.InvalidTarget('resource or audience is required');

        const subject = await verifyOwnToken(subjectToken, 'subject_token', subjectTokenType);
        const actor =
          actorToken === undefined || actorTokenType === undefined
            ? undefined
            : await verifyOwnToken(actorToken, 'actor_token', actorTokenType);
        const subjectScope = typeof subject.scope === 'string' && subject.scope !== '' ? subject.scope : undefined;
        const scope = stringParam(params, 'scope') ?? subjectScope;

        const token = new provider.AccessToken({
          accountId: subject.sub,
          client,
          gty: TOKEN_EXCHANGE_GRANT,
          ...(scope === undefined ? {} : { scope }),
        });
        token.resourceServer = new provider.ResourceServer(target, resourceServerInfo(scope ?? '', exchangeTtl));
        const act = actClaim(subject, actor);
        if (act !== undefined) actClaims.set(token, act);
        const accessToken = await token.save();
        ctx.body = {
          access_token: accessToken,
          issued_token_type: ACCESS_TOKEN_TYPE,
          token_type: 'Bearer',
          expires_in: token.expiration,
          ...(scope === undefined ? {} : { scope }),
        };
      },
      [
        'subject_token',
        'subject_token_type',
        'actor_token',
        'actor_token_type',
        'audience',
        'resource',
        'scope',
        'requested_token_type',
      ],
    );

    return provider;
  }

  dispatch = buildProvider().callback();

  async function tokenRequest(clientId: string, form: Readonly<Record<string, string>>): Promise<TokenResponse> {
    const client = clientsById.get(clientId);
    if (client === undefined) throw new Error(`unknown client ${clientId}`);
    const secret = client.clientSecret ?? `${client.clientId}-secret`;
    const body = new URLSearchParams(form);
    const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded' };
    const method = client.authMethod ?? 'client_secret_basic';
    if (method === 'client_secret_basic') {
      const user = encodeURIComponent(client.clientId);
      headers.authorization = `Basic ${Buffer.from(`${user}:${encodeURIComponent(secret)}`).toString('base64')}`;
    } else if (method === 'client_secret_post') {
      body.set('client_id', client.clientId);
      body.set('client_secret', secret);
    } else {
      // private_key_jwt: the caller signed the assertion and put it in the form.
      body.set('client_id', client.clientId);
    }
    const res = await fetch(`${issuer}/token`, { method: 'POST', headers, body });
    const parsed: unknown = await res.json();
    return { status: res.status, body: isRecord(parsed) ? parsed : { value: parsed } };
  }

  async function accessToken(clientId: string, form: Readonly<Record<string, string>>): Promise<string> {
    const errorsBefore = serverErrors.length;
    const { status, body } = await tokenRequest(clientId, form);
    const token = body.access_token;
    if (status !== 200 || typeof token !== 'string') {
      const cause = serverErrors.slice(errorsBefore).map((e) => e.message).join('; ');
      throw new Error(
        `token request (${form.grant_type ?? '?'}) as ${clientId} failed: HTTP ${status} ${JSON.stringify(body)}` +
          (cause === '' ? '' : ` (server error: ${cause})`),
      );
    }
    return token;
  }

  function userForm(request: UserTokenRequest, extra: Readonly<Record<string, string>> = {}): Record<string, string> {
    return {
      grant_type: USER_GRANT_TYPE,
      username: request.user,
      resource: request.resource,
      scope: request.scope ?? DEFAULT_SCOPE,
      ...(request.ttlSeconds === undefined ? {} : { ttl: String(request.ttlSeconds) }),
      ...extra,
    };
  }

  async function pause(mode: PauseMode = 'refuse'): Promise<void> {
    if (state === 'stopped') throw new Error('IdP is stopped');
    if (state === 'refusing' && mode === 'hang') await resume();
    if (mode === 'refuse' && state !== 'refusing') {
      state = 'refusing';
      await closeServer(server);
    } else if (mode === 'hang') {
      state = 'hanging';
    }
  }

  async function resume(): Promise<void> {
    if (state === 'stopped') throw new Error('IdP is stopped');
    for (const res of hung) res.destroy();
    hung.clear();
    if (state === 'refusing') {
      const again = await listen(server, port);
      if (again !== port) throw new Error(`IdP came back on port ${again}, not ${port}`);
    }
    state = 'running';
  }

  return {
    issuer,
    port,
    discoveryUrl: `${issuer}/.well-known/openid-configuration`,
    jwksUri: `${issuer}/jwks`,
    tokenEndpoint: `${issuer}/token`,
    users,
    clients,
    userToken: (request) => accessToken(request.client, userForm(request)),
    clientToken: (request) =>
      accessToken(request.client, {
        grant_type: 'client_credentials',
        resource: request.resource,
        scope: request.scope ?? DEFAULT_SCOPE,
      }),
    expiredToken: (request) => {
      const ttl = request.ttlSeconds ?? defaultTtl;
      const ago = request.expiredSecondsAgo ?? 600;
      return accessToken(request.client, userForm({ ...request, ttlSeconds: ttl }, { backdate: String(ttl + ago) }));
    },
    tokenRequest,
    tokenRequests: (grantType) => {
      if (grantType !== undefined) return counts.get(grantType) ?? 0;
      let total = 0;
      for (const n of counts.values()) total += n;
      return total;
    },
    refuseExchanges: (mode) => {
      exchangeRefusal = mode;
    },
    signingKid: () => kidOf(keys[accessTokenAlg]),
    rotateKeys: async ({ keepPrevious = false } = {}) => {
      const next = await generateSigningKeys();
      retiredKeys = keepPrevious ? [keys.RS256, keys.ES256, ...retiredKeys] : [];
      keys = next;
      dispatch = buildProvider().callback();
    },
    pause,
    resume,
    stop: async () => {
      if (state === 'stopped') return;
      const wasListening = state !== 'refusing';
      state = 'stopped';
      for (const res of hung) res.destroy();
      hung.clear();
      if (wasListening) await closeServer(server);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Negative tokens: none of these verifies against any startIdp() JWKS.

function base64urlJson(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

/**
 * A well-formed JWT with the given claims, signed by a throwaway key generated for this call (never
 * published anywhere). `kid` defaults to "forged"; pass a real kid (e.g. `idp.signingKid()`) to test
 * that a matching kid with a wrong key is still refused. `typ` is at+jwt like the IdP's tokens.
 */
export async function forgeToken(
  claims: JWTPayload,
  { alg = 'RS256', kid = 'forged' }: { alg?: AccessTokenAlg | 'HS256'; kid?: string } = {},
): Promise<string> {
  const jwt = new SignJWT(claims).setProtectedHeader({ alg, kid, typ: 'at+jwt' });
  if (alg === 'HS256') {
    return jwt.sign(crypto.getRandomValues(new Uint8Array(32)));
  }
  const { privateKey } = await generateKeyPair(alg);
  return jwt.sign(privateKey);
}

/** An unsecured JWT: header `{"alg":"none","typ":"at+jwt"}`, the claims, and an empty signature. */
export function unsignedToken(claims: JWTPayload, kid?: string): string {
  const header = kid === undefined ? { alg: 'none', typ: 'at+jwt' } : { alg: 'none', typ: 'at+jwt', kid };
  return `${base64urlJson(header)}.${base64urlJson(claims)}.`;
}

/**
 * A real token with its payload replaced by the original claims merged with `changes` (a key set to
 * undefined is removed), header and signature kept: e.g. `tamperToken(t, { groups: ['mcp-admins'] })`.
 */
export function tamperToken(token: string, changes: Readonly<Record<string, unknown>>): string {
  const [header, payload, signature] = token.split('.');
  if (header === undefined || payload === undefined || signature === undefined) throw new Error('not a JWS');
  const claims: unknown = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
  if (!isRecord(claims)) throw new Error('JWT payload is not an object');
  const edited: Record<string, unknown> = { ...claims };
  for (const [name, value] of Object.entries(changes)) {
    if (value === undefined) Reflect.deleteProperty(edited, name);
    else edited[name] = value;
  }
  return `${header}.${base64urlJson(edited)}.${signature}`;
}

/** Bearer values that are not parseable JWS compact tokens at all, by what is wrong with them. */
export const MALFORMED_TOKENS: Readonly<Record<string, string>> = {
  notAJwt: 'not-a-jwt',
  twoSegments: `${base64urlJson({ alg: 'RS256' })}.${base64urlJson({ sub: 'alice' })}`,
  fourSegments: `${base64urlJson({ alg: 'RS256' })}.${base64urlJson({ sub: 'alice' })}.c2ln.ZXh0cmE`,
  headerNotBase64: `%%%.${base64urlJson({ sub: 'alice' })}.c2ln`,
  headerNotJson: `${Buffer.from('{not json').toString('base64url')}.${base64urlJson({ sub: 'alice' })}.c2ln`,
  payloadNotJson: `${base64urlJson({ alg: 'RS256', typ: 'at+jwt' })}.${Buffer.from('[1,').toString('base64url')}.c2ln`,
  empty: '',
};
