// Identity and tool-level authorization end to end: a real IdP (oidc-provider) issues the tokens, real
// MCP SDK clients and servers talk through a real Envoy with mcp-ext-proc on the path.

import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { CreateMessageRequestSchema, ElicitRequestSchema } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEnvoy, type EnvoyInstance } from '../support/envoy.ts';
import { forgeToken, MALFORMED_TOKENS, startIdp, unsignedToken, type Idp } from '../support/idp.ts';
import { startLegacySseServer, startStreamableJsonServer, startStreamableSseServer, type McpTestServer } from '../support/mcp-servers.ts';
import { openRawSession, rawExchange } from '../support/mcp-scenarios.ts';
import { startTestProcessor, type TestProcessor } from '../support/processor.ts';

const RESOURCE = (name: string, path = 'mcp'): string => `https://gateway.test/${name}/${path}`;

const governance = (issuer: string): string => `
apiVersion: mcp-ext-proc/v1
identity:
  issuers:
    - { name: test-idp, issuer: "${issuer}", algorithms: [RS256, ES256] }
servers:
  - { name: json, resource: "${RESOURCE('json')}", scopes: [mcp] }
  - { name: stream, resource: "${RESOURCE('stream')}" }
  - { name: legacy, resource: "${RESOURCE('legacy', 'sse')}" }
  - { name: challenger, resource: "${RESOURCE('challenger')}" }
policy:
  rules:
    - id: everyone-echo
      effect: allow
      match: { methods: [tools/call], names: [echo] }
    - id: small-sums-only
      description: large sums go through the finance team
      effect: deny
      match: { names: [add] }
      when: 'arguments.a > 100'
    - id: analysts-math
      effect: allow
      match: { users: { groups: [analysts] }, names: [add, slow_progress] }
    - id: engineers-ask
      effect: allow
      match: { users: { groups: [engineering] }, names: [ask_model, ask_user] }
    - id: fail-needs-danger-scope
      effect: require
      match: { names: [fail] }
      scopes: [danger]
    - id: fail-allowed
      effect: allow
      match: { names: [fail] }
    - id: broken-condition
      effect: allow
      match: { names: [big_id_echo] }
      when: 'arguments.missing.deeper == 1'
    - id: prompts-and-resources
      effect: allow
      match: { methods: [prompts/get, resources/read, completion/complete] }
`;

/** An upstream that challenges every request with its own authorization server. */
function startChallenger(): Promise<{ server: Server; port: number }> {
  const server = createServer((req, res) => {
    req.resume();
    res.writeHead(401, { 'content-type': 'application/json', 'www-authenticate': 'Bearer resource_metadata="https://upstream.example/prm"' });
    res.end('{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"upstream says no"}}');
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, port: (server.address() as AddressInfo).port })));
}

let idp: Idp;
let proc: TestProcessor;
let envoy: EnvoyInstance;
let json: McpTestServer;
let stream: McpTestServer;
let legacy: McpTestServer;
let challenger: { server: Server; port: number };
const tokens: Record<string, string> = {};

beforeAll(async () => {
  [idp, json, stream, legacy, challenger] = await Promise.all([
    startIdp(),
    startStreamableJsonServer({ pathPrefix: '/json' }),
    startStreamableSseServer({ pathPrefix: '/stream' }),
    startLegacySseServer({ pathPrefix: '/legacy' }),
    startChallenger(),
  ]);
  proc = await startTestProcessor(governance(idp.issuer));
  envoy = await startEnvoy({
    processor: { port: proc.grpcPort },
    upstreams: [
      { name: 'json', port: json.port, prefixes: ['/json/'] },
      { name: 'stream', port: stream.port, prefixes: ['/stream/'] },
      { name: 'legacy', port: legacy.port, prefixes: ['/legacy/'] },
      { name: 'challenger', port: challenger.port, prefixes: ['/challenger/'] },
    ],
  });
  for (const server of ['json', 'stream'] as const) {
    tokens[`alice@${server}`] = await idp.userToken({ user: 'alice', client: 'agent-a', resource: RESOURCE(server), scope: 'mcp' });
    tokens[`bob@${server}`] = await idp.userToken({ user: 'bob', client: 'agent-a', resource: RESOURCE(server), scope: 'mcp' });
  }
  tokens['alice@legacy'] = await idp.userToken({ user: 'alice', client: 'agent-a', resource: RESOURCE('legacy', 'sse') });
  tokens['bob@legacy'] = await idp.userToken({ user: 'bob', client: 'agent-a', resource: RESOURCE('legacy', 'sse') });
}, 120_000);

