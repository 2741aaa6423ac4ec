// Bearer token → Caller. The token's `iss` picks one of the configured issuers; jose then verifies the
// signature against that issuer's keys, the issuer, the audience (this MCP server's resource URL, per
// the MCP authorization spec), exp/nbf with the configured skew and the algorithm allow-list. Verified
// tokens are cached until their `exp`, so a steady client costs one hash per request, not a signature.
//
// Every failure is a GatewayError: the token's fault → ERR_IDENTITY_* (401), the IdP's → ERR_IDP_UNAVAILABLE
// (503). Messages name the claim, issuer or values that failed and never contain the token.

import { createHash } from 'node:crypto';
import { errors, jwtVerify } from 'jose';
import type { JWTPayload } from 'jose';
import { LRUCache } from 'lru-cache';
import { GatewayError, toGatewayError } from '../errors.ts';
import { IssuerKeys } from './issuers.ts';
import type { Agent, Caller, Principal } from './principal.ts';

/** Names of the claims that carry each part of a principal. */
export interface ClaimMapping {
  subject: string;
  email: string;
  groups: string;
  scopes: string;
  /** Claims naming the OAuth client (agent); the first present wins, e.g. ['azp', 'client_id']. */
  agent: readonly string[];
}

export interface IssuerSpec {
  /** Configured name (Principal.issuerName). */
  name: string;
  /** Exact `iss`. */
  issuer: string;
  /** Else discovered from `<issuer>/.well-known/openid-configuration`, then RFC 8414 metadata. */
  jwksUri?: string;
  /** Accepted signature algorithms. Never `none`; symmetric HS* algorithms are refused at construction. */
  algorithms: readonly string[];
  claims: ClaimMapping;
}

export interface TokenVerifierOptions {
  /** Tolerance for exp and nbf. */
  clockSkewSeconds: number;
  /** Milliseconds since the epoch; injected by tests. */
  now?: () => number;
  /** Budget for the IdP round-trips one verification may wait on. Default 1500. */
  fetchTimeoutMs?: number;
  /** Verified tokens kept. Default 10000. */
  cacheMaxEntries?: number;
  /** Told how each verification went (for metrics). */
  onResult?: (result: 'cache_hit' | 'verified' | 'failed') => void;
}

/**
 * `scope` is read as a space-separated string or an array; when a token has no `scope` claim its `scp`
 * is read instead (an array at Okta, a space-separated string at Entra ID).
 */
export const DEFAULT_CLAIMS: ClaimMapping = Object.freeze({
  subject: 'sub',
  email: 'email',
  groups: 'groups',
  scopes: 'scope',
  agent: Object.freeze(['azp', 'client_id']),
});

/**
 * Envoy's ext_proc message_timeout is 2 s by default; past it Envoy answers on its own (or, with
 * failure_mode_allow, lets the request through unauthenticated). 1.5 s leaves room for the rest of the
 * phase (revocation lookup, policy) so a slow IdP still gets our 503 with a JSON-RPC body.
 */
export const DEFAULT_FETCH_TIMEOUT_MS = 1_500;
export const DEFAULT_CACHE_MAX_ENTRIES = 10_000;
/** Larger bearer tokens are refused before any parsing or hashing. */
export const MAX_TOKEN_LENGTH = 16 * 1024;

/** Asymmetric JWS algorithms jose verifies. HS* is absent on purpose: see SYMMETRIC. */
const ASYMMETRIC_ALGORITHMS = new Set([
  'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519',
  'ML-DSA-44', 'ML-DSA-65', 'ML-DSA-87',
]);
const SYMMETRIC = /^HS\d+$/;

/**
 * Header `typ` values accepted: none, the generic JWT, or RFC 9068's access-token type. Other JWTs an IdP
 * signs with the same keys (DPoP proofs, logout tokens, security events, ID-JAG assertions) are not
 * access tokens and are refused even if their audience happens to match.
 */
const ACCEPTED_TYPES = new Set(['jwt', 'at+jwt']);

interface Issuer {
  readonly spec: IssuerSpec;
  readonly algorithms: ReadonlySet<string>;
  /** For jose, which wants a mutable array. */
  readonly algorithmList: string[];
  readonly keys: IssuerKeys;
}

interface CacheEntry {
  readonly caller: Caller;
  /** `exp` in milliseconds: the entry is never used at or after it. */
  readonly expiresAtMs: number;
}

/** What the unverified token says, read only to choose the issuer and to check the header early. */
interface Unverified {
  readonly header: Record<string, unknown>;
  readonly payload: Record<string, unknown>;
}

