// Shared state in Redis (or Valkey) through ioredis: standalone, Sentinel or Cluster, chosen by one
// setting (--redis-url, see parseRedisSettings). Every key carries the prefix and a TTL.
//
// The rule that shapes the connection options: a call must never wait on a Redis that is not there.
// Envoy gives the processor about two seconds per message; a request stuck behind a reconnecting client
// would turn a Redis outage into a gateway outage. So commands are never queued while disconnected
// (enableOfflineQueue: false rejects at once), each one has a deadline (commandTimeoutMs, enforced by
// ioredis and again here so that Cluster redirection retries cannot stretch it), and the caller turns the
// rejection into its failure mode (ERR_STATE_UNAVAILABLE, or allow when configured to fail open).
// Reconnection, meanwhile, is quick and never gives up (backoff capped at maxReconnectDelayMs), so the
// store is back within about a second of Redis coming back.

import { Cluster, Redis } from 'ioredis';
import type { ClusterOptions, RedisOptions } from 'ioredis';
import { GatewayError } from '../errors.ts';
import { RedisSubscriber } from './pubsub.ts';
import type { MessageHandler, SharedState, SubscribeOptions, Unsubscribe } from './store.ts';

export interface RedisNode {
  readonly host: string;
  readonly port: number;
}

/** Where Redis is: exactly one of `url` (standalone), `sentinels` (+ `sentinelName`) or `clusterNodes`. */
export interface RedisConnectionSettings {
  /** Standalone: `redis://[user[:password]@]host[:port][/db]`, or `rediss://…` for TLS. */
  readonly url?: string | undefined;
  readonly sentinels?: readonly RedisNode[] | undefined;
  /** The master name the sentinels monitor. */
  readonly sentinelName?: string | undefined;
  /** Seed nodes; the rest of the cluster is discovered. */
  readonly clusterNodes?: readonly RedisNode[] | undefined;
  /** For Sentinel and Cluster (a standalone URL carries its own; these override it when set). */
  readonly username?: string | undefined;
  readonly password?: string | undefined;
  /** Database index; standalone and Sentinel only (Cluster has only database 0). */
  readonly db?: number | undefined;
  /** TLS to Redis (and to the sentinels). */
  readonly tls?: boolean | undefined;
}

export interface RedisStateOptions extends RedisConnectionSettings {
  /** Prepended to every key and channel name, so that several deployments can share one Redis. */
  readonly keyPrefix?: string | undefined;
  /** Deadline of every command. Keep it well under Envoy's message timeout; 500 ms is a good default. */
  readonly commandTimeoutMs: number;
  /** Deadline of a TCP (+TLS) connection attempt. Default 1000 ms. */
  readonly connectTimeoutMs?: number | undefined;
  /** Ceiling of the reconnection backoff. Default 1000 ms. */
  readonly maxReconnectDelayMs?: number | undefined;
  /** How often the subscriber connection is PINGed to notice that it died silently. Default 5000 ms. */
  readonly pingIntervalMs?: number | undefined;
  /** Connection errors, and pub/sub handlers that threw. The store never logs; the caller does. */
  readonly onError?: ((err: unknown, source: 'commands' | 'subscriber') => void) | undefined;
}

export const DEFAULT_KEY_PREFIX = 'mcp-ext-proc:';
export const DEFAULT_COMMAND_TIMEOUT_MS = 500;

const schemes = ['redis', 'rediss', 'redis-sentinel', 'rediss-sentinel', 'redis-cluster', 'rediss-cluster'] as const;
type Scheme = (typeof schemes)[number];

interface ParsedUrl {
  readonly scheme: Scheme;
  readonly username: string | undefined;
  readonly password: string | undefined;
  readonly nodes: readonly RedisNode[];
  /** Path segments, decoded, without empty ones. */
  readonly path: readonly string[];
}

