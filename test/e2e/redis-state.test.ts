// Shared state in a real Valkey (no mocks): the key/value and pub/sub contract of RedisState, revocation
// across two replicas (two RedisState connections), what happens while Valkey is down, frozen, and back,
// and the three deployments one --redis-url setting covers (standalone, Sentinel, Cluster).

import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { GatewayError } from '../../ext-proc/src/errors.ts';
import type { Caller } from '../../ext-proc/src/identity/principal.ts';
import { Revocations } from '../../ext-proc/src/identity/revocation.ts';
import {
  createRedisState,
  describeRedisSettings,
  parseRedisSettings,
  type RedisConnectionSettings,
  type RedisState,
  type RedisStateOptions,
} from '../../ext-proc/src/state/redis.ts';
import { freePort, ping, startValkey, type ValkeyInstance } from '../support/valkey.ts';
import { spawnManaged, valkeyServerBinary, type ManagedProcess } from '../support/tools.ts';

const COMMAND_TIMEOUT_MS = 500;

/** Resources made by a test, released after it whatever happened. */
const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => undefined);
});

/** A valkey-server on a given port (startValkey picks its own), so one can be restarted where it was. */
async function valkeyOn(port: number, extraArgs: readonly string[] = [], dir?: string): Promise<ManagedProcess> {
  const workDir = dir ?? (await mkdtemp(path.join(tmpdir(), 'mcp-ext-proc-valkey-')));
  const proc = spawnManaged(valkeyServerBinary(), [
    '--port', String(port), '--bind', '127.0.0.1', '--dir', workDir, '--save', '', '--appendonly', 'no', ...extraArgs,
  ]);
  cleanups.push(async () => {
    await proc.stop(1000);
    if (dir === undefined) await rm(workDir, { recursive: true, force: true });
  });
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline && !proc.hasExited()) {
    if ((await ping(port).catch(() => undefined)) === '+PONG') return proc;
    await sleep(25);
  }
  throw new Error(`valkey-server did not answer on port ${port}:\n${proc.output().slice(-2000)}`);
}

function disconnecting(client: Redis): () => Promise<void> {
  return () => {
    client.disconnect();
    return Promise.resolve();
  };
}

