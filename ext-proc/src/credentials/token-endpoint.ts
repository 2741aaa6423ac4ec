// The gateway as an OAuth client of the organisation's IdP: one token endpoint, found through the
// issuer's metadata unless configured, and the gateway's own client authentication (client_secret_basic,
// client_secret_post or private_key_jwt, RFC 7523). Used for RFC 8693 token exchange and for the
// client_credentials grant. Every failure becomes a CredentialError with a reason for metrics:
//
//   unreachable, timeout, idp_error (5xx, unreadable answer), client_rejected (invalid_client: the
//   gateway's own setup) → ERR_CREDENTIAL_UNAVAILABLE (503)
//   any other OAuth error (invalid_grant, unauthorized_client, invalid_target, …) → ERR_CREDENTIAL_REFUSED (403)

import { randomUUID } from 'node:crypto';
import { decodeJwt, importPKCS8, SignJWT } from 'jose';
import { GatewayError, type ErrorCode } from '../errors.ts';
import { discoverEndpoint, networkReason } from '../identity/issuers.ts';
import type { Secret } from './secret.ts';

export type ClientAuthMethod = 'client_secret_basic' | 'client_secret_post' | 'private_key_jwt';

export interface OAuthClient {
  readonly id: string;
  readonly authMethod: ClientAuthMethod;
  /** For the client_secret_* methods. */
  readonly secret: Secret | undefined;
  /** PKCS#8 PEM private key, for private_key_jwt. */
  readonly privateKey: Secret | undefined;
  readonly keyId: string | undefined;
  readonly algorithm: string;
}

export interface TokenEndpointOptions {
  /** Issuer URL whose metadata names the token endpoint; unused when `url` is given. */
  readonly issuer: string | undefined;
  readonly url: string | undefined;
  readonly client: OAuthClient;
  /** Budget of one token request, discovery included. */
  readonly timeoutMs: number;
  /** Lifetime assumed when the answer gives neither expires_in nor a JWT exp. */
  readonly defaultLifetimeSeconds: number;
}

/** A token the IdP issued, with its expiry on our clock (from expires_in, so the IdP's clock does not matter). */
export interface IssuedToken {
  readonly accessToken: string;
  readonly expiresAtMs: number;
}

export type FailureReason = 'unreachable' | 'timeout' | 'idp_error' | 'client_rejected' | 'secret_missing' | 'refused';

export class CredentialError extends GatewayError {
  readonly reason: FailureReason;
  /** The OAuth `error` code, when the IdP sent one. */
  readonly oauthError: string | undefined;

  constructor(code: ErrorCode, reason: FailureReason, message: string, options: { cause?: unknown; oauthError?: string } = {}) {
    super(code, message, { cause: options.cause });
    this.reason = reason;
    this.oauthError = options.oauthError;
  }
}

/** How long a failed discovery is remembered before the next request tries again. */
const DISCOVERY_RETRY_MS = 1_000;
/** How long an unreachable token endpoint is not tried again (requests fail at once meanwhile). */
const OUTAGE_MEMORY_MS = 1_000;
type SigningKey = Awaited<ReturnType<typeof importPKCS8>>;

const CLIENT_ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

export class TokenEndpoint {
  readonly #options: TokenEndpointOptions;
  #url: string | undefined;
  #discovering: Promise<string> | undefined;
  #discoveryFailedAt = Number.NEGATIVE_INFINITY;
  #discoveryFailure: CredentialError | undefined;
  #signingKey: { readonly pem: string; readonly key: SigningKey } | undefined;
  #outage: { readonly at: number; readonly error: CredentialError } | undefined;

  constructor(options: TokenEndpointOptions) {
    this.#options = options;
    this.#url = options.url;
  }

