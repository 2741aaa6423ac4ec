// Revocation by token id, by subject or by agent, enforced by every replica within a second.
//
//   revoke() on any replica ──SET (with TTL)──▶ shared state ◀──GET on a cache miss── check() on any replica
//                           ──PUBLISH────────▶ channel ──▶ every replica drops its local cache
//
// Most requests never reach Redis: each replica keeps the answers of its lookups, positive and negative,
// in a bounded local cache. A revocation is announced on a channel and every replica (the one that made it
// included) drops that cache, so the next check reads the new state. A lost message is bounded twice: a
// negative answer lives at most negativeCacheTtlSeconds, and a subscriber that reconnects drops the cache
// (messages published while it was away are lost, see state/pubsub.ts).

import { LRUCache } from 'lru-cache';
import { GatewayError } from '../errors.ts';
import { channels, keys } from '../state/store.ts';
import type { SharedState, Unsubscribe } from '../state/store.ts';
import type { Caller } from './principal.ts';

export type Revocation =
  | {
      readonly kind: 'token';
      /** The token's `jti`. Not scoped by issuer: token ids are expected to be unique (UUIDs). */
      readonly tokenId: string;
      /** The token's `exp` (seconds since the epoch), when known: the revocation is kept until then. */
      readonly expiresAt?: number | undefined;
    }
  | { readonly kind: 'subject'; /** `iss` claim (not the configured issuer name). */ readonly issuer: string; readonly subject: string }
  | { readonly kind: 'agent'; /** Agent.id, or the OAuth client id or SPIFFE ID alone. */ readonly agentId: string };

/** A revocation as stored and listed. */
export type RevocationRecord = Revocation & {
  readonly revokedAtMs: number;
  /** When the record expires from shared state. */
  readonly lapsesAtMs: number;
};

/** What check() could establish: `checked: false` only in fail-open mode, for the caller to log and audit. */
export type RevocationCheck = { readonly checked: true } | { readonly checked: false; readonly cause: GatewayError };

export interface RevocationOptions {
  /** When shared state cannot be reached for a lookup that is not cached: refuse (default) or allow. */
  readonly failureMode?: 'closed' | 'open' | undefined;
  /**
   * How long a subject or agent revocation is kept (default 86 400 = 24 h). Must exceed the lifetime of
   * any token the issuers hand out: once the record lapses, tokens issued before it work again.
   */
  readonly retentionSeconds?: number | undefined;
  /** How long a token revocation is kept when the token's expiry is not given (default 86 400). */
  readonly maxTokenRetentionSeconds?: number | undefined;
  /**
   * Tokens issued up to this long after a subject or agent revocation still count as issued before it,
   * for an issuer whose clock runs ahead of ours (default 0: `iat` at or before the revocation time).
   */
  readonly clockSkewSeconds?: number | undefined;
  /** Bound of the local cache of lookups (default 50 000). */
  readonly cacheMaxEntries?: number | undefined;
  /** How long "not revoked" is trusted locally without hearing otherwise (default 30). */
  readonly negativeCacheTtlSeconds?: number | undefined;
  /** Milliseconds since the epoch. */
  readonly now?: (() => number) | undefined;
}

interface CacheEntry {
  readonly record: RevocationRecord | undefined;
}

/** A token revocation outlives the token by this much, more than any verifier's clock tolerance. */
const EXPIRY_MARGIN_SECONDS = 300;
const CHECKED: RevocationCheck = Object.freeze({ checked: true });

export class Revocations {
  readonly #state: SharedState;
  readonly #failureMode: 'closed' | 'open';
  readonly #retentionSeconds: number;
  readonly #maxTokenRetentionSeconds: number;
  readonly #skewMs: number;
  readonly #negativeTtlMs: number;
  readonly #now: () => number;
  readonly #cache: LRUCache<string, CacheEntry>;
  /** Lookups in flight, shared by concurrent checks of the same key. */
  readonly #inflight = new Map<string, Promise<RevocationRecord | undefined>>();
  /** Bumped by every invalidation: a lookup that started before one must not fill the cache after it. */
  #generation = 0;
  /** Nothing is cached until the channel is subscribed: without it we would never hear of a revocation. */
  #cacheable = false;
  readonly #subscribing: Promise<void>;
  #unsubscribe: Unsubscribe | undefined;
  #subscribeError: Error | undefined;
  readonly #listeners = new Set<(record: RevocationRecord) => void>();

