// Shared state behind one small interface: what several processor replicas must agree on
// (which request a response answers when it arrives on another stream, sessions, later revocations).
// The in-memory store serves a single replica; a Redis store implements the same interface.

import { LRUCache } from 'lru-cache';

export interface SharedState {
  readonly kind: 'memory' | 'redis';
  get(key: string): Promise<string | undefined>;
  set(key: string, value: string, ttlSeconds: number): Promise<void>;
  delete(key: string): Promise<void>;
  close(): Promise<void>;
}

export class MemoryState implements SharedState {
  readonly kind = 'memory';
  readonly #entries: LRUCache<string, string>;

  constructor(options: { maxEntries?: number } = {}) {
    // Bounded so that clients that never read their responses cannot grow the process without limit.
    this.#entries = new LRUCache({ max: options.maxEntries ?? 100_000, ttlAutopurge: false });
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

  close(): Promise<void> {
    this.#entries.clear();
    return Promise.resolve();
  }
}

/** Key names, in one place so that every replica spells them the same. */
export const keys = {
  /** What a client→server request asked, for a response that may arrive on another stream. */
  request: (server: string, session: string, id: string) => `mcp:req:${server}:${session}:c2s:${id}`,
  /** The protocol version a session negotiated. */
  sessionVersion: (server: string, session: string) => `mcp:ver:${server}:${session}`,
};