  /**
   * POSTs a grant; resolves with the issued token or throws a CredentialError. After the endpoint could
   * not be reached (refused, timed out), requests fail at once for OUTAGE_MEMORY_MS: in an outage every
   * miss would otherwise hold its request for up to timeoutMs.
   */
  async request(form: Readonly<Record<string, string>>): Promise<IssuedToken> {
    const outage = this.#outage;
    if (outage !== undefined && Date.now() - outage.at < OUTAGE_MEMORY_MS) {
      throw new CredentialError('ERR_CREDENTIAL_UNAVAILABLE', outage.error.reason, `${outage.error.message} (${Date.now() - outage.at} ms ago; next attempt within ${OUTAGE_MEMORY_MS} ms)`);
    }
    try {
      const issued = await this.#request(form);
      this.#outage = undefined;
      return issued;
    } catch (err) {
      if (err instanceof CredentialError && (err.reason === 'unreachable' || err.reason === 'timeout')) this.#outage = { at: Date.now(), error: err };
      throw err;
    }
  }

  async #request(form: Readonly<Record<string, string>>): Promise<IssuedToken> {
    const signal = AbortSignal.timeout(this.#options.timeoutMs);
    const url = this.#url ?? (await this.#discover(signal));
    const body = new URLSearchParams(form);
    const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' };
    await this.#authenticate(url, body, headers);
    let response: Response;
    let text: string;
    try {
      response = await fetch(url, { method: 'POST', body, headers, signal, redirect: 'manual' });
      text = await response.text();
    } catch (err) {
      if (signal.aborted) {
        throw new CredentialError('ERR_CREDENTIAL_UNAVAILABLE', 'timeout', `the token endpoint did not answer within ${this.#options.timeoutMs} ms`, { cause: err });
      }
      throw new CredentialError('ERR_CREDENTIAL_UNAVAILABLE', 'unreachable', `the token endpoint cannot be reached: ${networkReason(err)}`, { cause: err });
    }
    const answer = parseObject(text);
    if (response.status === 200 && answer !== undefined) return this.#issued(answer);
    const error = typeof answer?.['error'] === 'string' ? answer['error'] : undefined;
    const description = typeof answer?.['error_description'] === 'string' ? `: ${answer['error_description'].slice(0, 300)}` : '';
    if (error === 'invalid_client') {
      throw new CredentialError('ERR_CREDENTIAL_UNAVAILABLE', 'client_rejected', `the identity provider rejected the gateway's client authentication (invalid_client${description})`, { oauthError: error });
    }
    if (error !== undefined && response.status >= 400 && response.status < 500) {
      throw new CredentialError('ERR_CREDENTIAL_REFUSED', 'refused', `the identity provider refused: ${error}${description}`, { oauthError: error });
    }
    throw new CredentialError('ERR_CREDENTIAL_UNAVAILABLE', 'idp_error', `the token endpoint answered HTTP ${response.status}${error === undefined ? '' : ` (${error})`}`);
  }