async function until(what: string, condition: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await condition()) return;
    await sleep(20);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting until ${what}`);
}

const errorsSeen: unknown[] = [];
let prefixCounter = 0;

/** A RedisState closed after the test; each test gets its own key prefix unless it passes one. */
async function open(settings: RedisConnectionSettings, extra: Partial<RedisStateOptions> = {}): Promise<RedisState> {
  const state = await createRedisState({
    keyPrefix: `test-${process.pid}-${++prefixCounter}:`,
    commandTimeoutMs: COMMAND_TIMEOUT_MS,
    onError: (err) => errorsSeen.push(err),
    ...settings,
    ...extra,
  });
  cleanups.push(() => state.close());
  return state;
}

async function failure(p: Promise<unknown>): Promise<GatewayError> {
  const err: unknown = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(err instanceof GatewayError)) throw new Error(`expected a GatewayError, got ${String(err)}`);
  return err;
}

/** The error code a check is refused with, or undefined when it passes (for polling). */
async function refusedWith(p: Promise<unknown>): Promise<string | undefined> {
  return p.then(
    () => undefined,
    (e: unknown) => (e instanceof GatewayError ? e.code : String(e)),
  );
}

async function timed<T>(p: Promise<T>): Promise<{ ms: number; result: PromiseSettledResult<T> }> {
  const start = performance.now();
  const [result] = await Promise.allSettled([p]);
  return { ms: performance.now() - start, result: result as PromiseSettledResult<T> };
}

const ISSUER = 'https://idp.example.com';
function caller(subject: string, o: { jti?: string; clientId?: string } = {}): Caller {
  const now = Math.floor(Date.now() / 1000);
  const clientId = o.clientId ?? 'claude-desktop';
  return {
    user: {
      issuerName: 'corp',
      issuer: ISSUER,
      subject,
      email: undefined,
      groups: [],
      scopes: [],
      tokenId: o.jti,
      issuedAt: now - 60,
      expiresAt: now + 3600,
      claims: {},
    },
    agent: { clientId, spiffeId: undefined, id: clientId },
  };
}

describe('RedisState on a standalone Valkey', () => {
  let valkey: ValkeyInstance;
  let raw: Redis;
  beforeAll(async () => {
    valkey = await startValkey();
    raw = new Redis(valkey.port, '127.0.0.1');
  });
  afterAll(async () => {
    raw.disconnect();
    await valkey.stop();
  });

  it('gets, sets with a TTL under the key prefix, expires and deletes', async () => {
    const state = await open({ url: valkey.url }, { keyPrefix: 'kv-test:' });
    expect(state.kind).toBe('redis');
    expect(state.healthy()).toBe(true);
    expect(await state.get('missing')).toBeUndefined();

    await state.set('greeting', 'hello', 60);
    expect(await state.get('greeting')).toBe('hello');
    // Namespaced and expiring, as stored.
    expect(await raw.get('kv-test:greeting')).toBe('hello');
    const ttl = await raw.pttl('kv-test:greeting');
    expect(ttl).toBeGreaterThan(59_000);
    expect(ttl).toBeLessThanOrEqual(60_000);

    await state.set('short', 'lived', 0.3);
    expect(await state.get('short')).toBe('lived');
    await sleep(450);
    expect(await state.get('short')).toBeUndefined();

    await state.delete('greeting');
    expect(await state.get('greeting')).toBeUndefined();
    await expect(state.set('forever', 'x', 0)).rejects.toThrow('ttlSeconds must be a positive number (got 0) for key forever');
  });

  it('lists keys by prefix, and sees nothing of another key prefix', async () => {
    const a = await open({ url: valkey.url }, { keyPrefix: 'list-a[1]*:' });
    const b = await open({ url: valkey.url }, { keyPrefix: 'list-a[2]*:' });
    for (let i = 0; i < 25; i++) await a.set(`mcp:rev:token:${i}`, 'x', 60);
    await a.set('mcp:other', 'x', 60);
    await b.set('mcp:rev:token:b', 'x', 60);
    const listed = await a.keysWithPrefix('mcp:rev:');
    expect(listed).toHaveLength(25);
    expect(listed).toContain('mcp:rev:token:7');
    expect(await a.keysWithPrefix('mcp:rev:', 10)).toHaveLength(10);
    expect(await b.keysWithPrefix('mcp:')).toEqual(['mcp:rev:token:b']);
  });

  it('delivers pub/sub messages between two connections, under the key prefix, until unsubscribed', async () => {
    const a = await open({ url: valkey.url }, { keyPrefix: 'ps:' });
    const b = await open({ url: valkey.url }, { keyPrefix: 'ps:' });
    const got: string[] = [];
    const unsubscribe = await a.subscribe('news', (m) => got.push(m));
    // subscribe() registers at once; the subscriber connection may still be connecting (it subscribes
    // when ready), so wait for that before publishing.
    await until('the subscriber is in place', () => a.healthy(), 2000);
    const rawGot: string[] = [];
    const rawSub = new Redis(valkey.port, '127.0.0.1');
    cleanups.push(disconnecting(rawSub));
    rawSub.on('message', (_channel: string, m: string) => rawGot.push(m));
    await rawSub.subscribe('ps:news');

    await b.publish('news', 'one');
    await b.publish('news', 'two');
    await until('both messages arrived', () => got.length === 2 && rawGot.length === 2, 2000);
    expect(got).toEqual(['one', 'two']);
    expect(rawGot).toEqual(['one', 'two']);

    await unsubscribe();
    await b.publish('news', 'three');
    await until('the raw subscriber got the third', () => rawGot.length === 3, 2000);
    await sleep(50);
    expect(got).toEqual(['one', 'two']);
  });

  it('enforces a revocation made through one replica on the other within 1 s', async () => {
    const prefix = `rev-${process.pid}:`;
    const replicaA = new Revocations(await open({ url: valkey.url }, { keyPrefix: prefix }));
    const replicaB = new Revocations(await open({ url: valkey.url }, { keyPrefix: prefix }));
    await Promise.all([replicaA.ready(), replicaB.ready()]);
    const alice = caller('alice', { jti: 'tok-alice' });
    // B has answered "not revoked" and cached it: only the announcement can make it look again.
    await expect(replicaB.check(alice)).resolves.toEqual({ checked: true });

    const start = performance.now();
    await replicaA.revoke({ kind: 'subject', issuer: ISSUER, subject: 'alice' });
    let delayMs: number | undefined;
    let last: unknown;
    while (performance.now() - start < 5000) {
      try {
        await replicaB.check(alice);
      } catch (err) {
        last = err;
        if (err instanceof GatewayError && err.code === 'ERR_IDENTITY_REVOKED') {
          delayMs = performance.now() - start;
          break;
        }
      }
      await sleep(2);
    }
    console.info(`[redis-state] cross-replica revocation delay: ${delayMs?.toFixed(1) ?? 'never'} ms (revoke() on A → check() refused on B)`);
    expect(delayMs, `B never refused alice (last error: ${String(last)})`).toBeDefined();
    expect(delayMs).toBeLessThan(1000);
    expect((await failure(replicaB.check(alice))).message).toMatch(/^the subject "alice" \(issuer "https:\/\/idp\.example\.com"\) has been revoked/);

    // Token and agent revocations travel the same way; the listing sees all three.
    await replicaB.check(caller('bob', { jti: 'tok-bob', clientId: 'bot' }));
    await replicaA.revoke({ kind: 'token', tokenId: 'tok-bob', expiresAt: Math.floor(Date.now() / 1000) + 600 });
    await until('B refuses the token', async () => (await refusedWith(replicaB.check(caller('bob', { jti: 'tok-bob' })))) === 'ERR_IDENTITY_REVOKED', 1000);
    await replicaB.revoke({ kind: 'agent', agentId: 'bot' });
    await until('A refuses the agent', async () => (await refusedWith(replicaA.check(caller('carol', { clientId: 'bot' })))) === 'ERR_IDENTITY_REVOKED', 1000);
    const listed = await replicaA.list();
    expect(listed.map((r) => r.kind)).toEqual(['agent', 'token', 'subject']);
    await Promise.all([replicaA.close(), replicaB.close()]);
  });

  it('rejects a call to a frozen Redis within the command timeout', async () => {
    const port = await freePort();
    const proc = await valkeyOn(port);
    const state = await open({ url: `redis://127.0.0.1:${port}` });
    await state.set('k', 'v', 60);
    proc.child.kill('SIGSTOP'); // the connection stays up, nothing answers
    cleanups.push(() => {
      proc.child.kill('SIGCONT');
      return Promise.resolve();
    });
    const { ms, result } = await timed(state.get('k'));
    expect(result.status).toBe('rejected');
    if (result.status === 'rejected') expect((result.reason as GatewayError).code).toBe('ERR_STATE_UNAVAILABLE');
    expect(ms).toBeGreaterThanOrEqual(COMMAND_TIMEOUT_MS - 50);
    expect(ms).toBeLessThan(COMMAND_TIMEOUT_MS + 300);
    proc.child.kill('SIGCONT');
    await until('the store answers again', async () => (await state.get('k').catch(() => undefined)) === 'v');
  });
});

