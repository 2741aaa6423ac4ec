// Hands each upstream request the credential its server's plan calls for, from the cache when it can.
// The caller's own token is an input to token exchange and nothing else: it is never an output.

import type { Logger } from 'pino';
import type { Metrics } from '../audit/metrics.ts';
import type { ServerSpec } from '../config/document.ts';
import { GatewayError } from '../errors.ts';
import type { Caller } from '../identity/principal.ts';
import type { RevocationRecord } from '../identity/revocation.ts';
import { cacheKey, type CacheKey, type CacheSource, type CredentialCache } from './cache.ts';
import type { CredentialKind, CredentialPlan, OAuthPlan } from './plan.ts';
import { CredentialError, type IssuedToken } from './token-endpoint.ts';

export interface Credential {
  readonly strategy: CredentialKind;
  /** Headers to set on the upstream request (lower-case names). */
  readonly headers: Readonly<Record<string, string>>;
  /** The cache entry it came from, to drop when the server rejects it. */
  readonly key: CacheKey | undefined;
  readonly source: CacheSource | 'static' | 'none';
}

const NONE: Credential = { strategy: 'none', headers: {}, key: undefined, source: 'none' };

const EXCHANGE_GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';

type FetchedPlan = Extract<CredentialPlan, { readonly kind: 'tokenExchange' | 'clientCredentials' }>;

interface Memo {
  readonly key: CacheKey;
  /** The last credential handed out for this key, reused while the cached token is the same. */
  credential: Credential | undefined;
  token?: string;
}

export class CredentialBroker {
  readonly #cache: CredentialCache;
  readonly #metrics: Metrics;
  readonly #log: Logger;
  readonly #callerKeys = new WeakMap<Caller, Map<CredentialPlan, Memo>>();
  readonly #gatewayKeys = new WeakMap<CredentialPlan, Memo>();

  constructor(cache: CredentialCache, metrics: Metrics, log: Logger) {
    this.#cache = cache;
    this.#metrics = metrics;
    this.#log = log;
  }

  /**
   * The headers a request to `server` carries upstream: at once when the credential is in this replica's
   * cache (the common case, kept free of promises and hashing), else a promise. A failure is a GatewayError.
   */
  obtain(server: ServerSpec, caller: Caller | undefined, bearer: string | undefined, actor?: string): Credential | Promise<Credential> {
    const plan = server.credential;
    try {
      const hit = this.#cached(plan, server, caller, bearer, actor);
      if (hit !== undefined) {
        this.#metrics.credentialLookup(server.name, plan.kind, hit.source);
        return hit;
      }
    } catch (err) {
      return Promise.reject(this.#failed(server, err));
    }
    return this.#obtain(plan, server, caller, bearer, actor).then(
      (credential) => {
        if (credential.source !== 'none') this.#metrics.credentialLookup(server.name, plan.kind, credential.source === 'fetched' ? 'exchanged' : credential.source);
        return credential;
      },
      (err: unknown) => {
        throw this.#failed(server, err);
      },
    );
  }