  constructor(state: SharedState, options: RevocationOptions = {}) {
    this.#state = state;
    // Checked at run time too: settings arrive from flags and files.
    const failureMode: string = options.failureMode ?? 'closed';
    if (failureMode !== 'closed' && failureMode !== 'open') {
      throw new RangeError(`revocation failureMode must be "closed" or "open" (got ${JSON.stringify(failureMode)})`);
    }
    this.#failureMode = failureMode;
    this.#retentionSeconds = positive('retentionSeconds', options.retentionSeconds ?? 86_400);
    this.#maxTokenRetentionSeconds = positive('maxTokenRetentionSeconds', options.maxTokenRetentionSeconds ?? 86_400);
    this.#skewMs = nonNegative('clockSkewSeconds', options.clockSkewSeconds ?? 0) * 1000;
    this.#negativeTtlMs = positive('negativeCacheTtlSeconds', options.negativeCacheTtlSeconds ?? 30) * 1000;
    const now = options.now;
    this.#now = now ?? Date.now;
    this.#cache = new LRUCache<string, CacheEntry>({
      max: Math.floor(positive('cacheMaxEntries', options.cacheMaxEntries ?? 50_000)),
      ttl: this.#negativeTtlMs,
      // With an injected clock, read it on every lookup (lru-cache otherwise reuses a reading for 1 ms).
      ...(now === undefined ? {} : { perf: { now }, ttlResolution: 0 }),
    });
    this.#subscribing = state
      .subscribe(channels.revocations, (message) => {
        this.#onMessage(message);
      }, {
        onResubscribed: () => {
          this.#invalidate();
        },
      })
      .then(
        (unsubscribe) => {
          this.#unsubscribe = unsubscribe;
          this.#cacheable = true;
        },
        (err: unknown) => {
          // Checks still work, each one reading shared state.
          this.#subscribeError = err instanceof Error ? err : new Error(String(err));
        },
      );
  }

  /** Resolves once revocations made elsewhere are being heard (until then nothing is cached); rejects if they cannot be. */
  async ready(): Promise<void> {
    await this.#subscribing;
    if (this.#subscribeError !== undefined) throw this.#subscribeError;
  }

  /**
   * Records a revocation and announces it to every replica. A subject or agent revocation refuses the
   * tokens issued at or before now; tokens issued later are accepted. Stopping a user or client from simply
   * logging in again is the identity provider's job (disable the account or client there): this cuts off
   * tokens already out in the world.
   */
  async revoke(r: Revocation): Promise<RevocationRecord> {
    const nowMs = this.#now();
    const ttlSeconds = this.#ttlSeconds(r, nowMs);
    const record: RevocationRecord = { ...copy(r), revokedAtMs: nowMs, lapsesAtMs: nowMs + ttlSeconds * 1000 };
    const message = JSON.stringify(record);
    await this.#shared(() => this.#state.set(keyOf(record), message, ttlSeconds));
    // Our own cache goes at once, not when our own message comes back.
    this.#invalidate();
    // If the announcement fails the revocation is stored but other replicas may go on trusting their
    // cached "not revoked" for up to negativeCacheTtlSeconds: report it, so that the caller retries.
    await this.#shared(() => this.#state.publish(channels.revocations, message));
    return record;
  }

  /**
   * Resolves when nothing about the caller is revoked. Throws ERR_IDENTITY_REVOKED naming what is
   * (token, subject or agent), or ERR_STATE_UNAVAILABLE when a lookup could not be made and the failure
   * mode is "closed". Answers already cached locally are used even while shared state is unreachable.
   */
  async check(caller: Caller): Promise<RevocationCheck> {
    const pending: string[] = [];
    for (const key of lookupKeys(caller)) {
      const cached = this.#cacheable ? this.#cache.get(key) : undefined;
      if (cached === undefined) pending.push(key);
      else refuseIfApplies(cached.record, caller, this.#skewMs);
    }
    if (pending.length === 0) return CHECKED;

    const results = await Promise.allSettled(pending.map((key) => this.#lookup(key)));
    let failure: unknown;
    for (const result of results) {
      // A revocation found takes precedence over a lookup that failed.
      if (result.status === 'fulfilled') refuseIfApplies(result.value, caller, this.#skewMs);
      else failure ??= result.reason;
    }
    if (failure === undefined) return CHECKED;
    const err = new GatewayError('ERR_STATE_UNAVAILABLE', 'could not check whether the token is revoked: shared state is unavailable', {
      cause: failure,
    });
    if (this.#failureMode === 'closed') throw err;
    return { checked: false, cause: err };
  }

  /** Every revocation in force, newest first (for the admin API; scans shared state). */
  async list(limit = 10_000): Promise<RevocationRecord[]> {
    const found = await this.#shared(() => this.#state.keysWithPrefix(keys.revocationPrefix, limit));
    const values = await this.#shared(() => Promise.all(found.map((key) => this.#state.get(key))));
    const records: RevocationRecord[] = [];
    for (const value of values) {
      // Lapsed between SCAN and GET, or not ours to read: skipped, a listing is not a check.
      const record = value === undefined ? undefined : parseRecord(value);
      if (record !== undefined) records.push(record);
    }
    return records.sort((a, b) => b.revokedAtMs - a.revokedAtMs);
  }

  /**
   * Calls `listener` on this replica for every revocation announced (by any replica, this one included),
   * e.g. to drop cached downstream credentials of a revoked subject. Returns a function that removes it.
   */
  onRevoked(listener: (record: RevocationRecord) => void): () => void {
    this.#listeners.add(listener);
    return () => {
      this.#listeners.delete(listener);
    };
  }

  async close(): Promise<void> {
    await this.#subscribing;
    this.#cacheable = false;
    this.#invalidate();
    const unsubscribe = this.#unsubscribe;
    this.#unsubscribe = undefined;
    await unsubscribe?.();
  }

  #onMessage(message: string): void {
    // Any message drops the whole cache. Revocations are rare admin actions, so the burst of lookups
    // that follows is cheap, and there is no way to get a targeted invalidation subtly wrong.
    this.#invalidate();
    const record = parseRecord(message);
    if (record === undefined) return;
    for (const listener of [...this.#listeners]) listener(record);
  }

  #invalidate(): void {
    this.#generation += 1;
    this.#cache.clear();
    this.#inflight.clear();
  }

  #lookup(key: string): Promise<RevocationRecord | undefined> {
    const inflight = this.#inflight.get(key);
    if (inflight !== undefined) return inflight;
    const generation = this.#generation;
    const lookup = this.#state.get(key).then((value) => {
      const record = value === undefined ? undefined : parseRecord(value);
      if (value !== undefined && record === undefined) {
        throw new Error(`the revocation record at ${key} is malformed`);
      }
      if (this.#cacheable && generation === this.#generation) this.#remember(key, record);
      return record;
    });
    const forget = (): void => {
      if (this.#inflight.get(key) === lookup) this.#inflight.delete(key);
    };
    lookup.then(forget, forget);
    this.#inflight.set(key, lookup);
    return lookup;
  }

  #remember(key: string, record: RevocationRecord | undefined): void {
    if (record === undefined) {
      this.#cache.set(key, { record });
      return;
    }
    // A revocation holds until its record lapses; none is ever withdrawn early.
    const remainingMs = record.lapsesAtMs - this.#now();
    if (remainingMs > 0) this.#cache.set(key, { record }, { ttl: remainingMs });
  }

  #ttlSeconds(r: Revocation, nowMs: number): number {
    if (r.kind !== 'token') return this.#retentionSeconds;
    if (r.expiresAt === undefined) return this.#maxTokenRetentionSeconds;
    // Until the token expires (it is refused as expired after that), and a margin for clock tolerance.
    return Math.max(1, Math.ceil(r.expiresAt - nowMs / 1000) + EXPIRY_MARGIN_SECONDS);
  }

  async #shared<T>(op: () => Promise<T>): Promise<T> {
    try {
      return await op();
    } catch (err) {
      if (err instanceof GatewayError) throw err;
      throw new GatewayError('ERR_STATE_UNAVAILABLE', 'shared state is unavailable', { cause: err });
    }
  }
}

function keyOf(r: Revocation): string {
  switch (r.kind) {
    case 'token':
      return keys.revokedToken(r.tokenId);
    case 'subject':
      return keys.revokedSubject(r.issuer, r.subject);
    case 'agent':
      return keys.revokedAgent(r.agentId);
  }
}

/** The keys whose records could refuse this caller: its token id, its subject, each name of its agent. */
function lookupKeys(caller: Caller): string[] {
  const { user, agent } = caller;
  const found: string[] = [];
  if (user.tokenId !== undefined && user.tokenId !== '') found.push(keys.revokedToken(user.tokenId));
  found.push(keys.revokedSubject(user.issuer, user.subject));
  // An agent may be revoked by the id policies use or by either of its names alone.
  const agentIds = new Set([agent.id, agent.clientId, agent.spiffeId].filter((id): id is string => id !== undefined && id !== ''));
  for (const id of agentIds) found.push(keys.revokedAgent(id));
  return found;
}

function refuseIfApplies(record: RevocationRecord | undefined, caller: Caller, skewMs: number): void {
  if (record === undefined) return;
  if (record.kind === 'token') {
    // The token id only: the message may be read by whoever holds the token, and the id is not a secret.
    throw new GatewayError('ERR_IDENTITY_REVOKED', `the token (jti ${JSON.stringify(record.tokenId)}) has been revoked`);
  }
  // A token without iat cannot show that it was issued after the revocation: it is treated as before.
  const issuedAt = caller.user.issuedAt;
  if (issuedAt !== undefined && issuedAt * 1000 > record.revokedAtMs + skewMs) return;
  const when = new Date(record.revokedAtMs).toISOString();
  if (record.kind === 'subject') {
    throw new GatewayError(
      'ERR_IDENTITY_REVOKED',
      `the subject ${JSON.stringify(record.subject)} (issuer ${JSON.stringify(record.issuer)}) has been revoked: tokens issued at or before ${when} are refused`,
    );
  }
  throw new GatewayError(
    'ERR_IDENTITY_REVOKED',
    `the agent ${JSON.stringify(record.agentId)} has been revoked: tokens issued at or before ${when} are refused`,
  );
}

/** Only the fields of the kind, non-empty strings checked: a revocation is not a place to smuggle data. */
function copy(r: Revocation): Revocation {
  const text = (name: string, value: unknown): string => {
    if (typeof value !== 'string' || value === '') throw new RangeError(`a ${r.kind} revocation needs ${name} (a non-empty string)`);
    return value;
  };
  switch (r.kind) {
    case 'token': {
      if (r.expiresAt !== undefined && !Number.isFinite(r.expiresAt)) {
        throw new RangeError(`a token revocation's expiresAt must be seconds since the epoch (got ${String(r.expiresAt)})`);
      }
      const tokenId = text('tokenId', r.tokenId);
      return r.expiresAt === undefined ? { kind: 'token', tokenId } : { kind: 'token', tokenId, expiresAt: r.expiresAt };
    }
    case 'subject':
      return { kind: 'subject', issuer: text('issuer', r.issuer), subject: text('subject', r.subject) };
    case 'agent':
      return { kind: 'agent', agentId: text('agentId', r.agentId) };
    default:
      throw new RangeError(`unknown revocation kind ${JSON.stringify((r as { kind: unknown }).kind)}`);
  }
}

function parseRecord(text: string): RevocationRecord | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null) return undefined;
  const field = (name: string): unknown => Reflect.get(value, name);
  const str = (name: string): string | undefined => {
    const v = field(name);
    return typeof v === 'string' && v !== '' ? v : undefined;
  };
  const revokedAtMs = field('revokedAtMs');
  const lapsesAtMs = field('lapsesAtMs');
  if (typeof revokedAtMs !== 'number' || typeof lapsesAtMs !== 'number') return undefined;
  const times = { revokedAtMs, lapsesAtMs };
  switch (field('kind')) {
    case 'token': {
      const tokenId = str('tokenId');
      const expiresAt = field('expiresAt');
      if (tokenId === undefined) return undefined;
      return typeof expiresAt === 'number' ? { kind: 'token', tokenId, expiresAt, ...times } : { kind: 'token', tokenId, ...times };
    }
    case 'subject': {
      const issuer = str('issuer');
      const subject = str('subject');
      return issuer === undefined || subject === undefined ? undefined : { kind: 'subject', issuer, subject, ...times };
    }
    case 'agent': {
      const agentId = str('agentId');
      return agentId === undefined ? undefined : { kind: 'agent', agentId, ...times };
    }
    default:
      return undefined;
  }
}

function positive(name: string, value: number): number {
  if (!Number.isFinite(value) || value <= 0) throw new RangeError(`revocation option ${name} must be a positive number (got ${value})`);
  return value;
}

function nonNegative(name: string, value: number): number {
  if (!Number.isFinite(value) || value < 0) throw new RangeError(`revocation option ${name} must be zero or more (got ${value})`);
  return value;
}
