// Shared state that can be switched off: an in-memory store whose calls fail like an unreachable Redis
// while `down` is set (subscriptions stay, as a reconnecting client's would).

import { MemoryState, type MessageHandler, type SharedState, type SubscribeOptions, type Unsubscribe } from '../../ext-proc/src/state/store.ts';

export class UnreliableState implements SharedState {
  readonly kind: 'memory' | 'redis';
  readonly inner = new MemoryState();
  down = false;
  gets = 0;
  /** When set, get() waits for it before answering (with what the store held when get() was called). */
  gate: Promise<void> | undefined;

  /** `redis` makes users treat it as shared between processes (the credential cache then uses it). */
  constructor(kind: 'memory' | 'redis' = 'memory') {
    this.kind = kind;
  }

  async get(key: string): Promise<string | undefined> {
    this.gets += 1;
    this.#fail();
    const gate = this.gate;
    const value = await this.inner.get(key);
    if (gate !== undefined) await gate;
    return value;
  }
  set(key: string, value: string, ttlSeconds: number): Promise<void> {
    this.#fail();
    return this.inner.set(key, value, ttlSeconds);
  }
  delete(key: string): Promise<void> {
    this.#fail();
    return this.inner.delete(key);
  }
  setIfAbsent(key: string, value: string, ttlSeconds: number): Promise<boolean> {
    this.#fail();
    return this.inner.setIfAbsent(key, value, ttlSeconds);
  }
  keysMatching(pattern: string, limit?: number): Promise<string[]> {
    this.#fail();
    return this.inner.keysMatching(pattern, limit);
  }
  keysWithPrefix(prefix: string, limit?: number): Promise<string[]> {
    this.#fail();
    return this.inner.keysWithPrefix(prefix, limit);
  }
  publish(channel: string, message: string): Promise<void> {
    this.#fail();
    return this.inner.publish(channel, message);
  }
  subscribe(channel: string, handler: MessageHandler, options?: SubscribeOptions): Promise<Unsubscribe> {
    return this.inner.subscribe(channel, handler, options);
  }
  healthy(): boolean {
    return !this.down;
  }
  close(): Promise<void> {
    return this.inner.close();
  }
  #fail(): void {
    if (this.down) throw new Error('connect ECONNREFUSED 127.0.0.1:6379');
  }
}
