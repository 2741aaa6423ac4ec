// Shared state behind one small interface: what several processor replicas must agree on
// (which request a response answers when it arrives on another stream, sessions, later revocations).
// The in-memory store serves a single replica; a Redis store implements the same interface.

import { LRUCache } from 'lru-cache';

export interface SharedState {
  readonly kind: 'memory' | 'redis';
  get(key: string): Promise<string | undefined>;
  set(key: string, value: string, ttlSeconds: number): Promise<void>;
  delete(key: string): Promise<void>;
  /**
   * Sets `key` only if it does not exist (a lock that lapses after `ttlSeconds`); true when this call set it.
   * Shared state is not a consensus system: after a failover a second holder is possible, so a lock only
   * saves work, it never guards correctness.
   */
  setIfAbsent(key: string, value: string, ttlSeconds: number): Promise<boolean>;
  /** Keys that start with `prefix` (for admin listings, not the hot path); at most `limit` of them. */
  keysWithPrefix(prefix: string, limit?: number): Promise<string[]>;
  /**
   * Keys matching a pattern whose only wildcard is `*` (any run of characters); the literal parts must
   * not contain glob characters (`*?[]\\`). Not for the hot path.
   */
  keysMatching(pattern: string, limit?: number): Promise<string[]>;
  /** Delivers `message` to every subscriber of `channel` on every replica (including this one). */
  publish(channel: string, message: string): Promise<void>;
  /**
   * Calls `handler` for each message published on `channel` from now on. Delivery is at most once: a
   * subscriber that was disconnected misses what was published meanwhile, and is told so through
   * `options.onResubscribed`. Resolves with a function that ends the subscription.
   */
  subscribe(channel: string, handler: MessageHandler, options?: SubscribeOptions): Promise<Unsubscribe>;
  /** False while the store cannot serve (Redis unreachable); for /readyz. */
  healthy(): boolean;
  close(): Promise<void>;
}

export type MessageHandler = (message: string) => void;

export interface SubscribeOptions {
  /**
   * Called after the subscription was re-established following a loss of the connection (or established
   * late, when the store was unreachable at subscribe time): messages published in between were lost, so
   * whatever they would have invalidated must be invalidated now.
   */
  readonly onResubscribed?: (() => void) | undefined;
}

export type Unsubscribe = () => Promise<void>;

interface MemorySubscription {
  readonly handler: MessageHandler;
}

export class MemoryState implements SharedState {
  readonly kind = 'memory';
  readonly #entries: LRUCache<string, string>;
  readonly #channels = new Map<string, Set<MemorySubscription>>();
  readonly #onHandlerError: ((err: unknown) => void) | undefined;

  constructor(options: { maxEntries?: number; onHandlerError?: (err: unknown) => void } = {}) {
    // Bounded so that clients that never read their responses cannot grow the process without limit.
    this.#entries = new LRUCache({ max: options.maxEntries ?? 100_000, ttlAutopurge: false });
    this.#onHandlerError = options.onHandlerError;
  }

  get(key: string): Promise<string | undefined> {
    return Promise.resolve(this.#entries.get(key));
  }

  set(key: string, value: string, ttlSeconds: number): Promise<void> {
    this.#entries.set(key, value, { ttl: ttlSeconds * 1000 });
    return Promise.resolve();
  }

  delete(key: string): Promise<void> {
    this.#entries.delete(key);
    return Promise.resolve();
  }

  setIfAbsent(key: string, value: string, ttlSeconds: number): Promise<boolean> {
    if (this.#entries.has(key)) return Promise.resolve(false);
    this.#entries.set(key, value, { ttl: ttlSeconds * 1000 });
    return Promise.resolve(true);
  }

  keysMatching(pattern: string, limit = Number.POSITIVE_INFINITY): Promise<string[]> {
    const re = new RegExp(`^${pattern.split('*').map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`);
    const found: string[] = [];
    for (const key of this.#entries.keys()) {
      if (found.length >= limit) break;
      if (re.test(key)) found.push(key);
    }
    return Promise.resolve(found);
  }

  keysWithPrefix(prefix: string, limit = Number.POSITIVE_INFINITY): Promise<string[]> {
    const found: string[] = [];
    // keys() skips expired entries.
    for (const key of this.#entries.keys()) {
      if (found.length >= limit) break;
      if (key.startsWith(prefix)) found.push(key);
    }
    return Promise.resolve(found);
  }

  publish(channel: string, message: string): Promise<void> {
    // Delivered before publish() resolves, to every handler subscribed at the time; a handler that throws
    // neither stops the others nor fails the publisher (as with Redis, where they run elsewhere).
    for (const subscription of [...(this.#channels.get(channel) ?? [])]) {
      try {
        subscription.handler(message);
      } catch (err) {
        this.#onHandlerError?.(err);
      }
    }
    return Promise.resolve();
  }

  subscribe(channel: string, handler: MessageHandler, _options?: SubscribeOptions): Promise<Unsubscribe> {
    // In-process delivery is never interrupted, so onResubscribed is never called.
    const subscription: MemorySubscription = { handler };
    let set = this.#channels.get(channel);
    if (set === undefined) {
      set = new Set();
      this.#channels.set(channel, set);
    }
    set.add(subscription);
    return Promise.resolve(() => {
      const current = this.#channels.get(channel);
      current?.delete(subscription);
      if (current?.size === 0) this.#channels.delete(channel);
      return Promise.resolve();
    });
  }

  healthy(): boolean {
    return true;
  }

  close(): Promise<void> {
    this.#entries.clear();
    this.#channels.clear();
    return Promise.resolve();
  }
}

/** Key names, in one place so that every replica spells them the same. */
export const keys = {
  /** What a client→server request asked, for a response that may arrive on another stream. */
  request: (server: string, session: string, id: string) => `mcp:req:${server}:${session}:c2s:${id}`,
  /** The user (issuer|subject) a session belongs to. */
  sessionOwner: (server: string, session: string) => `mcp:owner:${server}:${session}`,
  /** The protocol version a session negotiated. */
  sessionVersion: (server: string, session: string) => `mcp:ver:${server}:${session}`,
  /** Every revocation key starts with this (identity/revocation.ts lists them by it). */
  revocationPrefix: 'mcp:rev:',
  // Parts are URI-encoded so that no (issuer, subject) pair can spell another pair's key.
  revokedToken: (tokenId: string) => `mcp:rev:token:${encodeURIComponent(tokenId)}`,
  revokedSubject: (issuer: string, subject: string) =>
    `mcp:rev:subject:${encodeURIComponent(issuer)}:${encodeURIComponent(subject)}`,
  revokedAgent: (agentId: string) => `mcp:rev:agent:${encodeURIComponent(agentId)}`,
  /** Every cached downstream credential key starts with this (credentials/cache.ts composes the rest). */
  credentialPrefix: 'mcp:cred:',
  /** Held by the replica exchanging a token for a cache key, so that other replicas wait for its result. */
  credentialLock: (cacheKey: string) => `mcp:credlock:${cacheKey}`,
};

/** Pub/sub channel names, likewise. */
export const channels = {
  /** A revocation was recorded; the message is the record as JSON. Replicas drop their revocation caches. */
  revocations: 'mcp:revocations',
};
