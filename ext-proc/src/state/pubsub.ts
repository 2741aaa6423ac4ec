// The subscribing side of pub/sub on Redis. A connection in subscribe mode may run no other commands, so
// subscriptions get a connection of their own. Delivery is at most once: whatever is published while that
// connection is down is lost, so after every (re)connection we subscribe again and then tell each
// subscriber that it may have missed messages (onResubscribed), which for a cache means "drop everything".
//
// We manage reconnection ourselves instead of relying on ioredis' autoResubscribe: each connection is
// made with reconnection disabled, and when it ends a new one is made after a short backoff. That gives
// one exact moment at which the subscriptions are known to be in place again (the SUBSCRIBE reply on a
// fresh connection), and in Cluster mode lets the next connection go to another node (a classic PUBLISH
// reaches every node of a cluster, so any node will do).

import type { Redis } from 'ioredis';
import type { MessageHandler, SubscribeOptions, Unsubscribe } from './store.ts';

interface Subscription {
  readonly handler: MessageHandler;
  readonly onResubscribed: (() => void) | undefined;
}

export interface RedisSubscriberOptions {
  /** Makes a new connection (not yet connected or connecting), with ioredis reconnection disabled. */
  readonly connect: () => Redis;
  /** Delay before the n-th consecutive reconnection attempt (n ≥ 1). */
  readonly reconnectDelayMs: (attempt: number) => number;
  /** How often to PING the subscriber connection, to notice a dead one that carries no traffic. */
  readonly pingIntervalMs: number;
  /** Connection errors and handlers that threw; the store itself never logs. */
  readonly onError: (err: unknown) => void;
}

export class RedisSubscriber {
  readonly #options: RedisSubscriberOptions;
  /** By (prefixed) channel name. */
  readonly #channels = new Map<string, Set<Subscription>>();
  #connection: Redis | undefined;
  /** The current connection is ready and every channel in #channels is subscribed on it. */
  #subscribed = false;
  #attempts = 0;
  #reconnectTimer: NodeJS.Timeout | undefined;
  #pingTimer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(options: RedisSubscriberOptions) {
    this.#options = options;
  }

  /** True when no one subscribes, or when the subscriptions are in place on a live connection. */
  healthy(): boolean {
    return this.#channels.size === 0 || this.#subscribed;
  }

  async subscribe(channel: string, handler: MessageHandler, options: SubscribeOptions = {}): Promise<Unsubscribe> {
    if (this.#closed) throw new Error('the shared state is closed');
    const subscription: Subscription = { handler, onResubscribed: options.onResubscribed };
    let set = this.#channels.get(channel);
    if (set === undefined) {
      set = new Set();
      this.#channels.set(channel, set);
    }
    set.add(subscription);
    const unsubscribe = (): Promise<void> => this.#unsubscribe(channel, subscription);

    const connection = this.#connection;
    if (connection === undefined) {
      this.#open();
    } else if (connection.status === 'ready') {
      try {
        await connection.subscribe(channel);
      } catch (err) {
        // The connection dropped under us: the next one subscribes (and calls onResubscribed). Anything
        // else (an ACL refusing the channel, say) is the caller's to see.
        if (connection === this.#connection && statusOf(connection) === 'ready') {
          await unsubscribe();
          throw err;
        }
      }
    }
    // Not connected yet (or reconnecting): registered; #onReady subscribes and reports the gap.
    return unsubscribe;
  }

  close(): void {
    this.#closed = true;
    this.#channels.clear();
    clearTimeout(this.#reconnectTimer);
    clearInterval(this.#pingTimer);
    const connection = this.#connection;
    this.#connection = undefined;
    this.#subscribed = false;
    connection?.disconnect();
  }

  async #unsubscribe(channel: string, subscription: Subscription): Promise<void> {
    const set = this.#channels.get(channel);
    if (set === undefined || !set.delete(subscription) || set.size > 0) return;
    this.#channels.delete(channel);
    const connection = this.#connection;
    if (connection?.status === 'ready') {
      // Best effort: if it fails the connection is going away, and the next one will not subscribe.
      await connection.unsubscribe(channel).catch(() => undefined);
    }
  }

  #open(): void {
    if (this.#closed || this.#connection !== undefined) return;
    const connection = this.#options.connect();
    this.#connection = connection;
    connection.on('error', (err: unknown) => {
      this.#options.onError(err);
    });
    connection.on('message', (channel: string, message: string) => {
      this.#deliver(channel, message);
    });
    connection.once('ready', () => {
      void this.#onReady(connection);
    });
    connection.once('end', () => {
      this.#onEnd(connection);
    });
    if (this.#pingTimer === undefined) {
      this.#pingTimer = setInterval(() => {
        this.#ping();
      }, this.#options.pingIntervalMs);
      this.#pingTimer.unref();
    }
  }

  async #onReady(connection: Redis): Promise<void> {
    const channels = [...this.#channels.keys()];
    if (channels.length > 0) {
      try {
        await connection.subscribe(...channels);
      } catch (err) {
        this.#options.onError(err);
        // Start over on a fresh connection rather than run with some channels missing.
        connection.disconnect();
        return;
      }
    }
    if (connection !== this.#connection || statusOf(connection) !== 'ready') return;
    this.#subscribed = true;
    this.#attempts = 0;
    // Every subscription that exists now was made while no live connection carried it (or on a connection
    // that has since been lost): messages may have been published that it never saw.
    for (const set of this.#channels.values()) {
      for (const subscription of [...set]) this.#call(() => subscription.onResubscribed?.());
    }
  }

  #onEnd(connection: Redis): void {
    if (connection !== this.#connection) return;
    this.#connection = undefined;
    this.#subscribed = false;
    if (this.#closed) return;
    this.#attempts += 1;
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = undefined;
      this.#open();
    }, this.#options.reconnectDelayMs(this.#attempts));
    this.#reconnectTimer.unref();
  }

  #ping(): void {
    const connection = this.#connection;
    if (connection?.status !== 'ready') return;
    // A connection that only ever receives never notices that its peer is gone (no RST through a
    // partition); a PING that goes unanswered within the command timeout does.
    connection.ping().catch((err: unknown) => {
      if (connection !== this.#connection) return;
      this.#options.onError(err);
      connection.disconnect();
    });
  }

  #deliver(channel: string, message: string): void {
    const set = this.#channels.get(channel);
    if (set === undefined) return;
    for (const subscription of [...set]) this.#call(() => { subscription.handler(message); });
  }

  #call(fn: () => void): void {
    // A handler runs inside ioredis' reply parser: a throw there would corrupt the connection's state.
    try {
      fn();
    } catch (err) {
      this.#options.onError(err);
    }
  }
}

// Read through a call: TypeScript would otherwise keep a narrowing of `status` across an await.
function statusOf(connection: Redis): string {
  return connection.status;
}
