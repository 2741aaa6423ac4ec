// One issuer's signing keys: discovered from its metadata, fetched from its JWKS, cached, and refreshed
// when a token names a key we do not have. Every IdP round-trip goes through here, so this is where
// the gateway decides how hard it may lean on an IdP and how long it waits for one.
//
// Failures to reach the IdP are ours, not the client's: they surface as ERR_IDP_UNAVAILABLE (503, fail
// closed). Key *selection* failures (no key matches the token's kid/alg) are left to the caller as jose
// errors, so jose's codes are mapped to ours in one place (verifier.ts).

import { createLocalJWKSet, errors } from 'jose';
import type { CryptoKey, JSONWebKeySet, JWSHeaderParameters, LocalJWKSet } from 'jose';
import { GatewayError } from '../errors.ts';

/** Keys older than this are re-fetched before use (jose's own default), to pick up removed keys. */
export const KEYS_MAX_AGE_MS = 10 * 60_000;
/**
 * When a re-fetch of keys older than KEYS_MAX_AGE_MS fails, the old keys keep verifying for this long:
 * an IdP blip must not turn into an outage for every new token, yet a key the IdP withdrew stops being
 * trusted within the hour even if we cannot reach it.
 */
export const KEYS_STALE_IF_ERROR_MS = 60 * 60_000;
/**
 * After a successful fetch, an unknown `kid` may trigger another fetch only once this has passed, so a
 * flood of tokens with made-up kids costs the IdP at most one request per issuer per replica per 30 s.
 * IdPs publish new keys well before signing with them, so a legitimate rotation rarely waits on this.
 */
export const UNKNOWN_KID_COOLDOWN_MS = 30_000;
/**
 * After a failed fetch (discovery or JWKS), requests that need the IdP fail at once for this long instead
 * of each waiting out its own timeout; then the next one tries again. Failures are never cached longer.
 */
export const RETRY_AFTER_FAILURE_MS = 1_000;

export interface IssuerEndpoint {
  /** Configured name, for messages. */
  readonly name: string;
  /** Exact `iss`. */
  readonly issuer: string;
  /** Configured JWKS URL; discovered from the issuer's metadata when absent. */
  readonly jwksUri?: string | undefined;
}

export interface IssuerKeysOptions {
  /** Milliseconds since the epoch. */
  readonly now: () => number;
  /** Budget for all IdP round-trips of one refresh (discovery and JWKS together). */
  readonly fetchTimeoutMs: number;
}

/** Discovery documents to try, in order: OIDC Discovery, then RFC 8414 (path-inserted, §3.1). */
export function metadataUrls(issuer: string): string[] {
  const base = issuer.replace(/\/+$/, '');
  const url = new URL(issuer);
  const path = url.pathname.replace(/\/+$/, '');
  const urls = [`${base}/.well-known/openid-configuration`, `${url.origin}/.well-known/oauth-authorization-server${path}`];
  return [...new Set(urls)];
}

export class IssuerKeys {
  readonly #endpoint: IssuerEndpoint;
  readonly #now: () => number;
  readonly #fetchTimeoutMs: number;
  #jwksUri: string | undefined;
  #keys: LocalJWKSet | undefined;
  #fetchedAt = Number.NEGATIVE_INFINITY;
  #failedAt = Number.NEGATIVE_INFINITY;
  #lastFailure = '';
  #pending: Promise<void> | undefined;

  constructor(endpoint: IssuerEndpoint, options: IssuerKeysOptions) {
    this.#endpoint = endpoint;
    this.#jwksUri = endpoint.jwksUri;
    this.#now = options.now;
    this.#fetchTimeoutMs = options.fetchTimeoutMs;
  }