/**
 * One setting for the three deployments:
 * - `redis://[user[:password]@]host[:port][/db]` and `rediss://…` (TLS): standalone;
 * - `redis-sentinel://[user[:password]@]h1[:p1],h2[:p2]/mastername[/db]` (`rediss-sentinel://` for TLS);
 * - `redis-cluster://[user[:password]@]h1[:p1],h2[:p2]` (`rediss-cluster://` for TLS).
 * Ports default to 6379, or 26379 for sentinels. Credentials are percent-decoded. Throws an Error that
 * names the problem (with the password masked) when the value is not one of these.
 */
export function parseRedisSettings(urlLike: string): RedisConnectionSettings {
  const parsed = parseUrl(urlLike);
  const tls = parsed.scheme.startsWith('rediss');
  const credentials = {
    ...(parsed.username === undefined ? {} : { username: parsed.username }),
    ...(parsed.password === undefined ? {} : { password: parsed.password }),
  };
  const fail = (why: string): never => {
    throw new Error(`invalid Redis URL ${JSON.stringify(redactUrl(urlLike))}: ${why}`);
  };
  switch (parsed.scheme) {
    case 'redis':
    case 'rediss': {
      if (parsed.nodes.length !== 1) fail('a standalone URL names exactly one host (use redis-sentinel:// or redis-cluster:// for several)');
      if (parsed.path.length > 1) fail('the path is the database number, e.g. /0');
      if (parsed.path.length === 1) parseDb(parsed.path[0], fail);
      return { url: urlLike };
    }
    case 'redis-sentinel':
    case 'rediss-sentinel': {
      const [name, db, ...rest] = parsed.path;
      if (name === undefined) fail('the path must name the master, e.g. redis-sentinel://h1:26379,h2:26379/mymaster');
      if (rest.length > 0) fail('the path is /mastername or /mastername/db');
      return {
        sentinels: parsed.nodes,
        sentinelName: name,
        ...(db === undefined ? {} : { db: parseDb(db, fail) }),
        ...credentials,
        tls,
      };
    }
    case 'redis-cluster':
    case 'rediss-cluster': {
      const [db, ...rest] = parsed.path;
      if (rest.length > 0 || (db !== undefined && parseDb(db, fail) !== 0)) {
        fail('a cluster has only database 0; leave the path empty');
      }
      return { clusterNodes: parsed.nodes, ...credentials, tls };
    }
  }
}

/** Where the store points, for the start-up log line: mode and addresses, never credentials. */
export function describeRedisSettings(settings: RedisConnectionSettings): string {
  const list = (nodes: readonly RedisNode[]): string => nodes.map(formatNode).join(',');
  const tls = settings.tls === true ? ' (TLS)' : '';
  if (settings.url !== undefined) {
    const target = standaloneTarget(settings);
    return `Redis standalone ${formatNode(target)} db ${target.db ?? 0}${target.tls ? ' (TLS)' : ''}`;
  }
  if (settings.sentinels !== undefined) {
    return `Redis Sentinel master "${settings.sentinelName ?? ''}" via ${list(settings.sentinels)} db ${settings.db ?? 0}${tls}`;
  }
  return `Redis Cluster via ${list(settings.clusterNodes ?? [])}${tls}`;
}

/** Makes the store and waits (at most connectTimeoutMs) for its first connection; Redis being down is not an error. */
export async function createRedisState(options: RedisStateOptions): Promise<RedisState> {
  const state = new RedisState(options);
  await state.whenReady(options.connectTimeoutMs ?? 1000);
  return state;
}

export class RedisState implements SharedState {
  readonly kind = 'redis';
  readonly #commands: Redis | Cluster;
  readonly #subscriber: RedisSubscriber;
  readonly #prefix: string;
  readonly #timeoutMs: number;
  #closed = false;

