// Token swap end to end: a real IdP (oidc-provider with an RFC 8693 grant), two Envoy + processor
// replicas sharing one Valkey, and real MCP servers that verify, with jose, whatever bearer reaches them.
// The user's token is for the gateway; every server must get a credential made for it, or none.

import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { h12 } from '../../ext-proc/src/credentials/cache.ts';
import { DEFAULT_KEY_PREFIX } from '../../ext-proc/src/state/redis.ts';
import { startIdp, TOKEN_EXCHANGE_GRANT, type Idp } from '../support/idp.ts';
import { startStreamableJsonServer, startStreamableSseServer, type McpTestServer, type ReceivedHttpRequest } from '../support/mcp-servers.ts';
import { rawExchange } from '../support/mcp-scenarios.ts';
import { startReplicas, type Replica, type Replicas } from '../support/replicas.ts';
import { startValkey, type ValkeyInstance } from '../support/valkey.ts';

const GATEWAY = (name: string): string => `https://gateway.test/${name}/mcp`;
const INTERNAL = (name: string): string => `https://mcp.internal/${name}`;
const ADMIN = 'https://gateway.test/admin';
const STATIC_SECRET = 'static-secret-for-the-static-server';
const SECRET_ENV = 'MCP_TEST_GATEWAY_CLIENT_SECRET';
const CACHE_KEYS = `k1:${Buffer.alloc(32, 7).toString('base64')}`;

const governance = (issuer: string, staticSecretFile: string): string => `
apiVersion: mcp-ext-proc/v1
identity:
  issuers: [{ name: test-idp, issuer: "${issuer}" }]
  adminGroups: [mcp-admins]
  adminAudience: ${ADMIN}
servers:
  - name: exchanged
    resource: "${GATEWAY('exchanged')}"
    credential:
      type: tokenExchange
      resource: "${INTERNAL('exchanged')}"
      scopes: [tools.call]
      client: { id: gateway, secret: { env: ${SECRET_ENV} } }
      actorTokenHeader: X-Agent-Token
      # Longer than Envoy's 2 s message_timeout: the processor asks Envoy for more time.
      timeoutMs: 2500
  - name: streamed
    resource: "${GATEWAY('streamed')}"
    credential:
      type: tokenExchange
      audience: "${INTERNAL('streamed')}"
      client: { id: gateway, authMethod: client_secret_post, secret: { env: ${SECRET_ENV} } }
  - name: service
    resource: "${GATEWAY('service')}"
    credential:
      type: clientCredentials
      resource: "${INTERNAL('service')}"
      client: { id: gateway, secret: { env: ${SECRET_ENV} } }
      userHeader: { name: X-Mcp-User, value: email }
  - name: static
    resource: "${GATEWAY('static')}"
    credential: { type: staticSecret, secret: { file: "${staticSecretFile}" } }
  - name: open
    resource: "${GATEWAY('open')}"
`;

let valkey: ValkeyInstance;
let idp: Idp;
let redis: Redis;
const servers: Record<string, McpTestServer> = {};
let replicas: Replicas;
/** Every user token handed to a client in this file: none may ever reach a server. */
const userTokens = new Set<string>();

beforeAll(async () => {
  process.env[SECRET_ENV] = 'gateway-secret';
  const dir = mkdtempSync(path.join(tmpdir(), 'mcp-ext-proc-secret-'));
  const secretFile = path.join(dir, 'static-secret');
  writeFileSync(secretFile, `${STATIC_SECRET}\n`);
  [valkey, idp] = await Promise.all([startValkey(), startIdp()]);
  const verify = (name: string): { jwksUri: string; issuer: string; audience: string } => ({ jwksUri: idp.jwksUri, issuer: idp.issuer, audience: INTERNAL(name) });
  [servers['exchanged'], servers['streamed'], servers['service'], servers['static'], servers['open']] = await Promise.all([
    startStreamableJsonServer({ pathPrefix: '/exchanged', verifyTokens: verify('exchanged') }),
    startStreamableSseServer({ pathPrefix: '/streamed', verifyTokens: verify('streamed') }),
    startStreamableJsonServer({ pathPrefix: '/service', verifyTokens: verify('service') }),
    startStreamableJsonServer({ pathPrefix: '/static', requireBearer: `Bearer ${STATIC_SECRET}` }),
    startStreamableJsonServer({ pathPrefix: '/open' }),
  ]);
  redis = new Redis(valkey.url, { lazyConnect: true });
  // Valkey is stopped on purpose near the end; the reconnect attempts that follow are expected.
  redis.on('error', () => undefined);
  await redis.connect();
  replicas = await startReplicas(
    2,
    governance(idp.issuer, secretFile),
    { redisUrl: valkey.url, credentialCacheKeys: CACHE_KEYS },
    Object.entries(servers).map(([name, s]) => ({ name, port: s.port, prefixes: [`/${name}/`] })),
  );
}, 120_000);