  /**
   * The key that should verify a token with this header (a jose key resolver). Throws ERR_IDP_UNAVAILABLE
   * when the keys cannot be fetched, and jose's JWKSNoMatchingKey / JWKSMultipleMatchingKeys when they
   * were fetched but none (or several) fit.
   */
  async key(header: JWSHeaderParameters): Promise<CryptoKey> {
    const age = this.#now() - this.#fetchedAt;
    if (this.#keys === undefined || age >= KEYS_MAX_AGE_MS) {
      try {
        await this.#refresh();
      } catch (err) {
        if (this.#keys === undefined || age >= KEYS_STALE_IF_ERROR_MS) throw err;
      }
    }
    const keys = this.#keys;
    if (keys === undefined) throw this.#unavailable();
    try {
      return await keys(header);
    } catch (err) {
      if (!(err instanceof errors.JWKSNoMatchingKey) || this.#now() - this.#fetchedAt < UNKNOWN_KID_COOLDOWN_MS) throw err;
    }
    // A kid we have not seen may be a key the IdP has just rotated in.
    await this.#refresh();
    return (this.#keys ?? keys)(header);
  }

  /** One fetch at a time per issuer; callers arriving meanwhile share its outcome. */
  #refresh(): Promise<void> {
    if (this.#pending !== undefined) return this.#pending;
    if (this.#now() - this.#failedAt < RETRY_AFTER_FAILURE_MS) return Promise.reject(this.#unavailable());
    const pending = this.#load()
      .then((keys) => {
        this.#keys = keys;
        this.#fetchedAt = this.#now();
        this.#failedAt = Number.NEGATIVE_INFINITY;
      })
      .catch((err: unknown) => {
        this.#failedAt = this.#now();
        this.#lastFailure = err instanceof FetchFailure ? err.message : String(err);
        throw this.#unavailable(err);
      })
      .finally(() => {
        this.#pending = undefined;
      });
    this.#pending = pending;
    return pending;
  }

  async #load(): Promise<LocalJWKSet> {
    // One deadline for the whole chain: a cold start may need two discovery documents and the JWKS,
    // and all of it must fit in what Envoy allows for the message.
    const signal = AbortSignal.timeout(this.#fetchTimeoutMs);
    const jwksUri = this.#jwksUri ?? (await this.#discover(signal));
    const body = await fetchJson(jwksUri, signal, this.#fetchTimeoutMs, 'JWKS');
    if (!isJwkSet(body)) throw new FetchFailure(`JWKS at ${jwksUri} is not a JSON Web Key Set (no "keys" array of objects)`);
    return createLocalJWKSet(body);
  }

  async #discover(signal: AbortSignal): Promise<string> {
    const jwksUri = await discoverEndpoint(this.#endpoint.issuer, 'jwks_uri', signal, this.#fetchTimeoutMs);
    this.#jwksUri = jwksUri;
    return jwksUri;
  }

  #unavailable(cause?: unknown): GatewayError {
    const retryInMs = Math.max(0, Math.ceil(this.#failedAt + RETRY_AFTER_FAILURE_MS - this.#now()));
    const detail = this.#lastFailure === '' ? 'no keys fetched yet' : this.#lastFailure;
    const suffix = cause === undefined ? ` (next attempt in ${retryInMs} ms)` : '';
    return new GatewayError(
      'ERR_IDP_UNAVAILABLE',
      `cannot fetch the signing keys of issuer "${this.#endpoint.name}": ${detail}${suffix}`,
      cause === undefined ? {} : { cause },
    );
  }
}

/**
 * An endpoint URL (`jwks_uri`, `token_endpoint`, …) from the issuer's metadata: OIDC Discovery, then
 * RFC 8414. Metadata naming another issuer is not used (OIDC Discovery §4.3, RFC 8414 §3.3). Throws a
 * FetchFailure listing what each document lacked.
 */
export async function discoverEndpoint(issuer: string, field: string, signal: AbortSignal, timeoutMs: number): Promise<string> {
  const problems: string[] = [];
  for (const url of metadataUrls(issuer)) {
    let doc: unknown;
    try {
      doc = await fetchJson(url, signal, timeoutMs, 'metadata');
    } catch (err) {
      if (!(err instanceof FetchFailure)) throw err;
      problems.push(err.message);
      continue;
    }
    const named = isObject(doc) ? doc.issuer : undefined;
    const endpoint = isObject(doc) ? doc[field] : undefined;
    if (named !== issuer) problems.push(`metadata at ${url} names issuer ${describe(named)}, expected ${JSON.stringify(issuer)}`);
    else if (typeof endpoint !== 'string' || !URL.canParse(endpoint)) problems.push(`metadata at ${url} has no valid "${field}"`);
    else return endpoint;
  }
  throw new FetchFailure(`discovery failed: ${problems.join('; ')}`);
}

/** A failed round-trip to an IdP; the message names the URL and what went wrong. */
export class FetchFailure extends Error {
  override readonly name = 'FetchFailure';
}

export async function fetchJson(url: string, signal: AbortSignal, timeoutMs: number, what: string): Promise<unknown> {
  let text: string;
  try {
    // Redirects are not followed: a JWKS is trusted for what it contains, so it must come from the
    // configured or discovered URL itself (jose's remote JWKS does the same).
    const response = await fetch(url, { signal, redirect: 'manual', headers: { accept: 'application/json' } });
    if (response.status !== 200) {
      await response.body?.cancel();
      throw new FetchFailure(`${what} at ${url} answered HTTP ${response.status}`);
    }
    text = await response.text();
  } catch (err) {
    if (err instanceof FetchFailure) throw err;
    if (signal.aborted) throw new FetchFailure(`${what} at ${url} timed out after ${timeoutMs} ms`, { cause: err });
    throw new FetchFailure(`${what} at ${url} could not be fetched: ${networkReason(err)}`, { cause: err });
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new FetchFailure(`${what} at ${url} is not JSON`, { cause: err });
  }
}

/** fetch() says only "fetch failed"; the reason (ECONNREFUSED, ENOTFOUND, …) is in its cause. */
export function networkReason(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const cause: unknown = err.cause;
  if (cause instanceof Error) {
    const code = (cause as { code?: unknown }).code;
    return typeof code === 'string' ? `${err.message} (${code})` : `${err.message} (${cause.message})`;
  }
  return err.message;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isJwkSet(value: unknown): value is JSONWebKeySet {
  return isObject(value) && Array.isArray(value.keys) && value.keys.every(isObject);
}

function describe(value: unknown): string {
  return value === undefined ? 'none' : JSON.stringify(value).slice(0, 200);
}