  constructor(options: RedisStateOptions) {
    validate(options);
    this.#prefix = options.keyPrefix ?? DEFAULT_KEY_PREFIX;
    this.#timeoutMs = options.commandTimeoutMs;
    const connectTimeoutMs = options.connectTimeoutMs ?? 1000;
    const maxDelayMs = options.maxReconnectDelayMs ?? 1000;
    // Exponential from 50 ms, capped, with jitter so that replicas do not reconnect in lockstep.
    const backoff = (attempt: number): number =>
      Math.min(maxDelayMs, 50 * 2 ** Math.min(attempt - 1, 16)) + Math.floor(Math.random() * 50);
    const onError = options.onError ?? ((): void => undefined);

    const connection: RedisOptions = {
      connectTimeout: connectTimeoutMs,
      commandTimeout: options.commandTimeoutMs,
      // Destroys a socket that stops answering while commands are outstanding, so a silently dead
      // connection is replaced instead of timing out every command forever.
      socketTimeout: Math.max(2 * options.commandTimeoutMs, 1000),
      enableOfflineQueue: false,
      // A command caught by a connection loss is resent once after reconnecting (an idle connection
      // closed by a proxy should not fail a request); its deadline still holds.
      maxRetriesPerRequest: 1,
      connectionName: 'mcp-ext-proc',
    };

    let connectSubscriber: () => Redis;
    if (options.clusterNodes !== undefined) {
      const seeds = options.clusterNodes;
      const common = { ...connection, ...credentialsOf(options), ...(options.tls === true ? { tls: {} } : {}) };
      const { enableOfflineQueue: _offline, ...nodeOptions } = common;
      const clusterOptions: ClusterOptions = {
        enableOfflineQueue: false,
        clusterRetryStrategy: backoff,
        slotsRefreshTimeout: connectTimeoutMs,
        // ioredis retries a command across MOVED/failover this many times; the deadline bounds it anyway.
        maxRedirections: 6,
        retryDelayOnFailover: 100,
        retryDelayOnClusterDown: 100,
        retryDelayOnTryAgain: 100,
        redisOptions: nodeOptions,
      };
      const cluster = new Cluster(seeds.map((n) => ({ host: n.host, port: n.port })), clusterOptions);
      cluster.on('node error', (err: unknown) => {
        onError(err, 'commands');
      });
      this.#commands = cluster;
      // Each subscriber connection goes to the next known node: a classic PUBLISH reaches every node.
      let next = 0;
      connectSubscriber = () => {
        const known = cluster.nodes('all').map((r) => ({ host: r.options.host ?? '', port: r.options.port ?? 0 }));
        const candidates = known.length > 0 ? known : seeds;
        const node = candidates[next++ % candidates.length] ?? seeds[0] ?? { host: '127.0.0.1', port: 6379 };
        return new Redis({ ...subscriberOptions(common), host: node.host, port: node.port });
      };
    } else if (options.sentinels !== undefined) {
      const sentinel: RedisOptions = {
        ...connection,
        ...credentialsOf(options),
        sentinels: options.sentinels.map((n) => ({ host: n.host, port: n.port })),
        name: options.sentinelName ?? '',
        db: options.db ?? 0,
        // Learn of a failover from the sentinels' +switch-master at once, not from the next failed command.
        failoverDetector: true,
        ...(options.tls === true ? { tls: {}, sentinelTLS: {}, enableTLSForSentinelMode: true } : {}),
      };
      this.#commands = new Redis({ ...sentinel, retryStrategy: backoff });
      connectSubscriber = () => new Redis({ ...subscriberOptions(sentinel), failoverDetector: false });
    } else {
      const target = standaloneTarget(options);
      const standalone: RedisOptions = {
        ...connection,
        host: target.host,
        port: target.port,
        db: target.db ?? 0,
        ...(target.username === undefined ? {} : { username: target.username }),
        ...(target.password === undefined ? {} : { password: target.password }),
        ...(target.tls ? { tls: {} } : {}),
      };
      this.#commands = new Redis({ ...standalone, retryStrategy: backoff });
      connectSubscriber = () => new Redis(subscriberOptions(standalone));
    }
    // Without an 'error' listener ioredis prints every connection error to the console.
    this.#commands.on('error', (err: unknown) => {
      onError(err, 'commands');
    });

    this.#subscriber = new RedisSubscriber({
      connect: connectSubscriber,
      reconnectDelayMs: backoff,
      pingIntervalMs: options.pingIntervalMs ?? 5000,
      onError: (err) => {
        onError(err, 'subscriber');
      },
    });
  }

  get(key: string): Promise<string | undefined> {
    return this.#run('GET', async () => (await this.#commands.get(this.#prefix + key)) ?? undefined);
  }

  set(key: string, value: string, ttlSeconds: number): Promise<void> {
    // Every key expires: shared state is a cache of facts with a lifetime, never a store of record.
    if (!Number.isFinite(ttlSeconds) || ttlSeconds <= 0) {
      return Promise.reject(new RangeError(`ttlSeconds must be a positive number (got ${ttlSeconds}) for key ${key}`));
    }
    const ttlMs = Math.max(1, Math.round(ttlSeconds * 1000));
    return this.#run('SET', async () => {
      await this.#commands.set(this.#prefix + key, value, 'PX', ttlMs);
    });
  }

  delete(key: string): Promise<void> {
    return this.#run('DEL', async () => {
      await this.#commands.del(this.#prefix + key);
    });
  }

  setIfAbsent(key: string, value: string, ttlSeconds: number): Promise<boolean> {
    const ttlMs = Math.max(1, Math.round(ttlSeconds * 1000));
    return this.#run('SET', async () => (await this.#commands.set(this.#prefix + key, value, 'PX', ttlMs, 'NX')) === 'OK');
  }

  keysWithPrefix(prefix: string, limit = Number.POSITIVE_INFINITY): Promise<string[]> {
    return this.#scan(`${escapeGlob(this.#prefix + prefix)}*`, limit);
  }

  keysMatching(pattern: string, limit = Number.POSITIVE_INFINITY): Promise<string[]> {
    return this.#scan(escapeGlob(this.#prefix) + pattern, limit);
  }

  async #scan(pattern: string, limit: number): Promise<string[]> {
    const nodes = this.#commands instanceof Cluster ? this.#commands.nodes('master') : [this.#commands];
    if (nodes.length === 0) {
      throw new GatewayError('ERR_STATE_UNAVAILABLE', 'shared state (Redis) is unavailable: no cluster node is known');
    }
    const found = new Set<string>();
    // SCAN walks one node's keyspace; in a cluster each master holds its own share.
    for (const node of nodes) {
      let cursor = '0';
      do {
        const [nextCursor, batch] = await this.#run('SCAN', () => node.scan(cursor, 'MATCH', pattern, 'COUNT', 1000));
        cursor = nextCursor;
        for (const key of batch) {
          found.add(key.slice(this.#prefix.length));
          if (found.size >= limit) return [...found];
        }
      } while (cursor !== '0');
    }
    return [...found];
  }

  publish(channel: string, message: string): Promise<void> {
    return this.#run('PUBLISH', async () => {
      await this.#commands.publish(this.#prefix + channel, message);
    });
  }

  subscribe(channel: string, handler: MessageHandler, options?: SubscribeOptions): Promise<Unsubscribe> {
    if (this.#closed) return Promise.reject(new GatewayError('ERR_STATE_UNAVAILABLE', 'shared state (Redis) is closed'));
    return this.#subscriber.subscribe(this.#prefix + channel, handler, options);
  }

  /** Commands can be sent and the subscriptions are in place. */
  healthy(): boolean {
    return !this.#closed && this.#commands.status === 'ready' && this.#subscriber.healthy();
  }

  /** Resolves true once the command connection is ready, false if it is not within `timeoutMs`. */
  whenReady(timeoutMs: number): Promise<boolean> {
    const commands = this.#commands;
    if (commands.status === 'ready') return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (ready: boolean): void => {
        clearTimeout(timer);
        commands.off('ready', onReady);
        resolve(ready);
      };
      const onReady = (): void => {
        done(true);
      };
      const timer = setTimeout(() => {
        done(false);
      }, timeoutMs);
      commands.on('ready', onReady);
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#subscriber.close();
    if (this.#commands.status === 'ready') {
      // QUIT lets replies in flight arrive; bounded, since the server may be gone.
      await withDeadline(this.#commands.quit(), this.#timeoutMs).catch(() => undefined);
    }
    this.#commands.disconnect();
  }

  async #run<T>(op: string, command: () => Promise<T>): Promise<T> {
    if (this.#closed) throw new GatewayError('ERR_STATE_UNAVAILABLE', 'shared state (Redis) is closed');
    try {
      return await withDeadline(command(), this.#timeoutMs);
    } catch (err) {
      // The detail (connection refused, timeout, which node) is in `cause`, for the log; the message is
      // what a client may see.
      throw new GatewayError('ERR_STATE_UNAVAILABLE', `shared state (Redis) is unavailable: ${op} failed`, { cause: err });
    }
  }
}

function withDeadline<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => {
      reject(new Error(`no reply from Redis within ${ms} ms`));
    }, ms);
  });
  return Promise.race([promise, deadline]).finally(() => {
    clearTimeout(timer);
  });
}