export class TokenVerifier {
  readonly #issuers = new Map<string, Issuer>();
  readonly #skewSeconds: number;
  readonly #now: () => number;
  readonly #onResult: TokenVerifierOptions['onResult'];
  readonly #cache: LRUCache<string, CacheEntry>;
  /** Bumped by forget(), so a verification in flight during a revocation does not re-cache its result. */
  #generation = 0;

  constructor(issuers: readonly IssuerSpec[], options: TokenVerifierOptions) {
    const { clockSkewSeconds, now = Date.now, fetchTimeoutMs = DEFAULT_FETCH_TIMEOUT_MS, cacheMaxEntries = DEFAULT_CACHE_MAX_ENTRIES } = options;
    if (!Number.isFinite(clockSkewSeconds) || clockSkewSeconds < 0) {
      throw new RangeError(`clockSkewSeconds must be a non-negative number of seconds, got ${String(clockSkewSeconds)}`);
    }
    if (!Number.isInteger(fetchTimeoutMs) || fetchTimeoutMs <= 0) {
      throw new RangeError(`fetchTimeoutMs must be a positive integer, got ${String(fetchTimeoutMs)}`);
    }
    if (!Number.isInteger(cacheMaxEntries) || cacheMaxEntries <= 0) {
      throw new RangeError(`cacheMaxEntries must be a positive integer, got ${String(cacheMaxEntries)}`);
    }
    if (issuers.length === 0) throw new RangeError('at least one issuer is required');
    this.#skewSeconds = clockSkewSeconds;
    this.#now = now;
    this.#onResult = options.onResult;
    this.#cache = new LRUCache({ max: cacheMaxEntries });
    for (const spec of issuers) {
      validateIssuer(spec);
      const clash = this.#issuers.get(spec.issuer);
      if (clash !== undefined) {
        throw new RangeError(`issuers "${clash.spec.name}" and "${spec.name}" have the same issuer ${spec.issuer}; a token could not say which it is`);
      }
      const keys = new IssuerKeys({ name: spec.name, issuer: spec.issuer, jwksUri: spec.jwksUri }, { now, fetchTimeoutMs });
      this.#issuers.set(spec.issuer, { spec, algorithms: new Set(spec.algorithms), algorithmList: [...spec.algorithms], keys });
    }
  }

  /** Verifies a bearer token for a resource (audience) and maps it to a Caller. spiffeId comes from Envoy (mTLS), not the token. */
  async verify(token: string, audience: string, spiffeId?: string): Promise<Caller> {
    try {
      return await this.#verify(token, audience, spiffeId);
    } catch (err) {
      this.#onResult?.('failed');
      throw err;
    }
  }

  async #verify(token: string, audience: string, spiffeId?: string): Promise<Caller> {
    if (token.length > MAX_TOKEN_LENGTH) {
      throw invalid(`the bearer token is ${token.length} characters long; at most ${MAX_TOKEN_LENGTH} are accepted`);
    }
    // The key holds a digest, never the token: a heap dump or a debug print of the cache leaks nothing usable.
    const cacheKey = JSON.stringify([createHash('sha256').update(token).digest('base64url'), audience, spiffeId ?? null]);
    const hit = this.#cache.get(cacheKey);
    if (hit !== undefined) {
      if (this.#now() < hit.expiresAtMs) {
        this.#onResult?.('cache_hit');
        return hit.caller;
      }
      this.#cache.delete(cacheKey);
    }

