// Bad input through a real Envoy: each case has a defined answer a client can act on, the MCP server
// never sees what was refused, and the processor keeps serving afterwards.

import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dispatch } from '../../ext-proc/src/envoy/server.ts';
import { startEnvoy, type EnvoyInstance } from '../support/envoy.ts';
import { startStreamableJsonServer, startStreamableSseServer, type McpTestServer } from '../support/mcp-servers.ts';
import { openRawSession, rawExchange } from '../support/mcp-scenarios.ts';
import { startTestProcessor, type TestProcessor } from '../support/processor.ts';

const GOVERNANCE = `
apiVersion: mcp-ext-proc/v1
servers:
  - name: json
  - name: stream
  - name: raw
limits:
  maxRequestBodyBytes: 8192
`;

/** An upstream that answers with an event stream and then stops in the middle of an event. */
function startTruncatingUpstream(): Promise<{ server: Server; port: number; mode: { abrupt: boolean } }> {
  const mode = { abrupt: false };
  const server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write('event: message\ndata: {"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"x"}}\n\n');
      res.write('event: message\ndata: {"jsonrpc":"2.0","id":1,"res');
      // A clean end (the last chunk is sent) or a dropped connection.
      setTimeout(() => (mode.abrupt ? res.socket?.destroy() : res.end()), 30);
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, port: (server.address() as AddressInfo).port, mode })));
}

let proc: TestProcessor;
let envoy: EnvoyInstance;
let json: McpTestServer;
let stream: McpTestServer;
let raw: Awaited<ReturnType<typeof startTruncatingUpstream>>;

beforeAll(async () => {
  [proc, json, stream, raw] = await Promise.all([
    startTestProcessor(GOVERNANCE),
    startStreamableJsonServer({ pathPrefix: '/json' }),
    startStreamableSseServer({ pathPrefix: '/stream' }),
    startTruncatingUpstream(),
  ]);
  envoy = await startEnvoy({
    processor: { port: proc.grpcPort },
    upstreams: [
      { name: 'json', port: json.port, prefixes: ['/json/'] },
      { name: 'stream', port: stream.port, prefixes: ['/stream/'] },
      { name: 'raw', port: raw.port, prefixes: ['/raw/'] },
      // A route Envoy knows but the governance document does not.
      { name: 'unlisted', port: json.port, prefixes: ['/unlisted/'] },
    ],
  });
}, 120_000);

afterAll(async () => {
  await envoy.stop();
  await Promise.all([json.close(), stream.close(), new Promise((r) => raw.server.close(r))]);
  await proc.stop();
});

