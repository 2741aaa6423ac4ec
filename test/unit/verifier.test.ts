// TokenVerifier against a real (tiny) IdP: a node:http server serving discovery documents and JWKS for
// keys generated here, so discovery, JWKS fetching, refresh and failure handling all go over HTTP.
// The verifier's clock is frozen (`now`); tests move it explicitly.

import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, exportSPKI, generateKeyPair, importJWK, SignJWT, UnsecuredJWT } from 'jose';
import type { CryptoKey, JWK, JWTPayload } from 'jose';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { GatewayError } from '../../ext-proc/src/errors.ts';
import type { ErrorCode } from '../../ext-proc/src/errors.ts';
import { DEFAULT_CLAIMS, TokenVerifier } from '../../ext-proc/src/identity/verifier.ts';
import type { IssuerSpec, TokenVerifierOptions } from '../../ext-proc/src/identity/verifier.ts';

const AUDIENCE = 'https://gateway.example.com/mcp/github';
const T0 = Date.UTC(2026, 2, 1, 12, 0, 0);
const T0S = T0 / 1000;
const SKEW = 60;

// ---- the fake IdP --------------------------------------------------------------------------------

type Behaviour = 200 | 404 | 500 | 503 | 'hang' | 'not-json';

interface IdpState {
  okta: { metadata: Behaviour; jwks: Behaviour; keys: JWK[] };
  keycloak: { jwks: Behaviour; keys: JWK[] };
  hits: Map<string, number>;
}

let server: Server;
let base = '';
let okta = '';
let keycloak = '';
let mismatched = '';
let idp: IdpState;

interface KeyPair {
  readonly kid: string;
  readonly privateKey: CryptoKey;
  readonly publicKey: CryptoKey;
  readonly jwk: JWK;
}

let oktaKey: KeyPair;
let oktaNextKey: KeyPair;
let keycloakKey: KeyPair;
let attackerKey: KeyPair;

async function keyPair(alg: 'RS256' | 'ES256', kid: string): Promise<KeyPair> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  return { kid, privateKey, publicKey, jwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' } };
}

function hits(path: string): number {
  return idp.hits.get(path) ?? 0;
}

function respond(res: ServerResponse, behaviour: Behaviour, body: () => unknown): void {
  if (behaviour === 'hang') return; // never answers; closed with the server
  if (behaviour === 'not-json') {
    res.writeHead(200, { 'content-type': 'application/json' }).end('{"keys": [');
    return;
  }
  if (behaviour !== 200) {
    res.writeHead(behaviour, { 'content-type': 'text/plain' }).end('unavailable');
    return;
  }
  res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body()));
}

function handle(req: IncomingMessage, res: ServerResponse): void {
  const path = new URL(req.url ?? '/', base).pathname;
  idp.hits.set(path, hits(path) + 1);
  switch (path) {
    // Okta-like: OIDC discovery.
    case '/okta/.well-known/openid-configuration':
      respond(res, idp.okta.metadata, () => ({ issuer: okta, jwks_uri: `${okta}/keys` }));
      return;
    case '/okta/keys':
      respond(res, idp.okta.jwks, () => ({ keys: idp.okta.keys }));
      return;
    // Keycloak-like realm that only publishes RFC 8414 metadata (path-inserted), to exercise the fallback.
    case '/.well-known/oauth-authorization-server/realms/corp':
      respond(res, 200, () => ({ issuer: keycloak, jwks_uri: `${keycloak}/keys` }));
      return;
    case '/realms/corp/keys':
      respond(res, idp.keycloak.jwks, () => ({ keys: idp.keycloak.keys }));
      return;
    // Metadata that claims to be another issuer's.
    case '/mismatch/.well-known/openid-configuration':
      respond(res, 200, () => ({ issuer: okta, jwks_uri: `${okta}/keys` }));
      return;
    default:
      respond(res, 404, () => null);
  }
}