afterAll(async () => {
  await envoy.stop();
  await Promise.all([json.close(), stream.close(), legacy.close(), new Promise((r) => challenger.server.close(r)), idp.stop()]);
  await proc.stop();
});

async function connect(server: McpTestServer, token: string, kind: 'streamable' | 'sse' = 'streamable'): Promise<Client> {
  const url = new URL(envoy.url(server.endpointPath));
  const requestInit = { headers: { authorization: `Bearer ${token}` } };
  const transport =
    kind === 'sse'
      ? // eslint-disable-next-line @typescript-eslint/no-deprecated -- the legacy transport is what this case is about
        new SSEClientTransport(url, { requestInit })
      : new StreamableHTTPClientTransport(url, { requestInit });
  const client = new Client({ name: 'authz-e2e', version: '1.0.0' }, { capabilities: { sampling: {}, elicitation: {} } });
  client.setRequestHandler(CreateMessageRequestSchema, () => ({ role: 'assistant', model: 'm', content: { type: 'text', text: 'ok' } }));
  client.setRequestHandler(ElicitRequestSchema, () => ({ action: 'decline' }));
  await client.connect(transport);
  return client;
}

async function toolNames(server: McpTestServer, user: 'alice' | 'bob', kind: 'streamable' | 'sse' = 'streamable'): Promise<string[]> {
  const client = await connect(server, tokens[`${user}@${server.name === 'legacy' ? 'legacy' : server.pathPrefix.slice(1)}`] ?? '', kind);
  try {
    return (await client.listTools()).tools.map((t) => t.name).sort();
  } finally {
    await client.close();
  }
}

const MCP_HEADERS = { 'content-type': 'application/json', accept: 'application/json, text/event-stream' };

describe('tools/list shows each caller only what it may call', () => {
  it.each([
    ['JSON', () => json, 'streamable'],
    ['SSE', () => stream, 'streamable'],
    ['the legacy SSE stream', () => legacy, 'sse'],
  ] as const)('gives alice and bob different tools over %s', async (_what, server, kind) => {
    expect(await toolNames(server(), 'alice', kind)).toEqual(['add', 'big_id_echo', 'echo', 'slow_progress']);
    expect(await toolNames(server(), 'bob', kind)).toEqual(['ask_model', 'ask_user', 'big_id_echo', 'echo']);
  });

  it('forwards the list request itself and keeps every other field of the result', async () => {
    const session = await openRawSession(envoy.url('/json/mcp'), '2025-11-25', { authorization: `Bearer ${tokens['bob@json'] ?? ''}` });
    const listed = await session.post({ jsonrpc: '2.0', id: 'l1', method: 'tools/list' });
    const body = JSON.parse(listed.body.toString()) as { id: string; result: { tools: { name: string; inputSchema: unknown }[] } };
    expect(body.id).toBe('l1');
    expect(body.result.tools.find((t) => t.name === 'echo')?.inputSchema).toBeDefined();
    expect(Number(listed.allHeaders['content-length'])).toBe(listed.body.length);
    await session.terminate();
  });
});