afterAll(async () => {
  await replicas.stop();
  redis.disconnect();
  await Promise.all([...Object.values(servers).map((s) => s.close()), idp.stop(), valkey.stop()]);
  Reflect.deleteProperty(process.env, SECRET_ENV);
});

const replica = (i: number): Replica => replicas.at(i);
const server = (name: string): McpTestServer => {
  const s = servers[name];
  if (s === undefined) throw new Error(`no server ${name}`);
  return s;
};

async function userToken(user: string, target: string, client = 'agent-a'): Promise<string> {
  const token = await idp.userToken({ user, client, resource: GATEWAY(target) });
  userTokens.add(token);
  return token;
}

async function connect(target: string, token: string, via = 0): Promise<Client> {
  const transport = new StreamableHTTPClientTransport(new URL(replica(via).envoy.url(`/${target}/mcp`)), { requestInit: { headers: { authorization: `Bearer ${token}` } } });
  const client = new Client({ name: 'token-swap-e2e', version: '1.0.0' });
  await client.connect(transport);
  return client;
}

/** One initialize POST through Envoy; the status, the JSON-RPC error (if any) and the response headers. */
async function initialize(target: string, token: string, via = 0): Promise<{ status: number; code: string | undefined; message: string | undefined; id: unknown; headers: Record<string, string> }> {
  const res = await rawExchange(replica(via).envoy.url(`/${target}/mcp`), {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', authorization: `Bearer ${token}` },
    body: JSON.stringify({ jsonrpc: '2.0', id: 'init-1', method: 'initialize', params: { protocolVersion: '2025-11-25', capabilities: {}, clientInfo: { name: 't', version: '1' } } }),
  });
  const text = res.body.toString();
  const body = res.status === 200 ? undefined : (JSON.parse(text) as { id?: unknown; error?: { message?: string; data?: { code?: string } } });
  return { status: res.status, code: body?.error?.data?.code, message: body?.error?.message, id: body?.id, headers: res.allHeaders };
}

function since(s: McpTestServer, from: number): ReceivedHttpRequest[] {
  return s.received.http.slice(from);
}

async function credentialKeys(): Promise<string[]> {
  return (await redis.keys(`${DEFAULT_KEY_PREFIX}mcp:cred:*`)).sort();
}