/** Options of a subscriber connection: ours to reconnect (see pubsub.ts), never queueing. */
function subscriberOptions(base: RedisOptions): RedisOptions {
  return {
    ...base,
    connectionName: 'mcp-ext-proc:subscriber',
    retryStrategy: null,
    autoResubscribe: false,
    maxRetriesPerRequest: 0,
  };
}

function credentialsOf(settings: RedisConnectionSettings): { username?: string; password?: string } {
  return {
    ...(settings.username === undefined ? {} : { username: settings.username }),
    ...(settings.password === undefined ? {} : { password: settings.password }),
  };
}

interface StandaloneTarget extends RedisNode {
  readonly db: number | undefined;
  readonly username: string | undefined;
  readonly password: string | undefined;
  readonly tls: boolean;
}

function standaloneTarget(settings: RedisConnectionSettings): StandaloneTarget {
  const url = settings.url ?? '';
  const parsed = parseUrl(url);
  const node = parsed.nodes[0];
  if (node === undefined || parsed.nodes.length !== 1 || (parsed.scheme !== 'redis' && parsed.scheme !== 'rediss')) {
    throw new Error(`invalid Redis URL ${JSON.stringify(redactUrl(url))}: url is for a standalone server (redis:// or rediss://, one host)`);
  }
  const fail = (why: string): never => {
    throw new Error(`invalid Redis URL ${JSON.stringify(redactUrl(url))}: ${why}`);
  };
  const dbSegment = parsed.path[0];
  return {
    host: node.host,
    port: node.port,
    db: settings.db ?? (dbSegment === undefined ? undefined : parseDb(dbSegment, fail)),
    username: settings.username ?? parsed.username,
    password: settings.password ?? parsed.password,
    tls: settings.tls ?? parsed.scheme === 'rediss',
  };
}