beforeAll(async () => {
  [oktaKey, oktaNextKey, keycloakKey, attackerKey] = await Promise.all([
    keyPair('RS256', 'okta-1'),
    keyPair('RS256', 'okta-2'),
    keyPair('ES256', 'kc-1'),
    keyPair('RS256', 'okta-1'), // same kid as the real key, different key
  ]);
  server = createServer(handle);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  okta = `${base}/okta`;
  keycloak = `${base}/realms/corp`;
  mismatched = `${base}/mismatch`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

// ---- verifier and tokens -------------------------------------------------------------------------

let clock = T0;

beforeEach(() => {
  clock = T0;
  idp = {
    okta: { metadata: 200, jwks: 200, keys: [oktaKey.jwk] },
    keycloak: { jwks: 200, keys: [keycloakKey.jwk] },
    hits: new Map(),
  };
});

afterEach(() => {
  vi.restoreAllMocks();
});

function issuers(): IssuerSpec[] {
  return [
    { name: 'okta', issuer: okta, algorithms: ['RS256'], claims: DEFAULT_CLAIMS },
    { name: 'keycloak', issuer: keycloak, algorithms: ['ES256'], claims: DEFAULT_CLAIMS },
  ];
}

function verifier(specs: IssuerSpec[] = issuers(), options: Partial<TokenVerifierOptions> = {}): TokenVerifier {
  return new TokenVerifier(specs, { clockSkewSeconds: SKEW, now: () => clock, ...options });
}

interface SignOptions {
  readonly key?: KeyPair;
  readonly alg?: string;
  readonly kid?: string | undefined;
  readonly typ?: string;
}

/** A token from the Okta-like issuer for AUDIENCE, valid for an hour from T0, with `claims` on top. */
async function token(claims: JWTPayload = {}, options: SignOptions = {}): Promise<string> {
  const key = options.key ?? oktaKey;
  const payload: JWTPayload = { iss: okta, aud: AUDIENCE, sub: 'alice', iat: T0S, exp: T0S + 3600, ...claims };
  for (const [name, value] of Object.entries(payload)) if (value === undefined) Reflect.deleteProperty(payload, name);
  const kid = 'kid' in options ? options.kid : key.kid;
  return new SignJWT(payload)
    .setProtectedHeader({ alg: options.alg ?? 'RS256', ...(kid === undefined ? {} : { kid }), ...(options.typ === undefined ? {} : { typ: options.typ }) })
    .sign(key.privateKey);
}

async function keycloakToken(claims: JWTPayload = {}): Promise<string> {
  return token({ iss: keycloak, ...claims }, { key: keycloakKey, alg: 'ES256' });
}

async function rejection(promise: Promise<unknown>, code: ErrorCode): Promise<string> {
  let caught: unknown;
  try {
    await promise;
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(GatewayError);
  const err = caught as GatewayError;
  expect(err.code, err.message).toBe(code);
  return err.message;
}

function b64(value: string): string {
  return Buffer.from(value).toString('base64url');
}

function countSignatureChecks(): { readonly count: number } {
  const spy = vi.spyOn(crypto.subtle, 'verify');
  return {
    get count() {
      return spy.mock.calls.length;
    },
  };
}

// ---- tests ---------------------------------------------------------------------------------------

describe('TokenVerifier: mapping verified tokens to callers', () => {
  it('maps an RS256 token from an OIDC-discovered issuer to a Caller with its claims', async () => {
    const claims = {
      email: 'alice@example.com',
      groups: 'mcp-users, admins  ops',
      scope: 'tools:read tools:call',
      azp: 'claude-desktop',
      client_id: 'ignored-when-azp-is-present',
      jti: 'token-1',
    };
    const caller = await verifier().verify(await token(claims), AUDIENCE);
    expect(caller).toEqual({
      user: {
        issuerName: 'okta',
        issuer: okta,
        subject: 'alice',
        email: 'alice@example.com',
        groups: ['mcp-users', 'admins', 'ops'],
        scopes: ['tools:read', 'tools:call'],
        tokenId: 'token-1',
        issuedAt: T0S,
        expiresAt: T0S + 3600,
        claims: { iss: okta, aud: AUDIENCE, sub: 'alice', iat: T0S, exp: T0S + 3600, ...claims },
      },
      agent: { clientId: 'claude-desktop', spiffeId: undefined, id: 'claude-desktop' },
    });
    expect(hits('/okta/.well-known/openid-configuration')).toBe(1);
    expect(hits('/okta/keys')).toBe(1);
  });

  it('maps an ES256 token from an RFC 8414-only issuer, with scp and groups arrays and the mTLS workload as agent', async () => {
    const t = await keycloakToken({ sub: 'bob', scp: ['tools:read'], groups: ['eng', 'sre'], client_id: 'vscode' });
    const caller = await verifier().verify(t, AUDIENCE, 'spiffe://corp.example/ns/agents/sa/triage');
    expect(caller.user).toMatchObject({ issuerName: 'keycloak', issuer: keycloak, subject: 'bob', email: undefined, groups: ['eng', 'sre'], scopes: ['tools:read'], tokenId: undefined });
    expect(caller.agent).toEqual({ clientId: 'vscode', spiffeId: 'spiffe://corp.example/ns/agents/sa/triage', id: 'spiffe://corp.example/ns/agents/sa/triage' });
    expect(hits('/realms/corp/.well-known/openid-configuration')).toBe(1); // tried first, 404
    expect(hits('/.well-known/oauth-authorization-server/realms/corp')).toBe(1);
  });

  it('reads scopes from a space-separated scp (Entra ID) only when scope is absent', async () => {
    const v = verifier();
    expect((await v.verify(await token({ scp: 'User.Read Mail.Read' }), AUDIENCE)).user.scopes).toEqual(['User.Read', 'Mail.Read']);
    expect((await v.verify(await token({ scope: 'a', scp: 'b c' }), AUDIENCE)).user.scopes).toEqual(['a']);
  });

  it('follows a custom claim mapping, and gives an agent-less token the empty agent id', async () => {
    const claims = { subject: 'oid', email: 'upn', groups: 'roles', scopes: 'permissions', agent: ['appid'] };
    const v = verifier([{ name: 'entra', issuer: okta, algorithms: ['RS256'], claims }]);
    const caller = await v.verify(await token({ oid: 'u-42', upn: 'carol@example.com', roles: ['Tools.Call'], permissions: 'x y', scp: 'ignored' }), AUDIENCE);
    expect(caller.user).toMatchObject({ issuerName: 'entra', subject: 'u-42', email: 'carol@example.com', groups: ['Tools.Call'], scopes: ['x', 'y'] });
    expect(caller.agent).toEqual({ clientId: undefined, spiffeId: undefined, id: '' });
  });

  it('refuses a token without the mapped subject claim', async () => {
    const message = await rejection(verifier().verify(await token({ sub: undefined }), AUDIENCE), 'ERR_IDENTITY_INVALID');
    expect(message).toBe('the token has no "sub" claim (the subject, a non-empty string) for issuer "okta"');
  });

  it('refuses a token without exp, which would otherwise be valid forever', async () => {
    const message = await rejection(verifier().verify(await token({ exp: undefined }), AUDIENCE), 'ERR_IDENTITY_INVALID');
    expect(message).toBe('the token has no "exp" claim, which is required');
  });
});

describe('TokenVerifier: audience and time', () => {
  it('refuses a token minted for another resource and names both audiences', async () => {
    const v = verifier();
    const other = 'https://gateway.example.com/mcp/jira';
    const message = await rejection(v.verify(await token({ aud: other }), AUDIENCE), 'ERR_IDENTITY_AUDIENCE');
    expect(message).toBe(`the token's audience is "${other}", expected "${AUDIENCE}" (this MCP server)`);
    const arrayMessage = await rejection(v.verify(await token({ aud: [other, 'api://upstream'] }), AUDIENCE), 'ERR_IDENTITY_AUDIENCE');
    expect(arrayMessage).toBe(`the token's audience is ["${other}","api://upstream"], expected "${AUDIENCE}" (this MCP server)`);
  });

  it('accepts an audience array that contains the resource', async () => {
    const caller = await verifier().verify(await token({ aud: ['api://other', AUDIENCE] }), AUDIENCE);
    expect(caller.user.subject).toBe('alice');
  });

  it('refuses a token with no audience at all', async () => {
    const message = await rejection(verifier().verify(await token({ aud: undefined }), AUDIENCE), 'ERR_IDENTITY_AUDIENCE');
    expect(message).toBe(`the token has no audience ("aud" claim), expected "${AUDIENCE}" (this MCP server)`);
  });

  it('refuses a cached token when it is presented for another audience', async () => {
    const v = verifier();
    const t = await token();
    await v.verify(t, AUDIENCE);
    await rejection(v.verify(t, 'https://gateway.example.com/mcp/jira'), 'ERR_IDENTITY_AUDIENCE');
  });

  it('refuses a token expired beyond the clock skew and says when it expired', async () => {
    const message = await rejection(verifier().verify(await token({ exp: T0S - 120 }), AUDIENCE), 'ERR_IDENTITY_EXPIRED');
    expect(message).toBe(`the token expired at ${new Date((T0S - 120) * 1000).toISOString()}, 120 s ago, beyond the 60 s clock skew allowed`);
  });

  it('accepts a token expired within the clock skew', async () => {
    const caller = await verifier().verify(await token({ exp: T0S - 30 }), AUDIENCE);
    expect(caller.user.expiresAt).toBe(T0S - 30);
  });

  it('refuses a token whose nbf is beyond the skew in the future, and accepts one within it', async () => {
    const v = verifier();
    const message = await rejection(v.verify(await token({ nbf: T0S + 300 }), AUDIENCE), 'ERR_IDENTITY_EXPIRED');
    expect(message).toBe(`the token is not valid before ${new Date((T0S + 300) * 1000).toISOString()}, 300 s from now, beyond the 60 s clock skew allowed`);
    await expect(v.verify(await token({ nbf: T0S + 30 }), AUDIENCE)).resolves.toBeDefined();
  });
});

describe('TokenVerifier: algorithms, keys and token types', () => {
  it('refuses an unsigned token (alg none) without fetching keys', async () => {
    const unsigned = new UnsecuredJWT({ iss: okta, aud: AUDIENCE, sub: 'mallory', exp: T0S + 3600 }).encode();
    const message = await rejection(verifier().verify(unsigned, AUDIENCE), 'ERR_IDENTITY_INVALID');
    expect(message).toBe('the token is unsigned (alg "none"); issuer "okta" accepts RS256');
    expect(hits('/okta/keys')).toBe(0);
  });

  it('refuses an HS256 token keyed with the issuer public key (algorithm confusion)', async () => {
    const secret = new TextEncoder().encode(await exportSPKI(oktaKey.publicKey));
    const forged = await new SignJWT({ iss: okta, aud: AUDIENCE, sub: 'mallory', exp: T0S + 3600 })
      .setProtectedHeader({ alg: 'HS256', kid: oktaKey.kid })
      .sign(secret);
    const message = await rejection(verifier().verify(forged, AUDIENCE), 'ERR_IDENTITY_INVALID');
    expect(message).toBe('the token\'s algorithm "HS256" is not allowed for issuer "okta" (allowed: RS256)');
  });

  it('refuses an algorithm the issuer is not configured for, before fetching its keys', async () => {
    const rs384 = await importJWK(await exportJWK(oktaKey.privateKey), 'RS384');
    const t = await token({}, { key: { ...oktaKey, privateKey: rs384 as CryptoKey }, alg: 'RS384' });
    const message = await rejection(verifier().verify(t, AUDIENCE), 'ERR_IDENTITY_INVALID');
    expect(message).toBe('the token\'s algorithm "RS384" is not allowed for issuer "okta" (allowed: RS256)');
    expect(hits('/okta/keys')).toBe(0);
  });

  it('refuses a token signed by another key under the issuer key id', async () => {
    const message = await rejection(verifier().verify(await token({}, { key: attackerKey }), AUDIENCE), 'ERR_IDENTITY_INVALID');
    expect(message).toBe('the token\'s signature does not verify with the key of issuer "okta" it names (kid "okta-1", alg "RS256")');
  });

  it('refuses a token naming an unknown key id, and a flood of them fetches the JWKS once per cooldown', async () => {
    const v = verifier();
    await v.verify(await token(), AUDIENCE);
    expect(hits('/okta/keys')).toBe(1);
    const forged = await token({}, { key: attackerKey, kid: 'made-up' });
    const message = await rejection(v.verify(forged, AUDIENCE), 'ERR_IDENTITY_INVALID');
    expect(message).toBe('no signing key of issuer "okta" matches the token (kid "made-up", alg "RS256") in the key set it publishes');
    for (let i = 0; i < 50; i++) await rejection(v.verify(await token({ jti: String(i) }, { key: attackerKey, kid: `made-up-${i}` }), AUDIENCE), 'ERR_IDENTITY_INVALID');
    expect(hits('/okta/keys')).toBe(1);
    clock += 31_000;
    await rejection(v.verify(forged, AUDIENCE), 'ERR_IDENTITY_INVALID');
    await rejection(v.verify(forged, AUDIENCE), 'ERR_IDENTITY_INVALID');
    expect(hits('/okta/keys')).toBe(2);
  });

  it('picks up a rotated-in key when a token names its kid', async () => {
    const v = verifier();
    await v.verify(await token(), AUDIENCE);
    idp.okta.keys = [oktaKey.jwk, oktaNextKey.jwk];
    clock += 31_000;
    const caller = await v.verify(await token({ sub: 'dave' }, { key: oktaNextKey }), AUDIENCE);
    expect(caller.user.subject).toBe('dave');
    expect(hits('/okta/keys')).toBe(2);
  });

  it('stops trusting a key the issuer withdrew once its keys are older than ten minutes', async () => {
    const v = verifier();
    await v.verify(await token({ jti: 'a' }), AUDIENCE);
    idp.okta.keys = [oktaNextKey.jwk];
    clock += 11 * 60_000;
    const message = await rejection(v.verify(await token({ jti: 'b', exp: T0S + 7200 }), AUDIENCE), 'ERR_IDENTITY_INVALID');
    expect(message).toBe('no signing key of issuer "okta" matches the token (kid "okta-1", alg "RS256") in the key set it publishes');
    expect(hits('/okta/keys')).toBe(2);
  });

  it('refuses a JWT of another type signed by the same issuer, and accepts RFC 9068 access tokens', async () => {
    const v = verifier();
    const message = await rejection(v.verify(await token({}, { typ: 'dpop+jwt' }), AUDIENCE), 'ERR_IDENTITY_INVALID');
    expect(message).toBe('the token\'s type (typ) "dpop+jwt" is not an access token (accepted: JWT, at+jwt, or none)');
    await expect(v.verify(await token({}, { typ: 'at+jwt' }), AUDIENCE)).resolves.toBeDefined();
    await expect(v.verify(await token({ jti: 'x' }, { typ: 'application/at+JWT' }), AUDIENCE)).resolves.toBeDefined();
  });

  it('refuses a token from an issuer that is not configured, naming it', async () => {
    const t = await token({ iss: 'https://evil.example.com' });
    const message = await rejection(verifier().verify(t, AUDIENCE), 'ERR_IDENTITY_ISSUER_UNKNOWN');
    expect(message).toBe('the token\'s issuer "https://evil.example.com" is not one of the 2 configured issuers');
  });
});

describe('TokenVerifier: garbage in the Authorization header', () => {
  const header = b64(JSON.stringify({ alg: 'RS256', kid: 'okta-1' }));
  const body = b64(JSON.stringify({ iss: 'https://idp.example.com', sub: 'x' }));
  const cases: [string, () => string, string][] = [
    ['an empty string', () => '', 'the token is not a JWT: it has 1 part(s) separated by dots, a JWT has 3'],
    ['an opaque token', () => 'gho_16C7e42F292c6912E7710c838347Ae178B4a', 'the token is not a JWT: it has 1 part(s) separated by dots, a JWT has 3'],
    ['two parts', () => `${header}.${body}`, 'the token is not a JWT: it has 2 part(s) separated by dots, a JWT has 3'],
    ['four parts', () => `${header}.${body}.c2ln.extra`, 'the token is not a JWT: it has 4 part(s) separated by dots, a JWT has 3'],
    ['a JWE', () => `${header}.a.b.c.d`, 'the token is encrypted (JWE); only signed JWTs are accepted'],
    ['a non-base64url header', () => `${header}!.${body}.c2ln`, 'the token header is not base64url'],
    ['an empty header', () => `.${body}.c2ln`, 'the token header is not base64url'],
    ['a non-base64url payload', () => `${header}.${body}+/=.c2ln`, 'the token payload is not base64url'],
    ['a non-base64url signature', () => `${header}.${body}.c2ln==`, 'the token signature is not base64url'],
    ['a header that is not JSON', () => `${b64('{"alg":"RS256"')}.${body}.c2ln`, 'the token header is not JSON'],
    ['a header that is a JSON array', () => `${b64('["RS256"]')}.${body}.c2ln`, 'the token header is not a JSON object'],
    ['a payload that is JSON null', () => `${header}.${b64('null')}.c2ln`, 'the token payload is not a JSON object'],
    ['a payload that is binary', () => `${header}.${Buffer.from([0xff, 0xfe, 0x00, 0x81]).toString('base64url')}.c2ln`, 'the token payload is not JSON'],
    ['a payload without iss', () => `${header}.${b64('{"sub":"x"}')}.c2ln`, 'the token has no "iss" claim (a string)'],
    ['a header without alg', () => `${b64('{"kid":"okta-1"}')}.${b64(JSON.stringify({ iss: okta }))}.c2ln`, 'the token header has no "alg"'],
    ['a huge token', () => `${header}.${'A'.repeat(17 * 1024)}.c2ln`, `the bearer token is ${header.length + 17 * 1024 + 6} characters long; at most 16384 are accepted`],
  ];

  it.each(cases)('refuses %s as ERR_IDENTITY_INVALID without echoing it or calling the IdP', async (_name, make, expected) => {
    const t = make();
    const message = await rejection(verifier().verify(t, AUDIENCE), 'ERR_IDENTITY_INVALID');
    expect(message).toBe(expected);
    if (t.length > 8) expect(message).not.toContain(t);
    expect(idp.hits.size).toBe(0);
  });

  it('refuses a well-formed token whose signature is not valid base64url content for the key', async () => {
    const [h, p] = (await token()).split('.');
    const message = await rejection(verifier().verify(`${h ?? ''}.${p ?? ''}.AAAA`, AUDIENCE), 'ERR_IDENTITY_INVALID');
    expect(message).toBe('the token\'s signature does not verify with the key of issuer "okta" it names (kid "okta-1", alg "RS256")');
  });
});

describe('TokenVerifier: when the IdP cannot be reached', () => {
  it('answers ERR_IDP_UNAVAILABLE while the JWKS endpoint fails, fails fast for a second, then recovers', async () => {
    idp.okta.jwks = 503;
    const v = verifier();
    const t = await token();
    const first = await rejection(v.verify(t, AUDIENCE), 'ERR_IDP_UNAVAILABLE');
    expect(first).toBe(`cannot fetch the signing keys of issuer "okta": JWKS at ${okta}/keys answered HTTP 503`);
    const second = await rejection(v.verify(t, AUDIENCE), 'ERR_IDP_UNAVAILABLE');
    expect(second).toBe(`cannot fetch the signing keys of issuer "okta": JWKS at ${okta}/keys answered HTTP 503 (next attempt in 1000 ms)`);
    expect(hits('/okta/keys')).toBe(1);

    idp.okta.jwks = 200;
    clock += 1_000;
    expect((await v.verify(t, AUDIENCE)).user.subject).toBe('alice');
    expect(hits('/okta/keys')).toBe(2);
  });

  it('retries a failed discovery later instead of remembering the failure', async () => {
    idp.okta.metadata = 500;
    const v = verifier();
    const t = await token();
    const message = await rejection(v.verify(t, AUDIENCE), 'ERR_IDP_UNAVAILABLE');
    expect(message).toBe(
      `cannot fetch the signing keys of issuer "okta": discovery failed: metadata at ${okta}/.well-known/openid-configuration answered HTTP 500; ` +
        `metadata at ${base}/.well-known/oauth-authorization-server/okta answered HTTP 404`,
    );
    idp.okta.metadata = 200;
    clock += 5_000;
    expect((await v.verify(t, AUDIENCE)).user.subject).toBe('alice');
    expect(hits('/okta/.well-known/openid-configuration')).toBe(2);
  });

  it('gives up on an IdP that does not answer within fetchTimeoutMs', async () => {
    idp.okta.jwks = 'hang';
    const v = verifier(issuers(), { fetchTimeoutMs: 200 });
    const started = performance.now();
    const message = await rejection(v.verify(await token(), AUDIENCE), 'ERR_IDP_UNAVAILABLE');
    expect(message).toBe(`cannot fetch the signing keys of issuer "okta": JWKS at ${okta}/keys timed out after 200 ms`);
    expect(performance.now() - started).toBeLessThan(1_500);
  });

  it('treats a JWKS that is not JSON, or not a key set, as the IdP being unavailable', async () => {
    idp.okta.jwks = 'not-json';
    const message = await rejection(verifier().verify(await token(), AUDIENCE), 'ERR_IDP_UNAVAILABLE');
    expect(message).toBe(`cannot fetch the signing keys of issuer "okta": JWKS at ${okta}/keys is not JSON`);

    idp.okta.jwks = 200;
    idp.okta.keys = 'nope' as unknown as JWK[];
    const shape = await rejection(verifier().verify(await token(), AUDIENCE), 'ERR_IDP_UNAVAILABLE');
    expect(shape).toBe(`cannot fetch the signing keys of issuer "okta": JWKS at ${okta}/keys is not a JSON Web Key Set (no "keys" array of objects)`);
  });

  it('names the network error when the JWKS host refuses connections', async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const jwksUri = `http://127.0.0.1:${port}/keys`;
    const v = verifier([{ name: 'okta', issuer: okta, jwksUri, algorithms: ['RS256'], claims: DEFAULT_CLAIMS }]);
    const message = await rejection(v.verify(await token(), AUDIENCE), 'ERR_IDP_UNAVAILABLE');
    expect(message).toBe(`cannot fetch the signing keys of issuer "okta": JWKS at ${jwksUri} could not be fetched: fetch failed (ECONNREFUSED)`);
  });

  it('refuses metadata that names another issuer', async () => {
    const v = verifier([{ name: 'impostor', issuer: mismatched, algorithms: ['RS256'], claims: DEFAULT_CLAIMS }]);
    const message = await rejection(v.verify(await token({ iss: mismatched }), AUDIENCE), 'ERR_IDP_UNAVAILABLE');
    expect(message).toBe(
      `cannot fetch the signing keys of issuer "impostor": discovery failed: metadata at ${mismatched}/.well-known/openid-configuration names issuer "${okta}", expected "${mismatched}"; ` +
        `metadata at ${base}/.well-known/oauth-authorization-server/mismatch answered HTTP 404`,
    );
    expect(hits('/okta/keys')).toBe(0);
  });

  it('keeps verifying with keys up to an hour old while their refresh fails, then fails closed', async () => {
    const v = verifier();
    await v.verify(await token({ jti: 'a' }), AUDIENCE);
    idp.okta.jwks = 503;
    clock += 11 * 60_000;
    expect((await v.verify(await token({ jti: 'b', exp: T0S + 7200 }), AUDIENCE)).user.tokenId).toBe('b');
    clock += 50 * 60_000;
    await rejection(v.verify(await token({ jti: 'c', exp: T0S + 7200 }), AUDIENCE), 'ERR_IDP_UNAVAILABLE');
  });
});

describe('TokenVerifier: verified-token cache', () => {
  it('answers a repeated token without checking its signature again', async () => {
    const v = verifier();
    const t = await token();
    const checks = countSignatureChecks();
    const first = await v.verify(t, AUDIENCE);
    clock += 30 * 60_000; // keys are now stale: a re-verification would also hit the JWKS
    const second = await v.verify(t, AUDIENCE);
    expect(second).toBe(first);
    expect(checks.count).toBe(1);
    expect(hits('/okta/keys')).toBe(1);
  });

  it('keys entries by spiffe id too, since the agent is part of the answer', async () => {
    const v = verifier();
    const t = await token({ azp: 'cli' });
    expect((await v.verify(t, AUDIENCE)).agent.id).toBe('cli');
    expect((await v.verify(t, AUDIENCE, 'spiffe://corp/a')).agent.id).toBe('spiffe://corp/a');
  });

  it('does not use an entry at or after the token exp', async () => {
    const v = verifier();
    const t = await token({ exp: T0S + 60 });
    const checks = countSignatureChecks();
    await v.verify(t, AUDIENCE);
    clock = (T0S + 60) * 1000; // expired, but within the skew: verified again, not served from the cache
    await v.verify(t, AUDIENCE);
    expect(checks.count).toBe(2);
    clock = (T0S + 60 + SKEW + 1) * 1000;
    await rejection(v.verify(t, AUDIENCE), 'ERR_IDENTITY_EXPIRED');
  });

  it('forgets the verifications a filter selects, or all of them', async () => {
    const v = verifier();
    const alice = await token({ sub: 'alice' });
    const bob = await token({ sub: 'bob' });
    const checks = countSignatureChecks();
    await v.verify(alice, AUDIENCE);
    await v.verify(bob, AUDIENCE);
    expect(checks.count).toBe(2);

    v.forget((c) => c.user.subject === 'alice');
    await v.verify(alice, AUDIENCE);
    await v.verify(bob, AUDIENCE);
    expect(checks.count).toBe(3);

    v.forget();
    await v.verify(alice, AUDIENCE);
    await v.verify(bob, AUDIENCE);
    expect(checks.count).toBe(5);
  });

  it('does not cache a verification that was in flight when forget() was called', async () => {
    const v = verifier();
    const t = await token();
    const checks = countSignatureChecks();
    const inFlight = v.verify(t, AUDIENCE); // first use: waits on discovery and the JWKS
    v.forget((c) => c.user.subject === 'alice');
    await inFlight;
    await v.verify(t, AUDIENCE);
    expect(checks.count).toBe(2);
  });

  it('stays within cacheMaxEntries', async () => {
    const v = verifier(issuers(), { cacheMaxEntries: 2 });
    const tokens = await Promise.all(['a', 'b', 'c'].map((jti) => token({ jti })));
    const checks = countSignatureChecks();
    for (const t of tokens) await v.verify(t, AUDIENCE);
    await v.verify(tokens[0] ?? '', AUDIENCE); // evicted by the third
    expect(checks.count).toBe(4);
  });
});

describe('TokenVerifier: configuration', () => {
  const spec = (algorithms: string[]): IssuerSpec[] => [{ name: 'okta', issuer: 'https://idp.example.com', algorithms, claims: DEFAULT_CLAIMS }];

  it('refuses HS* algorithms and says why', () => {
    expect(() => verifier(spec(['RS256', 'HS256']))).toThrow(
      'issuer "okta": algorithm HS256 is refused: HMAC needs a shared secret, and verifying with keys from a public JWKS would let anyone sign tokens',
    );
  });

  it('refuses none, unknown algorithms and an empty list', () => {
    expect(() => verifier(spec(['none']))).toThrow('issuer "okta": algorithm "none" would accept unsigned tokens and is refused');
    expect(() => verifier(spec(['RS257']))).toThrow('issuer "okta": algorithm "RS257" is not supported');
    expect(() => verifier(spec([]))).toThrow('issuer "okta": algorithms is empty');
  });

  it('refuses two issuers with the same iss', () => {
    const twice = [...spec(['RS256']), { name: 'okta-again', issuer: 'https://idp.example.com', algorithms: ['RS256'], claims: DEFAULT_CLAIMS }];
    expect(() => verifier(twice)).toThrow('issuers "okta" and "okta-again" have the same issuer https://idp.example.com');
  });

  it('validates its options', () => {
    expect(() => verifier(spec(['RS256']), { clockSkewSeconds: -1 })).toThrow('clockSkewSeconds must be a non-negative number of seconds, got -1');
    expect(() => verifier(spec(['RS256']), { fetchTimeoutMs: 0 })).toThrow('fetchTimeoutMs must be a positive integer, got 0');
    expect(() => verifier(spec(['RS256']), { cacheMaxEntries: 1.5 })).toThrow('cacheMaxEntries must be a positive integer, got 1.5');
  });
});