describe('calls are authorized before they reach the server', () => {
  it('denies a hidden tool with the documented error, and the server never sees the call', async () => {
    json.received.clear();
    const client = await connect(json, tokens['bob@json'] ?? '');
    try {
      const err = await client.callTool({ name: 'add', arguments: { a: 1, b: 2 } }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: -32003 });
      expect((err as Error).message).toContain('denied by policy');
      expect(json.received.toolCalls()).not.toContain('add');
    } finally {
      await client.close();
    }
  });

  it('allows one call and denies another to the same tool by its arguments, naming the rule', async () => {
    json.received.clear();
    const client = await connect(json, tokens['alice@json'] ?? '');
    try {
      const ok = await client.callTool({ name: 'add', arguments: { a: 2, b: 3 } });
      expect(JSON.stringify(ok.content)).toContain('5');
      const err = await client.callTool({ name: 'add', arguments: { a: 500, b: 1 } }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: -32003 });
      expect((err as Error).message).toContain('small-sums-only');
      expect((err as Error).message).not.toContain('500');
      expect(json.received.toolCalls().filter((n) => n === 'add')).toHaveLength(1);
    } finally {
      await client.close();
    }
  });

  it('denies a call whose rule condition fails to evaluate', async () => {
    const client = await connect(json, tokens['bob@json'] ?? '');
    try {
      const err = await client.callTool({ name: 'big_id_echo', arguments: {} }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: -32003 });
      expect((err as Error).message).toContain('broken-condition');
    } finally {
      await client.close();
    }
  });

  it('answers a call that needs more scope with 403 insufficient_scope naming the scope', async () => {
    const session = await openRawSession(envoy.url('/json/mcp'), '2025-11-25', { authorization: `Bearer ${tokens['alice@json'] ?? ''}` });
    const res = await session.post({ jsonrpc: '2.0', id: 3, method: 'tools/call', params: { name: 'fail', arguments: {} } });
    expect(res.status).toBe(403);
    expect(res.allHeaders['www-authenticate']).toBe(
      'Bearer resource_metadata="https://gateway.test/.well-known/oauth-protected-resource/json/mcp", scope="mcp danger", error="insufficient_scope"',
    );
    expect(JSON.parse(res.body.toString())).toMatchObject({ id: 3, error: { code: -32003, data: { code: 'ERR_INSUFFICIENT_SCOPE' } } });
    await session.terminate();
  });

  it('refuses a session id presented by another user, without forwarding', async () => {
    const alice = await openRawSession(envoy.url('/stream/mcp'), '2025-11-25', { authorization: `Bearer ${tokens['alice@stream'] ?? ''}` });
    stream.received.clear();
    const stolen = await rawExchange(envoy.url('/stream/mcp'), {
      method: 'POST',
      headers: { ...alice.headers(), authorization: `Bearer ${tokens['bob@stream'] ?? ''}` },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'echo', arguments: { text: 'hi' } } }),
    });
    expect(stolen.status).toBe(403);
    expect(JSON.parse(stolen.body.toString())).toMatchObject({ error: { data: { code: 'ERR_SESSION_FOREIGN' } } });
    expect(stream.received.http).toEqual([]);
    expect((await alice.post({ jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'echo', arguments: { text: 'mine' } } })).status).toBe(200);
    await alice.terminate();
  });
});