describe('token swap', () => {
  it('sends a token-exchange server a token issued for it, for the user, naming the agent as actor', async () => {
    const token = await userToken('alice', 'exchanged');
    const from = server('exchanged').received.http.length;
    const client = await connect('exchanged', token);
    try {
      const tools = await client.listTools();
      expect(tools.tools.length).toBeGreaterThan(0);
      const echoed = await client.callTool({ name: 'echo', arguments: { text: 'hi' } });
      expect(JSON.stringify(echoed.content)).toContain('hi');
    } finally {
      await client.close();
    }
    const seen = since(server('exchanged'), from);
    expect(seen.length).toBeGreaterThanOrEqual(3);
    for (const r of seen) {
      expect(r.rejected).toBeUndefined();
      expect(r.token?.valid).toBe(true);
      const claims = r.token?.valid === true ? r.token.claims : {};
      expect(claims).toMatchObject({ aud: INTERNAL('exchanged'), sub: 'alice', act: { sub: 'agent-a' }, scope: 'tools.call', email: 'alice@example.com' });
      expect(r.authorization).not.toContain(token);
    }
  });

  it("sends the agent's own token as the actor when the agent presents one, and never forwards it", async () => {
    const token = await userToken('alice', 'exchanged');
    const agentToken = await idp.clientToken({ client: 'agent-b', resource: GATEWAY('exchanged') });
    userTokens.add(agentToken);
    const from = server('exchanged').received.http.length;
    const res = await rawExchange(replica(0).envoy.url('/exchanged/mcp'), {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', authorization: `Bearer ${token}`, 'x-agent-token': agentToken },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-11-25', capabilities: {}, clientInfo: { name: 't', version: '1' } } }),
    });
    expect(res.status).toBe(200);
    const [r] = since(server('exchanged'), from);
    expect(r?.token?.valid === true ? r.token.claims : undefined).toMatchObject({ aud: INTERNAL('exchanged'), sub: 'alice', act: { sub: 'agent-b' } });
    expect(r?.headers['x-agent-token']).toBeUndefined();
  });

  it('exchanges with audience and client_secret_post for a server answering with SSE', async () => {
    const token = await userToken('bob', 'streamed', 'agent-b');
    const from = server('streamed').received.http.length;
    const client = await connect('streamed', token);
    try {
      await client.callTool({ name: 'echo', arguments: { text: 'sse' } });
    } finally {
      await client.close();
    }
    const seen = since(server('streamed'), from);
    // The standalone GET stream has no body: its credential is set with the request headers.
    expect(seen.some((r) => r.method === 'GET')).toBe(true);
    // A second session finds the credential cached: no request asks Envoy for extra time.
    const overrides = async (): Promise<number> => (await replica(0).envoy.stats('http.mcp.ext_proc.'))['http.mcp.ext_proc.override_message_timeout_received'] ?? 0;
    const before = await overrides();
    const again = await connect('streamed', token);
    try {
      await again.callTool({ name: 'echo', arguments: { text: 'cached' } });
    } finally {
      await again.close();
    }
    expect(await overrides()).toBe(before);
    const claims = seen.map((r) => (r.token?.valid === true ? r.token.claims : undefined));
    expect(claims.length).toBeGreaterThan(0);
    for (const c of claims) expect(c).toMatchObject({ aud: INTERNAL('streamed'), sub: 'bob', act: { sub: 'agent-b' } });
  });

  it("gives a client-credentials server the gateway's own token and the user in the configured header, whatever the client sent", async () => {
    const token = await userToken('alice', 'service');
    const from = server('service').received.http.length;
    const res = await rawExchange(replica(0).envoy.url('/service/mcp'), {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', authorization: `Bearer ${token}`, 'x-mcp-user': 'someone-else@example.com' },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-11-25', capabilities: {}, clientInfo: { name: 't', version: '1' } } }),
    });
    expect(res.status).toBe(200);
    const [r] = since(server('service'), from);
    expect(r?.token?.valid === true ? r.token.claims : undefined).toMatchObject({ aud: INTERNAL('service'), sub: 'gateway' });
    expect(r?.headers['x-mcp-user']).toBe('alice@example.com');
  });

  it('gives a static-secret server its secret and a server without credential no Authorization at all', async () => {
    const token = await userToken('alice', 'static');
    const fromStatic = server('static').received.http.length;
    expect((await initialize('static', token)).status).toBe(200);
    expect(since(server('static'), fromStatic).map((r) => r.authorization)).toEqual([`Bearer ${STATIC_SECRET}`]);

    const openToken = await userToken('alice', 'open');
    const fromOpen = server('open').received.http.length;
    expect((await initialize('open', openToken)).status).toBe(200);
    const open = since(server('open'), fromOpen);
    expect(open).toHaveLength(1);
    expect(open[0]?.authorization).toBeUndefined();
  });

  it('exchanges once for 100 concurrent first calls, and the other replica reuses it from Redis', async () => {
    const token = await userToken('bob', 'exchanged');
    const before = idp.tokenRequests(TOKEN_EXCHANGE_GRANT);
    const first = await Promise.all(Array.from({ length: 100 }, () => initialize('exchanged', token, 0)));
    expect(first.map((r) => r.status)).toEqual(Array.from({ length: 100 }, () => 200));
    expect(idp.tokenRequests(TOKEN_EXCHANGE_GRANT) - before).toBe(1);

    const from = server('exchanged').received.http.length;
    expect((await initialize('exchanged', token, 1)).status).toBe(200);
    expect(idp.tokenRequests(TOKEN_EXCHANGE_GRANT) - before).toBe(1);
    const [onReplica2] = since(server('exchanged'), from);
    expect(onReplica2?.token?.valid).toBe(true);

    // What Redis holds is ciphertext: neither the exchanged token nor the user's appears in it.
    const exchanged = onReplica2?.authorization?.replace(/^Bearer /, '') ?? '';
    expect(exchanged.length).toBeGreaterThan(20);
    const stored = await credentialKeys();
    expect(stored.length).toBeGreaterThan(0);
    for (const key of stored) {
      const raw = (await redis.get(key)) ?? '';
      expect(raw).toMatch(/^v1\.k1\./);
      expect(raw).not.toContain(exchanged);
      expect(raw).not.toContain(token);
      expect(key).not.toContain(token);
    }
  });

  it('keeps serving cached credentials while the IdP is down, and answers a miss with 503 in time', async () => {
    const cached = await userToken('alice', 'exchanged');
    const fresh = await userToken('bob', 'exchanged');
    const another = await userToken('admin', 'exchanged');
    expect((await initialize('exchanged', cached)).status).toBe(200);
    await idp.pause('refuse');
    try {
      expect((await initialize('exchanged', cached)).status).toBe(200);
      const refused = await initialize('exchanged', fresh);
      expect(refused).toMatchObject({ status: 503, code: 'ERR_CREDENTIAL_UNAVAILABLE', id: 'init-1' });
      expect(refused.message).toMatch(/exchanged.*token endpoint cannot be reached/);
      expect(refused.headers['retry-after']).toBe('1');

      // A token endpoint that accepts but never answers: the processor gives up after its 2.5 s timeout,
      // past Envoy's 2 s message_timeout, which it extended (no 504 from Envoy).
      // An unreachable endpoint is not tried again for a second.
      await new Promise((r) => setTimeout(r, 1_100));
      await idp.pause('hang');
      const overrides = async (): Promise<number> => (await replica(0).envoy.stats('http.mcp.ext_proc.'))['http.mcp.ext_proc.override_message_timeout_received'] ?? 0;
      const overridesBefore = await overrides();
      const started = Date.now();
      const slow = await initialize('exchanged', fresh);
      const elapsed = Date.now() - started;
      expect(slow).toMatchObject({ status: 503, code: 'ERR_CREDENTIAL_UNAVAILABLE' });
      expect(slow.message).toMatch(/did not answer within 2500 ms/);
      expect(elapsed).toBeGreaterThanOrEqual(2_400);
      expect(elapsed).toBeLessThan(6_000);
      expect((await overrides()) - overridesBefore).toBe(1);
      // Meanwhile other misses fail at once instead of each waiting for the timeout.
      const fast = Date.now();
      expect(await initialize('exchanged', another)).toMatchObject({ status: 503, code: 'ERR_CREDENTIAL_UNAVAILABLE' });
      expect(Date.now() - fast).toBeLessThan(1_000);
    } finally {
      await idp.resume();
    }
    // The outage is remembered for a second; then the next miss reaches the IdP again.
    await new Promise((r) => setTimeout(r, 1_100));
    expect((await initialize('exchanged', fresh)).status).toBe(200);
  });

  it('answers 403 with the reason when the IdP refuses the exchange, and audits it', async () => {
    for (const refusal of ['invalid_grant', 'unauthorized_client'] as const) {
      const token = await userToken('alice', 'exchanged');
      idp.refuseExchanges(refusal);
      try {
        const answer = await initialize('exchanged', token);
        expect(answer).toMatchObject({ status: 403, code: 'ERR_CREDENTIAL_REFUSED', id: 'init-1' });
        expect(answer.message).toContain(refusal);
      } finally {
        idp.refuseExchanges(undefined);
      }
    }
    const records = await replica(0).proc.auditRecords();
    const refused = records.filter((r) => JSON.stringify(r).includes('ERR_CREDENTIAL_REFUSED'));
    expect(refused.length).toBeGreaterThanOrEqual(2);
    expect(JSON.stringify(refused[0])).toContain('initialize');
  });

  it('drops a credential the server rejects and tells the client to retry, without the upstream challenge', async () => {
    const token = await userToken('alice', 'exchanged');
    expect((await initialize('exchanged', token)).status).toBe(200);
    const before = idp.tokenRequests(TOKEN_EXCHANGE_GRANT);
    server('exchanged').rejectAllTokens(true);
    let rejected;
    try {
      rejected = await initialize('exchanged', token);
    } finally {
      server('exchanged').rejectAllTokens(false);
    }
    expect(rejected).toMatchObject({ status: 503, code: 'ERR_UPSTREAM_CREDENTIAL_REJECTED', id: 'init-1' });
    expect(rejected.headers['retry-after']).toBe('1');
    expect(rejected.headers['www-authenticate']).toBeUndefined();
    // The retry gets a fresh credential: the rejected one is gone from both levels.
    expect((await initialize('exchanged', token)).status).toBe(200);
    expect(idp.tokenRequests(TOKEN_EXCHANGE_GRANT) - before).toBe(1);
  });

  it("drops a revoked user's cached credentials from Redis", async () => {
    const token = await userToken('bob', 'exchanged', 'agent-b');
    expect((await initialize('exchanged', token)).status).toBe(200);
    const bobs = `${DEFAULT_KEY_PREFIX}mcp:cred:${h12(`${idp.issuer}|bob`)}.`;
    expect((await credentialKeys()).filter((k) => k.startsWith(bobs)).length).toBeGreaterThan(0);
    const adminToken = await idp.userToken({ user: 'admin', client: 'agent-a', resource: ADMIN });
    const res = await fetch(`http://127.0.0.1:${replica(1).proc.adminPort}/revocations`, {
      method: 'POST',
      headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' },
      body: JSON.stringify({ kind: 'subject', issuer: idp.issuer, subject: 'bob' }),
    });
    expect(res.status).toBe(201);
    const deadline = Date.now() + 2_000;
    while ((await credentialKeys()).some((k) => k.startsWith(bobs)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect((await credentialKeys()).filter((k) => k.startsWith(bobs))).toEqual([]);
    expect((await credentialKeys()).length).toBeGreaterThan(0);
  });

  it('counts credential lookups by level and failures by reason', async () => {
    const metrics = await (await fetch(`http://127.0.0.1:${replica(0).proc.adminPort}/metrics`)).text();
    const count = (pattern: RegExp): number => metrics.split('\n').filter((l) => pattern.test(l)).reduce((n, l) => n + Number(l.split(' ').at(-1)), 0);
    expect(count(/^mcp_ext_proc_credential_lookups_total\{.*source="l1"/)).toBeGreaterThan(0);
    expect(count(/^mcp_ext_proc_credential_lookups_total\{.*source="exchanged"/)).toBeGreaterThan(0);
    // Of the 100 concurrent first calls, those that came while the exchange ran shared it.
    expect(count(/^mcp_ext_proc_credential_lookups_total\{.*source="coalesced"/)).toBeGreaterThan(0);
    expect(count(/^mcp_ext_proc_credential_lookups_total\{.*strategy="staticSecret".*source="static"/)).toBeGreaterThan(0);
    expect(count(/^mcp_ext_proc_credential_failures_total\{.*reason="refused"/)).toBeGreaterThanOrEqual(2);
    expect(count(/^mcp_ext_proc_credential_failures_total\{.*reason="upstream_rejected"/)).toBe(1);
    expect(count(/^mcp_ext_proc_credential_failures_total\{.*reason="unreachable"/)).toBeGreaterThan(0);
    expect(count(/^mcp_ext_proc_credential_exchange_duration_seconds_count\{.*outcome="ok"/)).toBeGreaterThan(0);
    const l2 = await (await fetch(`http://127.0.0.1:${replica(1).proc.adminPort}/metrics`)).text();
    expect(l2).toMatch(/mcp_ext_proc_credential_lookups_total\{[^}]*source="l2"[^}]*\} [1-9]/);
  });

  it('keeps serving cached credentials with Redis down, and refuses what it cannot check', async () => {
    const cached = await userToken('alice', 'exchanged');
    const fresh = await userToken('alice', 'exchanged');
    const client = await connect('exchanged', cached);
    const from = server('exchanged').received.http.length;
    try {
      await client.listTools();
      await valkey.stop();
      // The session's owner, the caller's revocation check and the credential are all in this replica's memory.
      const echoed = await client.callTool({ name: 'echo', arguments: { text: 'redis is down' } });
      expect(JSON.stringify(echoed.content)).toContain('redis is down');
    } finally {
      await client.close().catch(() => undefined);
    }
    expect(since(server('exchanged'), from).every((r) => r.token?.valid === true)).toBe(true);
    // A token never seen cannot be checked for revocation: refused before any credential (failureMode: closed).
    expect(await initialize('exchanged', fresh)).toMatchObject({ status: 503, code: 'ERR_STATE_UNAVAILABLE' });
    const ready = await fetch(`http://127.0.0.1:${replica(0).proc.adminPort}/readyz`);
    expect(ready.status).toBe(503);
    expect((await fetch(`http://127.0.0.1:${replica(0).proc.adminPort}/healthz`)).status).toBe(200);
  });

  it('never let a user token reach any server', () => {
    let requests = 0;
    for (const s of Object.values(servers)) {
      for (const r of s.received.http) {
        requests++;
        for (const t of userTokens) expect(JSON.stringify(r.headers)).not.toContain(t);
      }
    }
    expect(requests).toBeGreaterThan(100);
    expect(userTokens.size).toBeGreaterThan(8);
  });
});