function validate(options: RedisStateOptions): void {
  const given = [options.url, options.sentinels, options.clusterNodes].filter((v) => v !== undefined).length;
  if (given !== 1) {
    throw new Error('Redis settings: give exactly one of url (standalone), sentinels (with sentinelName) or clusterNodes');
  }
  if (options.sentinels !== undefined) {
    if (options.sentinels.length === 0) throw new Error('Redis settings: sentinels is empty');
    if (options.sentinelName === undefined || options.sentinelName === '') {
      throw new Error('Redis settings: sentinelName (the monitored master name) is required with sentinels');
    }
  }
  if (options.clusterNodes?.length === 0) throw new Error('Redis settings: clusterNodes is empty');
  if (options.clusterNodes !== undefined && options.db !== undefined && options.db !== 0) {
    throw new Error('Redis settings: db must be 0 with clusterNodes (a cluster has only database 0)');
  }
  if (options.url !== undefined) standaloneTarget(options);
  const positive = (name: string, value: number | undefined): void => {
    if (value !== undefined && !(Number.isFinite(value) && value > 0)) {
      throw new Error(`Redis settings: ${name} must be a positive number of milliseconds (got ${value})`);
    }
  };
  positive('commandTimeoutMs', options.commandTimeoutMs);
  positive('connectTimeoutMs', options.connectTimeoutMs);
  positive('maxReconnectDelayMs', options.maxReconnectDelayMs);
  positive('pingIntervalMs', options.pingIntervalMs);
}