describe('the authorization front door', () => {
  it('serves Protected Resource Metadata for each server', async () => {
    const res = await rawExchange(envoy.url('/.well-known/oauth-protected-resource/json/mcp'), { method: 'GET' });
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body.toString())).toEqual({
      resource: RESOURCE('json'),
      authorization_servers: [idp.issuer],
      scopes_supported: ['mcp'],
      bearer_methods_supported: ['header'],
    });
  });

  it('challenges a request without a token with 401 and the metadata URL, on every method', async () => {
    for (const method of ['POST', 'GET', 'DELETE']) {
      const res = await rawExchange(envoy.url('/json/mcp'), { method, headers: MCP_HEADERS, ...(method === 'POST' ? { body: '{"jsonrpc":"2.0","id":1,"method":"ping"}' } : {}) });
      expect(res.status, method).toBe(401);
      expect(res.allHeaders['www-authenticate'], method).toBe('Bearer resource_metadata="https://gateway.test/.well-known/oauth-protected-resource/json/mcp", scope="mcp"');
    }
  });

  it.each([
    ['garbage in the header', () => Promise.resolve(`Bearer ${MALFORMED_TOKENS['notAJwt'] ?? 'x'}`), 'ERR_IDENTITY_INVALID'],
    ['a header that is not a bearer token', () => Promise.resolve('Basic YWxpY2U6c2VjcmV0'), 'ERR_IDENTITY_INVALID'],
    ['an expired token', async () => `Bearer ${await idp.expiredToken({ user: 'alice', client: 'agent-a', resource: RESOURCE('json') })}`, 'ERR_IDENTITY_EXPIRED'],
    ['a token for another server', async () => `Bearer ${await idp.userToken({ user: 'alice', client: 'agent-a', resource: RESOURCE('stream') })}`, 'ERR_IDENTITY_AUDIENCE'],
    ['alg none', () => Promise.resolve(`Bearer ${unsignedToken({ iss: idp.issuer, sub: 'alice', aud: RESOURCE('json'), exp: Math.floor(Date.now() / 1000) + 60 })}`), 'ERR_IDENTITY_INVALID'],
    ['a token signed by an unknown key', async () => `Bearer ${await forgeToken({ iss: idp.issuer, sub: 'alice', aud: RESOURCE('json'), exp: Math.floor(Date.now() / 1000) + 60 }, { kid: idp.signingKid() })}`, 'ERR_IDENTITY_INVALID'],
    ['an unknown issuer', async () => `Bearer ${await forgeToken({ iss: 'https://evil.example', sub: 'alice', aud: RESOURCE('json'), exp: Math.floor(Date.now() / 1000) + 60 })}`, 'ERR_IDENTITY_ISSUER_UNKNOWN'],
  ])('refuses %s with 401 invalid_token and forwards nothing', async (_what, header, code) => {
    json.received.clear();
    const res = await rawExchange(envoy.url('/json/mcp'), { method: 'POST', headers: { ...MCP_HEADERS, authorization: await header() }, body: '{"jsonrpc":"2.0","id":1,"method":"ping"}' });
    expect(res.status).toBe(401);
    expect(res.allHeaders['www-authenticate']).toContain('error="invalid_token"');
    expect(JSON.parse(res.body.toString())).toMatchObject({ error: { code: -32001, data: { code } } });
    expect(json.received.http).toEqual([]);
  });

  it("never passes an upstream's own challenge to the client", async () => {
    const token = await idp.userToken({ user: 'alice', client: 'agent-a', resource: RESOURCE('challenger') });
    const res = await rawExchange(envoy.url('/challenger/mcp'), { method: 'POST', headers: { ...MCP_HEADERS, authorization: `Bearer ${token}` }, body: '{"jsonrpc":"2.0","id":1,"method":"ping"}' });
    expect(res.status).toBe(401);
    expect(res.allHeaders['www-authenticate']).toBeUndefined();
  });

  it('fails closed with 503 when the IdP cannot be reached for keys', async () => {
    const token = await idp.userToken({ user: 'alice', client: 'agent-a', resource: RESOURCE('json') });
    // A fresh replica has no keys cached yet.
    const fresh = await startTestProcessor(governance(idp.issuer));
    const freshEnvoy = await startEnvoy({ processor: { port: fresh.grpcPort }, upstreams: [{ name: 'json', port: json.port, prefixes: ['/json/'] }] });
    await idp.pause();
    try {
      const res = await rawExchange(freshEnvoy.url('/json/mcp'), { method: 'POST', headers: { ...MCP_HEADERS, authorization: `Bearer ${token}` }, body: '{"jsonrpc":"2.0","id":1,"method":"ping"}' });
      expect(res.status).toBe(503);
      expect(JSON.parse(res.body.toString())).toMatchObject({ error: { code: -32603, data: { code: 'ERR_IDP_UNAVAILABLE' } } });
    } finally {
      await idp.resume();
      await freshEnvoy.stop();
      await fresh.stop();
    }
  });

  it('never sends the caller token upstream', async () => {
    json.received.clear();
    const session = await openRawSession(envoy.url('/json/mcp'), '2025-11-25', { authorization: `Bearer ${tokens['alice@json'] ?? ''}` });
    await session.terminate();
    expect(json.received.http.length).toBeGreaterThan(0);
    expect(json.received.http.every((h) => h.authorization === undefined)).toBe(true);
  });

  it('records user, agent, decision and rule in Envoy access logs', async () => {
    const log = await envoy.accessLog();
    const denied = log.find((l) => l['mcp_rule'] === 'small-sums-only');
    expect(denied).toMatchObject({ mcp_decision: 'deny', mcp_user: 'alice', mcp_agent: 'agent-a', mcp_tool: 'add' });
    const allowed = log.find((l) => l['mcp_decision'] === 'allow' && l['mcp_tool'] === 'add');
    expect(allowed).toMatchObject({ mcp_user: 'alice', mcp_rule: 'analysts-math' });
  });
});