    const generation = this.#generation;
    const unverified = parseUnverified(token);
    const issuer = this.#chooseIssuer(unverified);
    const now = this.#now();
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, (header) => issuer.keys.key(header), {
        issuer: issuer.spec.issuer,
        audience,
        algorithms: issuer.algorithmList,
        clockTolerance: this.#skewSeconds,
        currentDate: new Date(now),
        // jose accepts a token without exp; we do not (it would be valid, and cached, forever).
        requiredClaims: ['exp'],
      }));
    } catch (err) {
      throw this.#fromJose(err, { issuer: issuer.spec, audience, header: unverified.header, nowMs: now });
    }

    const caller = toCaller(issuer.spec, payload, spiffeId);
    const expiresAtMs = caller.user.expiresAt * 1000;
    if (this.#now() < expiresAtMs && generation === this.#generation) this.#cache.set(cacheKey, { caller, expiresAtMs });
    this.#onResult?.('verified');
    return caller;
  }

  /** Drops cached verifications of a subject or of everything (revocation calls this). */
  forget(filter?: (c: Caller) => boolean): void {
    this.#generation++;
    if (filter === undefined) {
      this.#cache.clear();
      return;
    }
    const doomed: string[] = [];
    for (const [key, entry] of this.#cache.entries()) if (filter(entry.caller)) doomed.push(key);
    for (const key of doomed) this.#cache.delete(key);
  }

  #chooseIssuer({ header, payload }: Unverified): Issuer {
    const iss = payload.iss;
    if (typeof iss !== 'string') throw invalid('the token has no "iss" claim (a string)');
    const issuer = this.#issuers.get(iss);
    if (issuer === undefined) {
      throw new GatewayError('ERR_IDENTITY_ISSUER_UNKNOWN', `the token's issuer ${quote(iss)} is not one of the ${this.#issuers.size} configured issuers`);
    }
    // Checked before any key is fetched: a token that cannot pass must not cost the IdP a request.
    const alg = header.alg;
    if (alg === undefined) throw invalid('the token header has no "alg"');
    if (alg === 'none') throw invalid(`the token is unsigned (alg "none"); issuer "${issuer.spec.name}" accepts ${list(issuer.spec.algorithms)}`);
    if (typeof alg !== 'string' || !issuer.algorithms.has(alg)) {
      throw invalid(`the token's algorithm ${quote(alg)} is not allowed for issuer "${issuer.spec.name}" (allowed: ${list(issuer.spec.algorithms)})`);
    }
    const typ = header.typ;
    if (typ !== undefined && (typeof typ !== 'string' || !ACCEPTED_TYPES.has(typ.toLowerCase().replace(/^application\//, '')))) {
      throw invalid(`the token's type (typ) ${quote(typ)} is not an access token (accepted: JWT, at+jwt, or none)`);
    }
    return issuer;
  }

  /** The one place jose's errors become ours. */
  #fromJose(err: unknown, ctx: { issuer: IssuerSpec; audience: string; header: Record<string, unknown>; nowMs: number }): GatewayError {
    if (err instanceof GatewayError) return err;
    const from = `issuer "${ctx.issuer.name}"`;
    const key = `kid ${quote(ctx.header.kid)}, alg ${quote(ctx.header.alg)}`;
    if (err instanceof errors.JWTExpired) {
      const exp = err.payload.exp;
      return new GatewayError(
        'ERR_IDENTITY_EXPIRED',
        `the token expired at ${isoTime(exp)}, ${ageSeconds(ctx.nowMs, exp)} s ago, beyond the ${this.#skewSeconds} s clock skew allowed`,
      );
    }
    if (err instanceof errors.JWTClaimValidationFailed) {
      const { claim, reason, payload } = err;
      if (claim === 'aud' && reason === 'missing') {
        return new GatewayError('ERR_IDENTITY_AUDIENCE', `the token has no audience ("aud" claim), expected ${quote(ctx.audience)} (this MCP server)`);
      }
      if (reason === 'missing') return invalid(`the token has no "${claim}" claim, which is required`);
      if (claim === 'aud' && reason === 'check_failed') {
        return new GatewayError('ERR_IDENTITY_AUDIENCE', `the token's audience is ${quote(payload.aud)}, expected ${quote(ctx.audience)} (this MCP server)`);
      }
      if (claim === 'nbf' && reason === 'check_failed') {
        return new GatewayError(
          'ERR_IDENTITY_EXPIRED',
          `the token is not valid before ${isoTime(payload.nbf)}, ${-ageSeconds(ctx.nowMs, payload.nbf)} s from now, beyond the ${this.#skewSeconds} s clock skew allowed`,
        );
      }
      return invalid(`the token's "${claim}" claim is invalid (${err.message})`);
    }
    if (err instanceof errors.JWSSignatureVerificationFailed) {
      return invalid(`the token's signature does not verify with the key of ${from} it names (${key})`);
    }
    if (err instanceof errors.JWKSNoMatchingKey) {
      return invalid(`no signing key of ${from} matches the token (${key}) in the key set it publishes`);
    }
    if (err instanceof errors.JWKSMultipleMatchingKeys) {
      return invalid(`the token names no key id and ${from} has several ${quote(ctx.header.alg)} keys`);
    }
    // JWSInvalid, JWTInvalid, JOSENotSupported, JOSEAlgNotAllowed, JWKInvalid: a malformed token (or key).
    if (err instanceof errors.JOSEError) return invalid(`the token is not a valid JWT: ${err.message}`);
    return toGatewayError(err);
  }
}

function validateIssuer(spec: IssuerSpec): void {
  const at = `issuer "${spec.name}"`;
  if (spec.name === '') throw new RangeError('an issuer has an empty name');
  if (!URL.canParse(spec.issuer)) throw new RangeError(`${at}: issuer ${quote(spec.issuer)} is not a URL`);
  if (spec.jwksUri !== undefined && !URL.canParse(spec.jwksUri)) throw new RangeError(`${at}: jwksUri ${quote(spec.jwksUri)} is not a URL`);
  if (spec.algorithms.length === 0) throw new RangeError(`${at}: algorithms is empty; list the algorithms its tokens are signed with`);
  for (const alg of spec.algorithms) {
    if (alg === 'none') throw new RangeError(`${at}: algorithm "none" would accept unsigned tokens and is refused`);
    if (SYMMETRIC.test(alg)) {
      throw new RangeError(
        `${at}: algorithm ${alg} is refused: HMAC needs a shared secret, and verifying with keys from a public JWKS would let anyone sign tokens`,
      );
    }
    if (!ASYMMETRIC_ALGORITHMS.has(alg)) throw new RangeError(`${at}: algorithm ${quote(alg)} is not supported (supported: ${list([...ASYMMETRIC_ALGORITHMS])})`);
  }
  const { claims } = spec;
  for (const field of ['subject', 'email', 'groups', 'scopes'] as const) {
    if (claims[field] === '') throw new RangeError(`${at}: claims.${field} is empty`);
  }
  if (claims.agent.some((c) => c === '')) throw new RangeError(`${at}: claims.agent names an empty claim`);
}

/** Splits a compact JWS and decodes its header and payload; anything else is ERR_IDENTITY_INVALID. */
function parseUnverified(token: string): Unverified {
  const parts = token.split('.');
  if (parts.length === 5) throw invalid('the token is encrypted (JWE); only signed JWTs are accepted');
  if (parts.length !== 3) throw invalid(`the token is not a JWT: it has ${parts.length} part(s) separated by dots, a JWT has 3`);
  const [header, payload, signature] = parts as [string, string, string];
  if (!BASE64URL.test(header) || header === '') throw invalid('the token header is not base64url');
  if (!BASE64URL.test(payload) || payload === '') throw invalid('the token payload is not base64url');
  if (!BASE64URL.test(signature)) throw invalid('the token signature is not base64url');
  return { header: decodeJson(header, 'header'), payload: decodeJson(payload, 'payload') };
}

const BASE64URL = /^[A-Za-z0-9_-]*$/;

function decodeJson(part: string, what: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
  } catch {
    throw invalid(`the token ${what} is not JSON`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw invalid(`the token ${what} is not a JSON object`);
  return value as Record<string, unknown>;
}

function toCaller(spec: IssuerSpec, payload: JWTPayload, spiffeId: string | undefined): Caller {
  const m = spec.claims;
  const subject = payload[m.subject];
  if (typeof subject !== 'string' || subject === '') {
    throw invalid(`the token has no "${m.subject}" claim (the subject, a non-empty string) for issuer "${spec.name}"`);
  }
  const exp = payload.exp;
  if (typeof exp !== 'number' || !Number.isFinite(exp)) throw invalid('the token\'s "exp" claim is not a number');
  const email = payload[m.email];
  // `scp` stands in for the standard `scope` only; a deliberately mapped claim gets no fallback.
  const scopes = payload[m.scopes] ?? (m.scopes === 'scope' ? payload.scp : undefined);
  const clientId = m.agent.map((name) => payload[name]).find((v): v is string => typeof v === 'string' && v !== '');
  const user: Principal = Object.freeze({
    issuerName: spec.name,
    issuer: spec.issuer,
    subject,
    email: typeof email === 'string' ? email : undefined,
    groups: Object.freeze(stringList(payload[m.groups], /[\s,]+/)),
    scopes: Object.freeze(stringList(scopes, /\s+/)),
    tokenId: typeof payload.jti === 'string' ? payload.jti : undefined,
    issuedAt: typeof payload.iat === 'number' ? payload.iat : undefined,
    expiresAt: exp,
    claims: Object.freeze(payload),
  });
  const agent: Agent = Object.freeze({ clientId, spiffeId, id: spiffeId ?? clientId ?? '' });
  return Object.freeze({ user, agent });
}

/** An array of strings, or a string split on `separator`; anything else is empty. */
function stringList(value: unknown, separator: RegExp): string[] {
  const items = typeof value === 'string' ? value.split(separator) : Array.isArray(value) ? value : [];
  return [...new Set(items.filter((v): v is string => typeof v === 'string' && v !== ''))];
}

function invalid(message: string): GatewayError {
  return new GatewayError('ERR_IDENTITY_INVALID', message);
}

/** A value from the token, quoted and cut short: messages go to logs and clients. */
function quote(value: unknown): string {
  if (value === undefined) return 'none';
  const text = JSON.stringify(value);
  return text.length > 120 ? `${text.slice(0, 117)}...` : text;
}

function list(values: readonly string[]): string {
  return values.join(', ');
}

function isoTime(seconds: unknown): string {
  return typeof seconds === 'number' && Number.isFinite(seconds) ? new Date(seconds * 1000).toISOString() : quote(seconds);
}

function ageSeconds(nowMs: number, seconds: unknown): number {
  return typeof seconds === 'number' ? Math.floor(nowMs / 1000) - seconds : Number.NaN;
}