// scheme://[userinfo@]host[:port][,host[:port]…][/path][?query]. Not WHATWG URL: it takes one host only,
// and a list of hosts is the point of the sentinel and cluster forms.
function parseUrl(urlLike: string): ParsedUrl {
  const fail = (why: string): never => {
    throw new Error(`invalid Redis URL ${JSON.stringify(redactUrl(urlLike))}: ${why}`);
  };
  const match = /^([a-z][a-z0-9+.-]*):\/\/([^/?#]*)([^?#]*)(\?[^#]*)?(#.*)?$/i.exec(urlLike.trim());
  if (match === null) return fail(`expected scheme://host:port, with scheme one of ${schemes.join(', ')}`);
  const [, rawScheme = '', authority = '', rawPath = '', query, fragment] = match;
  const scheme = schemes.find((s) => s === rawScheme.toLowerCase());
  if (scheme === undefined) return fail(`unknown scheme "${rawScheme}" (expected one of ${schemes.join(', ')})`);
  if (query !== undefined || fragment !== undefined) fail('query parameters and fragments are not supported');

  const at = authority.lastIndexOf('@');
  const userinfo = at === -1 ? undefined : authority.slice(0, at);
  const hostList = at === -1 ? authority : authority.slice(at + 1);
  let username: string | undefined;
  let password: string | undefined;
  if (userinfo !== undefined) {
    const colon = userinfo.indexOf(':');
    const user = colon === -1 ? userinfo : userinfo.slice(0, colon);
    username = user === '' ? undefined : decode(user, fail);
    password = colon === -1 ? undefined : decode(userinfo.slice(colon + 1), fail);
  }

  const defaultPort = scheme.endsWith('sentinel') ? 26379 : 6379;
  if (hostList === '') fail('no host');
  const nodes = hostList.split(',').map((entry): RedisNode => {
    const hostPort = /^(?:\[([0-9a-f:.]+)\]|([^:[\]]+))(?::(\d+))?$/i.exec(entry);
    if (hostPort === null) return fail(`"${entry}" is not host, host:port or [ipv6]:port`);
    const [, ipv6, name, port] = hostPort;
    const portNumber = port === undefined ? defaultPort : Number(port);
    if (!Number.isInteger(portNumber) || portNumber < 1 || portNumber > 65535) fail(`port ${port ?? ''} is out of range`);
    return { host: ipv6 ?? name ?? '', port: portNumber };
  });
  const path = rawPath.split('/').filter((s) => s !== '').map((s) => decode(s, fail));
  return { scheme, username, password, nodes, path };
}

function parseDb(segment: string | undefined, fail: (why: string) => never): number {
  const db = Number(segment);
  if (segment === undefined || !/^\d+$/.test(segment) || !Number.isSafeInteger(db)) {
    return fail(`database "${segment ?? ''}" is not a non-negative integer`);
  }
  return db;
}

function decode(part: string, fail: (why: string) => never): string {
  try {
    return decodeURIComponent(part);
  } catch {
    return fail('bad percent-encoding');
  }
}

/** The URL with any password replaced by "***", for error messages and logs. */
function redactUrl(urlLike: string): string {
  return urlLike.replace(/^([^:/]+:\/\/[^:@/]*:)[^/]*@/, '$1***@');
}

function formatNode(node: RedisNode): string {
  return node.host.includes(':') ? `[${node.host}]:${node.port}` : `${node.host}:${node.port}`;
}

// SCAN MATCH is a glob: a prefix containing *, ?, [ or \ must match itself only.
function escapeGlob(text: string): string {
  return text.replace(/[*?[\]\\]/g, '\\$&');
}