  #failed(server: ServerSpec, err: unknown): Error {
    const reason = err instanceof CredentialError ? err.reason : err instanceof GatewayError ? 'secret_missing' : 'internal';
    this.#metrics.credentialFailure(server.name, reason);
    if (!(err instanceof GatewayError)) return err instanceof Error ? err : new Error(String(err));
    // The message names the server: one client talks to many through the same gateway.
    const message = `no credential for MCP server "${server.name}": ${err.message}`;
    this.#log.warn({ server: server.name, strategy: server.credential.kind, reason, err: err.message }, 'downstream credential unavailable');
    return new GatewayError(err.code, message, { cause: err, retryAfterSeconds: err.code === 'ERR_CREDENTIAL_UNAVAILABLE' ? 1 : undefined });
  }

  /** What needs no waiting: nothing, a static secret, or a credential in L1 (same object while it lasts). */
  #cached(plan: CredentialPlan, server: ServerSpec, caller: Caller | undefined, bearer: string | undefined, actor: string | undefined): Credential | undefined {
    switch (plan.kind) {
      case 'none':
        return NONE;
      case 'staticSecret':
        return { strategy: plan.kind, headers: { [plan.header]: plan.prefix + plan.secret.value() }, key: undefined, source: 'static' };
      case 'tokenExchange':
      case 'clientCredentials': {
        const memo = this.#memo(plan, server, caller, bearer, actor);
        if (memo === undefined) return undefined;
        const token = this.#cache.peek(memo.key);
        if (token === undefined) return undefined;
        // The same string object while the entry lasts: an identity check, not a comparison of its text.
        if (memo.credential === undefined || memo.token !== token) {
          memo.credential = this.#credential(plan, memo.key, token, 'l1', caller);
          memo.token = token;
        }
        return memo.credential;
      }
    }
  }

  /**
   * The cache key of a caller's credential for a plan, computed once per verified token: the verifier
   * hands out the same Caller for the same token, so a WeakMap on it forgets with the token.
   */
  #memo(plan: CredentialPlan, server: ServerSpec, caller: Caller | undefined, bearer: string | undefined, actor: string | undefined): Memo | undefined {
    if (plan.kind === 'clientCredentials') {
      let memo = this.#gatewayKeys.get(plan);
      if (memo === undefined) {
        // The gateway's own credential: one per server and configuration, whoever calls.
        memo = { key: cacheKey({ principal: undefined, agent: undefined, token: undefined }, [server.name, ...plan.fingerprint]), credential: undefined };
        this.#gatewayKeys.set(plan, memo);
      }
      // The user header differs per caller: the shared Credential object is only for callers without one.
      if (plan.userHeader !== undefined) return { key: memo.key, credential: undefined };
      return memo;
    }
    if (plan.kind !== 'tokenExchange' || caller === undefined || bearer === undefined) return undefined;
    const user = caller.user;
    const owner = { principal: `${user.issuer}|${user.subject}`, agent: caller.agent.id === '' ? undefined : caller.agent.id, token: user.tokenId ?? bearer };
    // An agent's own token makes another credential (another actor); it may change from request to request.
    if (actor !== undefined && actor !== '') return { key: cacheKey(owner, [server.name, ...plan.fingerprint, plan.subjectTokenType, bearer, actor]), credential: undefined };
    let perPlan = this.#callerKeys.get(caller);
    if (perPlan === undefined) {
      perPlan = new Map();
      this.#callerKeys.set(caller, perPlan);
    }
    let memo = perPlan.get(plan);
    if (memo === undefined) {
      memo = { key: cacheKey(owner, [server.name, ...plan.fingerprint, plan.subjectTokenType, bearer]), credential: undefined };
      perPlan.set(plan, memo);
    }
    return memo;
  }

  #credential(plan: FetchedPlan, key: CacheKey, token: string, source: Credential['source'], caller: Caller | undefined): Credential {
    const headers: Record<string, string> = { [plan.header]: plan.prefix + token };
    if (plan.kind === 'clientCredentials' && plan.userHeader !== undefined && caller !== undefined) {
      const who = plan.userHeader.value === 'email' ? caller.user.email : caller.user.subject;
      if (who !== undefined) headers[plan.userHeader.name] = who;
    }
    return { strategy: plan.kind, headers, key, source };
  }

  /** The server answered 401 to this credential: it must not be handed out again. */
  async rejected(server: ServerSpec, credential: Credential): Promise<void> {
    this.#metrics.credentialFailure(server.name, 'upstream_rejected');
    this.#log.warn({ server: server.name, strategy: credential.strategy, source: credential.source }, 'MCP server rejected the gateway credential');
    if (credential.key !== undefined) await this.#cache.drop(credential.key);
  }

  /** Drops what a revocation covers (called on every replica when it is announced). */
  async revoked(r: RevocationRecord): Promise<void> {
    const dropped = await this.#cache.dropRevoked(r);
    if (dropped > 0) this.#log.info({ revocation: r.kind, dropped }, 'cached downstream credentials dropped');
  }

  async #obtain(plan: CredentialPlan, server: ServerSpec, caller: Caller | undefined, bearer: string | undefined, actor: string | undefined): Promise<Credential> {
    if (plan.kind !== 'tokenExchange' && plan.kind !== 'clientCredentials') throw new Error(`server ${server.name}: nothing to fetch for ${plan.kind}`);
    const memo = this.#memo(plan, server, caller, bearer, actor);
    if (memo === undefined) throw new Error(`server ${server.name}: token exchange without an authenticated caller`);
    const form: Record<string, string> =
      plan.kind === 'tokenExchange'
        ? {
            grant_type: EXCHANGE_GRANT,
            subject_token: bearer ?? '',
            subject_token_type: plan.subjectTokenType,
            requested_token_type: ACCESS_TOKEN_TYPE,
            ...(actor === undefined || actor === '' ? {} : { actor_token: actor, actor_token_type: ACCESS_TOKEN_TYPE }),
            ...target(plan),
          }
        : { grant_type: 'client_credentials', ...target(plan) };
    const got = await this.#cache.get(memo.key, plan.marginMs, plan.timeoutMs, () => this.#fetch(plan, plan.kind, form));
    return this.#credential(plan, memo.key, got.token, got.source, caller);
  }

  async #fetch(plan: OAuthPlan, strategy: CredentialKind, form: Record<string, string>): Promise<IssuedToken> {
    const started = process.hrtime.bigint();
    const seconds = (): number => Number(process.hrtime.bigint() - started) / 1e9;
    try {
      const issued = await plan.endpoint.request(form);
      this.#metrics.credentialFetch(strategy, 'ok', seconds());
      return issued;
    } catch (err) {
      this.#metrics.credentialFetch(strategy, err instanceof GatewayError && err.code === 'ERR_CREDENTIAL_REFUSED' ? 'refused' : 'unavailable', seconds());
      throw err;
    }
  }
}

/** RFC 8693 audience / RFC 8707 resource and scope, as configured. */
function target(plan: OAuthPlan): Record<string, string> {
  const out: Record<string, string> = {};
  if (plan.audience !== undefined) out['audience'] = plan.audience;
  if (plan.resource !== undefined) out['resource'] = plan.resource;
  if (plan.scopes.length > 0) out['scope'] = plan.scopes.join(' ');
  return out;
}