const MCP_HEADERS = { 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-protocol-version': '2025-06-18' };

async function post(path: string, body: string | Buffer, headers: Record<string, string> = {}) {
  const res = await rawExchange(envoy.url(path), { method: 'POST', headers: { ...MCP_HEADERS, ...headers }, body });
  const text = res.body.toString('utf8');
  const parsed = JSON.parse(text) as { id: unknown; error?: { code: number; message: string; data?: { code?: string } } };
  return { status: res.status, type: res.headers['content-type'], id: parsed.id, error: parsed.error };
}

describe('bad input through Envoy', () => {
  it.each([
    ['malformed JSON', '{"jsonrpc":"2.0","id":1,"method":', {}, 400, -32700, 'ERR_JSONRPC_PARSE'],
    ['a body that is not JSON-RPC', '{"query":"select *"}', {}, 400, -32600, 'ERR_JSONRPC_INVALID'],
    ['a batch on a version that forbids it', '[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]', {}, 400, -32600, 'ERR_JSONRPC_BATCH_FORBIDDEN'],
    ['the wrong content type', 'hello', { 'content-type': 'text/plain' }, 415, -32600, 'ERR_REQUEST_CONTENT_TYPE'],
    ['a body over the configured limit', `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"${'x'.repeat(9000)}"}}}`, {}, 413, -32600, 'ERR_REQUEST_TOO_LARGE'],
    ['an unsupported content encoding', 'zzz', { 'content-encoding': 'compress' }, 415, -32600, 'ERR_REQUEST_ENCODING'],
  ])('answers %s with a JSON-RPC error and forwards nothing', async (_what, body, headers, status, rpcCode, code) => {
    json.received.clear();
    const res = await post('/json/mcp', body, headers);
    expect([res.status, res.type, res.error?.code, res.error?.data?.code]).toEqual([status, 'application/json', rpcCode, code]);
    expect(json.received.http).toEqual([]);
  });

  it('answers a route whose server is not in the governance document with 404, not a pass-through', async () => {
    json.received.clear();
    const res = await post('/unlisted/mcp', '{"jsonrpc":"2.0","id":1,"method":"ping"}');
    expect([res.status, res.error?.data?.code]).toEqual([404, 'ERR_SERVER_UNKNOWN']);
    expect(json.received.http).toEqual([]);
  });

  it('reads a gzip-encoded request and forwards it as sent', async () => {
    const body = gzipSync('{"jsonrpc":"2.0","id":"gz-1","method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"gz","version":"1"}}}');
    const viaEnvoy = await rawExchange(envoy.url('/json/mcp'), { method: 'POST', headers: { ...MCP_HEADERS, 'content-encoding': 'gzip' }, body });
    const direct = await rawExchange(json.url(), { method: 'POST', headers: { ...MCP_HEADERS, 'content-encoding': 'gzip' }, body });
    expect(viaEnvoy.status).toBe(direct.status);
    expect(proc.events.some((e) => e.message.id === '"gz-1"' && e.message.method === 'initialize')).toBe(true);
  });

  it('forwards the same bytes when the upstream ends an event stream in the middle of an event', async () => {
    raw.mode.abrupt = false;
    const init = { method: 'POST', headers: MCP_HEADERS, body: '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}' };
    const direct = await rawExchange(`http://127.0.0.1:${raw.port}/raw/mcp`, init);
    const proxied = await rawExchange(envoy.url('/raw/mcp'), init);
    expect(proxied.body.toString()).toBe(direct.body.toString());
    expect(proxied.body.toString()).toContain('"id":1,"res');
  });

  it('delivers the complete events and keeps serving when the upstream drops the connection mid-event', async () => {
    raw.mode.abrupt = true;
    const init = { method: 'POST', headers: MCP_HEADERS, body: '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}' };
    // Envoy resets the client's stream too; whatever arrived before is whole events only.
    const proxied = await rawExchange(envoy.url('/raw/mcp'), init, { timeoutMs: 5_000 }).catch(() => undefined);
    if (proxied !== undefined) expect(proxied.body.toString()).not.toContain('"res');
    raw.mode.abrupt = false;
    const after = await post('/json/mcp', '{"jsonrpc":"2.0","id":1,"method":');
    expect(after.status).toBe(400);
  });

  it('survives a client that disconnects in the middle of an SSE response', async () => {
    const session = await openRawSession(envoy.url('/stream/mcp'));
    const abort = new AbortController();
    const res = await fetch(envoy.url('/stream/mcp'), {
      method: 'POST',
      headers: session.headers(),
      body: JSON.stringify({ jsonrpc: '2.0', id: 'dc-1', method: 'tools/call', params: { name: 'slow_progress', arguments: { steps: 20, delayMs: 50 }, _meta: { progressToken: 1 } } }),
      signal: abort.signal,
    });
    const reader = res.body?.getReader();
    await reader?.read(); // the first event arrived
    abort.abort();
    await new Promise((r) => setTimeout(r, 200));
    // The processor is still there and still governs: the same session goes on working.
    const next = await session.post({ jsonrpc: '2.0', id: 'after', method: 'tools/call', params: { name: 'echo', arguments: { text: 'still here' } } });
    expect(next.status).toBe(200);
    expect(next.body.toString()).toContain('still here');
    await session.terminate();
    const stats = await envoy.stats('http.mcp.ext_proc.');
    expect(stats['http.mcp.ext_proc.failure_mode_allowed'] ?? 0).toBe(0);
  });
});

describe('a failure inside the processor', () => {
  it('reaches the client as 500 with JSON-RPC -32603, and the request never reaches the server', async () => {
    const failing = await startTestProcessor(GOVERNANCE, {
      handle: (ex, req) => {
        if (req.request === 'request_body') throw new RangeError('bug');
        return dispatch(ex, req);
      },
    });
    const failingEnvoy = await startEnvoy({ processor: { port: failing.grpcPort }, upstreams: [{ name: 'json', port: json.port, prefixes: ['/json/'] }] });
    try {
      json.received.clear();
      const res = await rawExchange(failingEnvoy.url('/json/mcp'), {
        method: 'POST',
        headers: MCP_HEADERS,
        body: '{"jsonrpc":"2.0","id":31,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}',
      });
      const body = JSON.parse(res.body.toString()) as { id: number; error: { code: number; data: { code: string } } };
      expect([res.status, body.id, body.error.code, body.error.data.code]).toEqual([500, 31, -32603, 'ERR_INTERNAL']);
      expect(json.received.http).toEqual([]);
      const stats = await failingEnvoy.stats('http.mcp.ext_proc.');
      expect(stats['http.mcp.ext_proc.failure_mode_allowed'] ?? 0).toBe(0);
    } finally {
      await failingEnvoy.stop();
      await failing.stop();
    }
  });
});

describe('graceful shutdown', () => {
  it('lets an in-flight SSE tool call finish, then fails closed for new requests', async () => {
    const own = await startTestProcessor(GOVERNANCE);
    const ownEnvoy = await startEnvoy({ processor: { port: own.grpcPort }, upstreams: [{ name: 'stream', port: stream.port, prefixes: ['/stream/'] }] });
    try {
      const session = await openRawSession(ownEnvoy.url('/stream/mcp'));
      const call = session.post({ jsonrpc: '2.0', id: 'long', method: 'tools/call', params: { name: 'slow_progress', arguments: { steps: 10, delayMs: 100 }, _meta: { progressToken: 1 } } });
      await new Promise((r) => setTimeout(r, 200));
      const stopped = own.stop(); // what SIGTERM does
      const answer = await call;
      await stopped;
      expect(answer.status).toBe(200);
      expect(answer.body.toString()).toContain('"id":"long"');
      const after = await rawExchange(ownEnvoy.url('/stream/mcp'), { method: 'POST', headers: session.headers(), body: '{"jsonrpc":"2.0","id":2,"method":"ping"}' });
      expect(after.status).toBeGreaterThanOrEqual(500);
    } finally {
      await ownEnvoy.stop();
    }
  });
});