  #issued(answer: Record<string, unknown>): IssuedToken {
    const token = answer['access_token'];
    const type = answer['token_type'];
    if (typeof token !== 'string' || token === '') {
      throw new CredentialError('ERR_CREDENTIAL_UNAVAILABLE', 'idp_error', 'the token endpoint answered 200 without an access_token');
    }
    // RFC 8693 §2.2.1: "N_A" when the issued token is not an access token; it is still sent as a bearer.
    if (typeof type === 'string' && !/^(bearer|n_a)$/i.test(type)) {
      throw new CredentialError('ERR_CREDENTIAL_UNAVAILABLE', 'idp_error', `the token endpoint issued a "${type}" token; only bearer tokens can be sent on`);
    }
    const now = Date.now();
    const expiresIn = answer['expires_in'];
    if (typeof expiresIn === 'number' && Number.isFinite(expiresIn) && expiresIn > 0) return { accessToken: token, expiresAtMs: now + expiresIn * 1000 };
    return { accessToken: token, expiresAtMs: now + lifetimeFromJwt(token, this.#options.defaultLifetimeSeconds) * 1000 };
  }

  async #authenticate(url: string, body: URLSearchParams, headers: Record<string, string>): Promise<void> {
    const client = this.#options.client;
    if (client.authMethod === 'private_key_jwt') {
      // A key that cannot be read is secret_missing like an unset client secret, not an untyped failure.
      const pem = client.privateKey === undefined ? '' : secretText(client.privateKey);
      let key: SigningKey;
      try {
        // Imported once per key text (a rotated file brings a new one).
        if (this.#signingKey?.pem !== pem) this.#signingKey = { pem, key: await importPKCS8(pem, client.algorithm) };
        key = this.#signingKey.key;
      } catch (err) {
        throw new CredentialError('ERR_CREDENTIAL_UNAVAILABLE', 'secret_missing', `the gateway's private key (${client.privateKey?.describe() ?? 'unset'}) is not a PKCS#8 PEM ${client.algorithm} key`, { cause: err });
      }
      // RFC 7523 §3: iss = sub = client id, aud = the token endpoint, short-lived, unique.
      const assertion = await new SignJWT({})
        .setProtectedHeader({ alg: client.algorithm, typ: 'JWT', ...(client.keyId === undefined ? {} : { kid: client.keyId }) })
        .setIssuer(client.id)
        .setSubject(client.id)
        .setAudience(url)
        .setIssuedAt()
        .setExpirationTime('60s')
        .setJti(randomUUID())
        .sign(key);
      body.set('client_id', client.id);
      body.set('client_assertion_type', CLIENT_ASSERTION_TYPE);
      body.set('client_assertion', assertion);
      return;
    }
    const secret = secretValue(client);
    if (client.authMethod === 'client_secret_post') {
      body.set('client_id', client.id);
      body.set('client_secret', secret);
    } else {
      // RFC 6749 §2.3.1: both parts form-encoded before base64.
      headers['authorization'] = `Basic ${Buffer.from(`${formEncode(client.id)}:${formEncode(secret)}`).toString('base64')}`;
    }
  }

  #discover(signal: AbortSignal): Promise<string> {
    if (this.#discovering !== undefined) return this.#discovering;
    if (Date.now() - this.#discoveryFailedAt < DISCOVERY_RETRY_MS && this.#discoveryFailure !== undefined) return Promise.reject(this.#discoveryFailure);
    const issuer = this.#options.issuer;
    if (issuer === undefined) return Promise.reject(new Error('a token endpoint needs an issuer or a url'));
    const pending = discoverEndpoint(issuer, 'token_endpoint', signal, this.#options.timeoutMs)
      .then((url) => {
        this.#url = url;
        return url;
      })
      .catch((err: unknown) => {
        this.#discoveryFailedAt = Date.now();
        const failure = signal.aborted
          ? new CredentialError('ERR_CREDENTIAL_UNAVAILABLE', 'timeout', `the identity provider's metadata did not arrive within ${this.#options.timeoutMs} ms`, { cause: err })
          : new CredentialError('ERR_CREDENTIAL_UNAVAILABLE', 'unreachable', `cannot find the token endpoint of ${issuer}: ${(err as Error).message}`, { cause: err });
        this.#discoveryFailure = failure;
        throw failure;
      })
      .finally(() => {
        this.#discovering = undefined;
      });
    this.#discovering = pending;
    return pending;
  }
}

function secretValue(client: OAuthClient): string {
  if (client.secret === undefined) throw new CredentialError('ERR_CREDENTIAL_UNAVAILABLE', 'secret_missing', `client ${client.id} has no secret configured`);
  return secretText(client.secret);
}

function secretText(secret: Secret): string {
  try {
    return secret.value();
  } catch (err) {
    throw new CredentialError('ERR_CREDENTIAL_UNAVAILABLE', 'secret_missing', (err as Error).message, { cause: err });
  }
}

function formEncode(value: string): string {
  return encodeURIComponent(value).replace(/%20/g, '+');
}

function parseObject(text: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(text);
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** Seconds a JWT has left by its own exp (the IdP's clock), or the default for anything else. */
function lifetimeFromJwt(token: string, fallback: number): number {
  try {
    const exp = decodeJwt(token).exp;
    if (typeof exp === 'number') return Math.max(0, exp - Math.floor(Date.now() / 1000));
  } catch {
    // Not a JWT: opaque tokens are common.
  }
  return fallback;
}