describe('Revocations through a Valkey outage', () => {
  it('answers from cache while Valkey is down, fails cold checks closed (or open), and recovers on restart', async () => {
    const port = await freePort();
    const dir = await mkdtemp(path.join(tmpdir(), 'mcp-ext-proc-valkey-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const first = await valkeyOn(port, [], dir);
    const url = `redis://127.0.0.1:${port}`;
    const stateA = await open({ url }, { keyPrefix: 'outage:' });
    const stateB = await open({ url }, { keyPrefix: 'outage:' });
    const replicaA = new Revocations(stateA);
    const replicaB = new Revocations(stateB);
    const replicaBOpen = new Revocations(stateB, { failureMode: 'open' });
    await Promise.all([replicaA.ready(), replicaB.ready(), replicaBOpen.ready()]);
    await until('both stores are healthy', () => stateA.healthy() && stateB.healthy());

    const alice = caller('alice', { jti: 'tok-alice' });
    await expect(replicaB.check(alice)).resolves.toEqual({ checked: true }); // warm: "not revoked" cached

    await first.stop(1000);
    await until('B reports the outage', () => !stateB.healthy(), 5000);

    // Warm: answered from the local cache, without Redis.
    const warm = await timed(replicaB.check(alice));
    expect(warm.result).toEqual({ status: 'fulfilled', value: { checked: true } });

    // Cold, closed: refused quickly with ERR_STATE_UNAVAILABLE.
    const bob = caller('bob', { jti: 'tok-bob' });
    const cold = await timed(replicaB.check(bob));
    expect(cold.result.status).toBe('rejected');
    if (cold.result.status === 'rejected') {
      expect((cold.result.reason as GatewayError).code).toBe('ERR_STATE_UNAVAILABLE');
      expect((cold.result.reason as GatewayError).message).toBe('could not check whether the token is revoked: shared state is unavailable');
    }
    expect(cold.ms).toBeLessThan(COMMAND_TIMEOUT_MS);
    console.info(`[redis-state] with Valkey down: warm check ${warm.ms.toFixed(1)} ms, cold check refused in ${cold.ms.toFixed(1)} ms`);

    // Cold, open: let through, saying it was not checked.
    const opened = await replicaBOpen.check(bob);
    expect(opened.checked).toBe(false);
    // A revocation cannot be recorded: the admin hears so.
    expect((await failure(replicaA.revoke({ kind: 'subject', issuer: ISSUER, subject: 'bob' }))).code).toBe('ERR_STATE_UNAVAILABLE');

    // Back on the same port (empty: this test Valkey keeps no data).
    await valkeyOn(port, [], dir);
    const back = performance.now();
    await until('both stores are healthy again', () => stateA.healthy() && stateB.healthy());
    console.info(`[redis-state] stores healthy ${(performance.now() - back).toFixed(0)} ms after Valkey restarted`);
    await expect(replicaB.check(bob)).resolves.toEqual({ checked: true });

    // Pub/sub was re-established: a revocation through A reaches B's warm cache again.
    await expect(replicaB.check(alice)).resolves.toEqual({ checked: true });
    await replicaA.revoke({ kind: 'subject', issuer: ISSUER, subject: 'alice' });
    await until('B refuses alice', async () => (await refusedWith(replicaB.check(alice))) === 'ERR_IDENTITY_REVOKED', 1000);
    await Promise.all([replicaA.close(), replicaB.close(), replicaBOpen.close()]);
  });

  it('starts while Valkey is down, refuses at once, and catches up when it comes up', async () => {
    const port = await freePort();
    const url = `redis://127.0.0.1:${port}`;
    const started = performance.now();
    const state = await open({ url }, { keyPrefix: 'late:', connectTimeoutMs: 300 });
    expect(performance.now() - started).toBeLessThan(1000);
    expect(state.healthy()).toBe(false);
    const replica = new Revocations(state);
    const { ms, result } = await timed(replica.check(caller('alice')));
    expect(result.status).toBe('rejected');
    expect(ms).toBeLessThan(COMMAND_TIMEOUT_MS);

    await valkeyOn(port);
    await until('the store is healthy', () => state.healthy());
    await expect(replica.check(caller('alice'))).resolves.toEqual({ checked: true });
    // Its subscription was made while Valkey was away, and is in place now.
    const other = new Revocations(await open({ url }, { keyPrefix: 'late:' }));
    await other.revoke({ kind: 'subject', issuer: ISSUER, subject: 'alice' });
    await until('the late starter refuses alice', async () => (await refusedWith(replica.check(caller('alice')))) === 'ERR_IDENTITY_REVOKED', 1000);
    await Promise.all([replica.close(), other.close()]);
  });

  it('drops a replica\'s cache when its subscriber reconnects, so revocations made meanwhile are seen', async () => {
    const valkey = await startValkey();
    cleanups.push(() => valkey.stop());
    const admin = new Redis(valkey.port, '127.0.0.1');
    cleanups.push(disconnecting(admin));
    const stateA = await open({ url: valkey.url }, { keyPrefix: 'gap:' });
    const stateB = await open({ url: valkey.url }, { keyPrefix: 'gap:' });
    const replicaA = new Revocations(stateA);
    const replicaB = new Revocations(stateB, { negativeCacheTtlSeconds: 3600 });
    await Promise.all([replicaA.ready(), replicaB.ready()]);
    await until('B is subscribed', () => stateB.healthy());
    const alice = caller('alice');
    await replicaB.check(alice);

    // Cut B's subscriber connection off, then revoke while it is away: B misses the message.
    await admin.call('CLIENT', 'KILL', 'TYPE', 'pubsub');
    await replicaA.revoke({ kind: 'subject', issuer: ISSUER, subject: 'alice' });
    await until('B refuses alice after resubscribing', async () => (await refusedWith(replicaB.check(alice))) === 'ERR_IDENTITY_REVOKED', 3000);
    await Promise.all([replicaA.close(), replicaB.close()]);
  });
});

describe('RedisState on Sentinel and Cluster', () => {
  it('works through Sentinel (redis-sentinel://…/mastername)', async () => {
    const master = await startValkey();
    cleanups.push(() => master.stop());
    const sentinelPort = await freePort();
    const dir = await mkdtemp(path.join(tmpdir(), 'mcp-ext-proc-sentinel-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const conf = path.join(dir, 'sentinel.conf');
    await writeFile(
      conf,
      [
        `port ${sentinelPort}`,
        'bind 127.0.0.1',
        `dir ${dir}`,
        `sentinel monitor mymaster 127.0.0.1 ${master.port} 1`,
        'sentinel down-after-milliseconds mymaster 1000',
        '',
      ].join('\n'),
    );
    const sentinel = spawnManaged(valkeyServerBinary(), [conf, '--sentinel']);
    cleanups.push(() => sentinel.stop(1000));
    await until('the sentinel answers', async () => (await ping(sentinelPort).catch(() => undefined)) === '+PONG');

    const settings = parseRedisSettings(`redis-sentinel://127.0.0.1:${sentinelPort}/mymaster`);
    const a = await open(settings, { keyPrefix: 'sentinel:' });
    const b = await open(settings, { keyPrefix: 'sentinel:' });
    await a.set('k', 'v', 60);
    expect(await b.get('k')).toBe('v');
    const got: string[] = [];
    await a.subscribe('c', (m) => got.push(m));
    await until('A is subscribed', () => a.healthy());
    await b.publish('c', 'hello');
    await until('the message arrived', () => got.length === 1, 2000);
    // It really went to the master the sentinel named.
    const raw = new Redis(master.port, '127.0.0.1');
    cleanups.push(disconnecting(raw));
    expect(await raw.get('sentinel:k')).toBe('v');
  });

  it('works on a Cluster (redis-cluster://…), pub/sub included', async () => {
    const port = await freePort();
    const dir = await mkdtemp(path.join(tmpdir(), 'mcp-ext-proc-cluster-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    await valkeyOn(port, ['--cluster-enabled', 'yes', '--cluster-announce-ip', '127.0.0.1', '--cluster-config-file', path.join(dir, 'nodes.conf')], dir);
    // A one-node cluster holding every slot.
    const raw = new Redis(port, '127.0.0.1');
    cleanups.push(disconnecting(raw));
    await raw.call('CLUSTER', 'ADDSLOTSRANGE', '0', '16383');
    await until('the cluster is up', async () => String(await raw.call('CLUSTER', 'INFO')).includes('cluster_state:ok'));

    const settings = parseRedisSettings(`redis-cluster://127.0.0.1:${port}`);
    const a = await open(settings, { keyPrefix: 'cluster:' });
    const b = await open(settings, { keyPrefix: 'cluster:' });
    await until('the cluster client is ready', () => a.healthy() && b.healthy());
    for (const k of ['k1', 'k2', 'k3']) await a.set(k, k.toUpperCase(), 60);
    expect(await b.get('k2')).toBe('K2');
    expect((await b.keysWithPrefix('k')).sort()).toEqual(['k1', 'k2', 'k3']);

    const replicaA = new Revocations(a);
    const replicaB = new Revocations(b);
    await Promise.all([replicaA.ready(), replicaB.ready()]);
    await until('both are subscribed', () => a.healthy() && b.healthy());
    await replicaB.check(caller('alice'));
    await replicaA.revoke({ kind: 'subject', issuer: ISSUER, subject: 'alice' });
    await until('B refuses alice', async () => (await refusedWith(replicaB.check(caller('alice')))) === 'ERR_IDENTITY_REVOKED', 1000);
    await Promise.all([replicaA.close(), replicaB.close()]);
  });
});

describe('parseRedisSettings', () => {
  const cases: [string, RedisConnectionSettings][] = [
    ['redis://127.0.0.1:6379/2', { url: 'redis://127.0.0.1:6379/2' }],
    ['rediss://user:p%40ss@redis.internal', { url: 'rediss://user:p%40ss@redis.internal' }],
    [
      'redis-sentinel://s1:26379,s2/mymaster',
      { sentinels: [{ host: 's1', port: 26379 }, { host: 's2', port: 26379 }], sentinelName: 'mymaster', tls: false },
    ],
    [
      'rediss-sentinel://:s%3Acret@s1:5000,[::1]:5001/my%20master/3',
      {
        sentinels: [{ host: 's1', port: 5000 }, { host: '::1', port: 5001 }],
        sentinelName: 'my master',
        db: 3,
        password: 's:cret',
        tls: true,
      },
    ],
    [
      'redis-cluster://app:pw@n1:7000,n2:7001,n3',
      {
        clusterNodes: [{ host: 'n1', port: 7000 }, { host: 'n2', port: 7001 }, { host: 'n3', port: 6379 }],
        username: 'app',
        password: 'pw',
        tls: false,
      },
    ],
    ['rediss-cluster://n1:7000/', { clusterNodes: [{ host: 'n1', port: 7000 }], tls: true }],
  ];
  it.each(cases)('parses %s', (input, expected) => {
    expect(parseRedisSettings(input)).toEqual(expected);
  });

  const errors: [string, string][] = [
    ['http://h:1', 'invalid Redis URL "http://h:1": unknown scheme "http" (expected one of redis, rediss, redis-sentinel, rediss-sentinel, redis-cluster, rediss-cluster)'],
    ['localhost:6379', 'invalid Redis URL "localhost:6379": expected scheme://host:port'],
    ['redis://h1,h2', 'a standalone URL names exactly one host'],
    ['redis://h:99999', 'port 99999 is out of range'],
    ['redis://h/zero', 'database "zero" is not a non-negative integer'],
    ['redis://h?db=1', 'query parameters and fragments are not supported'],
    ['redis-sentinel://s1,s2', 'the path must name the master'],
    ['redis-sentinel://s1/m/1/x', 'the path is /mastername or /mastername/db'],
    ['redis-cluster://n1/2', 'a cluster has only database 0'],
    ['redis://', 'no host'],
  ];
  it.each(errors)('rejects %s', (input, message) => {
    expect(() => parseRedisSettings(input)).toThrow(message);
  });

  it('never repeats a password in an error or a description', () => {
    expect(() => parseRedisSettings('redis://user:hunter2@h:99999')).toThrow('invalid Redis URL "redis://user:***@h:99999"');
    expect(() => parseRedisSettings('redis://:hun@ter2@h1,h2')).toThrow('"redis://:***@h1,h2"');
    expect(describeRedisSettings(parseRedisSettings('rediss://u:hunter2@r.internal:6380/4'))).toBe('Redis standalone r.internal:6380 db 4 (TLS)');
    expect(describeRedisSettings(parseRedisSettings('redis-sentinel://:hunter2@s1,s2:1/m'))).toBe('Redis Sentinel master "m" via s1:26379,s2:1 db 0');
    expect(describeRedisSettings(parseRedisSettings('redis-cluster://[::1]:7000'))).toBe('Redis Cluster via [::1]:7000');
  });

  it('refuses settings that name no deployment, or two', async () => {
    await expect(createRedisState({ commandTimeoutMs: 500 })).rejects.toThrow(
      'Redis settings: give exactly one of url (standalone), sentinels (with sentinelName) or clusterNodes',
    );
    await expect(createRedisState({ url: 'redis://h', clusterNodes: [{ host: 'h', port: 1 }], commandTimeoutMs: 500 })).rejects.toThrow(
      'give exactly one of',
    );
    await expect(createRedisState({ sentinels: [{ host: 'h', port: 1 }], commandTimeoutMs: 500 })).rejects.toThrow(
      'sentinelName (the monitored master name) is required with sentinels',
    );
    await expect(createRedisState({ url: 'redis://h', commandTimeoutMs: 0 })).rejects.toThrow(
      'commandTimeoutMs must be a positive number of milliseconds (got 0)',
    );
  });
});
