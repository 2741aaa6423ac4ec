// Tier 3: the real gRPC server driven over real gRPC streams by a client that behaves like Envoy.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GatewayError } from '../../ext-proc/src/errors.ts';
import { dispatch } from '../../ext-proc/src/envoy/server.ts';
import { connect, envoy, forwardedBody, type ExtProcClient } from '../support/ext-proc-client.ts';
import { startTestProcessor, type TestProcessor } from '../support/processor.ts';

const GOVERNANCE = `
apiVersion: mcp-ext-proc/v1
servers:
  - name: weather
    pathPrefixes: [/weather/]
  - name: files
limits:
  maxRequestBodyBytes: 4096
`;

const POST = (path: string, extra: Record<string, string> = {}): Record<string, string> => ({
  ':method': 'POST',
  ':path': path,
  'content-type': 'application/json',
  accept: 'application/json, text/event-stream',
  ...extra,
});

function immediateJson(res: { immediate_response?: { status: { code: number }; body?: Buffer } }): { status: number; body: { id: unknown; error: { code: number; message: string; data: { code: string } } } } {
  const ir = res.immediate_response;
  if (ir === undefined) throw new Error(`expected an immediate response, got ${JSON.stringify(res)}`);
  return { status: ir.status.code, body: JSON.parse(Buffer.from(ir.body ?? []).toString('utf8')) as never };
}

/** ProcessingMode.BodySendMode by number, as the test client decodes it. */
const BODY_MODES = ['NONE', 'STREAMED', 'BUFFERED'];

let proc: TestProcessor;
let client: ExtProcClient;

beforeAll(async () => {
  proc = await startTestProcessor(GOVERNANCE);
  client = connect(proc.grpcPort);
});
afterAll(async () => {
  client.close();
  await proc.stop();
});

describe('request path', () => {
  it('passes a tools/call for a known server through unchanged and remembers its id', async () => {
    const s = client.open();
    const h = await s.exchange(envoy.requestHeaders(POST('/weather/mcp', { 'mcp-session-id': 's1', 'accept-encoding': 'gzip' })));
    expect(h.immediate_response).toBeUndefined();
    expect(h.request_headers?.response?.header_mutation?.remove_headers).toEqual(['accept-encoding']);
    const body = '{"jsonrpc":"2.0","id":"call-1","method":"tools/call","params":{"name":"forecast","arguments":{"city":"Oslo"}}}';
    const b = await s.exchange(envoy.requestBody(body));
    expect(b.request_body?.response?.body_mutation).toBeUndefined();
    expect(b.dynamic_metadata?.fields?.['mcp_ext_proc']?.structValue?.fields?.['method']?.stringValue).toBe('tools/call');
    const seen = proc.events.find((e) => e.message.id === '"call-1"');
    expect(seen).toMatchObject({ server: 'weather', session: 's1', direction: 'client_to_server' });
    expect(seen?.message.name).toBe('forecast');
    s.halfClose();
    expect((await s.status).code).toBe(0);
  });

  it('prefers the server the route names over the path prefix', async () => {
    const s = client.open();
    await s.exchange(envoy.requestHeaders(POST('/weather/mcp'), { routeServer: 'files' }));
    await s.exchange(envoy.requestBody('{"jsonrpc":"2.0","id":7,"method":"ping"}'));
    expect(proc.events.find((e) => e.message.method === 'ping' && e.message.id === '7')?.server).toBe('files');
    s.halfClose();
  });

  it('takes the server from gRPC initial metadata set per route', async () => {
    const s = client.open({ 'x-mcp-ext-proc-server': 'files' });
    const h = await s.exchange(envoy.requestHeaders(POST('/anything')));
    expect(h.immediate_response).toBeUndefined();
    expect(h.dynamic_metadata?.fields?.['mcp_ext_proc']?.structValue?.fields?.['server']?.stringValue).toBe('files');
    s.halfClose();
  });

  it('answers a route that names no known server with 404 and a JSON-RPC error', async () => {
    const s = client.open();
    const res = immediateJson(await s.exchange(envoy.requestHeaders(POST('/nowhere/mcp'))));
    expect(res.status).toBe(404);
    expect(res.body.error.code).toBe(-32004);
    expect(res.body.error.data.code).toBe('ERR_SERVER_UNKNOWN');
    expect(res.body.error.message).toContain('/nowhere/mcp');
  });

  it('keeps a JSON-RPC id beyond 2^53 exact in an error answer', async () => {
    const s = client.open();
    await s.exchange(envoy.requestHeaders(POST('/weather/mcp', { 'mcp-protocol-version': '2026-07-28', 'mcp-method': 'tools/list' })));
    const res = await s.exchange(envoy.requestBody('{"jsonrpc":"2.0","id":123456789012345678901,"method":"tools/call","params":{"name":"x"}}'));
    const text = Buffer.from(res.immediate_response?.body ?? []).toString('utf8');
    expect(text).toContain('"id":123456789012345678901,');
    expect(res.immediate_response?.status.code).toBe(400);
    expect(text).toContain('"code":-32020');
  });

  it.each([
    ['malformed JSON', '{"jsonrpc":"2.0",', 400, -32700, 'ERR_JSONRPC_PARSE'],
    ['JSON that is not JSON-RPC', '{"hello":"world"}', 400, -32600, 'ERR_JSONRPC_INVALID'],
    ['a null id on a request', '{"jsonrpc":"2.0","id":null,"method":"ping"}', 400, -32600, 'ERR_JSONRPC_INVALID'],
    ['an empty batch', '[]', 400, -32600, 'ERR_JSONRPC_INVALID'],
    ['a body over the limit', `{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"${'x'.repeat(5000)}"}}`, 413, -32600, 'ERR_REQUEST_TOO_LARGE'],
  ])('refuses %s with a client error and does not forward it', async (_what, body, status, rpcCode, code) => {
    const s = client.open();
    await s.exchange(envoy.requestHeaders(POST('/weather/mcp')));
    const res = immediateJson(await s.exchange(envoy.requestBody(body)));
    expect([res.status, res.body.error.code, res.body.error.data.code]).toEqual([status, rpcCode, code]);
    expect(proc.rejections.at(-1)).toEqual({ code, server: 'weather' });
  });

  it('refuses a POST with a declared length over the limit before its body is buffered', async () => {
    const s = client.open();
    const res = immediateJson(await s.exchange(envoy.requestHeaders(POST('/weather/mcp', { 'content-length': '100000' }))));
    expect([res.status, res.body.error.data.code]).toEqual([413, 'ERR_REQUEST_TOO_LARGE']);
  });

  it('refuses a POST whose content type is not JSON', async () => {
    const s = client.open();
    const res = immediateJson(await s.exchange(envoy.requestHeaders(POST('/weather/mcp', { 'content-type': 'text/plain' }))));
    expect([res.status, res.body.error.data.code]).toEqual([415, 'ERR_REQUEST_CONTENT_TYPE']);
  });

  it('accepts a batch only for sessions on 2025-03-26', async () => {
    const batch = '[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized"}]';
    const ok = client.open();
    await ok.exchange(envoy.requestHeaders(POST('/weather/mcp', { 'mcp-protocol-version': '2025-03-26' })));
    expect((await ok.exchange(envoy.requestBody(batch))).immediate_response).toBeUndefined();
    ok.halfClose();

    const refused = client.open();
    await refused.exchange(envoy.requestHeaders(POST('/weather/mcp', { 'mcp-protocol-version': '2025-11-25' })));
    const res = immediateJson(await refused.exchange(envoy.requestBody(batch)));
    expect([res.status, res.body.error.data.code]).toEqual([400, 'ERR_JSONRPC_BATCH_FORBIDDEN']);
  });

  it('decodes a gzip-encoded request body and forwards the original bytes', async () => {
    const { gzipSync } = await import('node:zlib');
    const s = client.open();
    await s.exchange(envoy.requestHeaders(POST('/weather/mcp', { 'content-encoding': 'gzip' })));
    const b = await s.exchange(envoy.requestBody(gzipSync('{"jsonrpc":"2.0","id":"gz","method":"tools/list"}')));
    expect(b.request_body?.response?.body_mutation).toBeUndefined();
    expect(proc.events.some((e) => e.message.id === '"gz"' && e.message.method === 'tools/list')).toBe(true);
  });

  it('refuses a gzip body that expands beyond the limit', async () => {
    const { gzipSync } = await import('node:zlib');
    const s = client.open();
    await s.exchange(envoy.requestHeaders(POST('/weather/mcp', { 'content-encoding': 'gzip' })));
    const bomb = gzipSync(`{"jsonrpc":"2.0","id":1,"method":"ping","params":{"p":"${'a'.repeat(100_000)}"}}`);
    const res = immediateJson(await s.exchange(envoy.requestBody(bomb)));
    expect([res.status, res.body.error.data.code]).toEqual([413, 'ERR_REQUEST_TOO_LARGE']);
  });

  it('checks Mcp-Method and Mcp-Name against the body on 2026-07-28', async () => {
    const s = client.open();
    await s.exchange(envoy.requestHeaders(POST('/weather/mcp', { 'mcp-protocol-version': '2026-07-28', 'mcp-method': 'tools/call', 'mcp-name': '=?base64?ZsO4cmVjYXN0?=' })));
    const good = await s.exchange(envoy.requestBody('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"føreca st"}}'));
    const res = immediateJson(good);
    expect(res.body.error.message).toContain('Mcp-Name');

    const s2 = client.open();
    await s2.exchange(envoy.requestHeaders(POST('/weather/mcp', { 'mcp-protocol-version': '2026-07-28', 'mcp-method': 'tools/call', 'mcp-name': '=?base64?ZsO4cmVjYXN0?=' })));
    expect((await s2.exchange(envoy.requestBody('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"føreca"}}'))).immediate_response).toBeDefined();

    const s3 = client.open();
    await s3.exchange(envoy.requestHeaders(POST('/weather/mcp', { 'mcp-protocol-version': '2026-07-28', 'mcp-method': 'tools/call', 'mcp-name': '=?base64?ZsO4cmVjYXN0?=' })));
    expect((await s3.exchange(envoy.requestBody('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"førecast"}}'))).immediate_response).toBeUndefined();
    s3.halfClose();
  });
});

describe('response path', () => {
  it('buffers JSON responses, streams event streams, and leaves other bodies alone', async () => {
    const modes: string[] = [];
    for (const [type, status] of [['application/json', '200'], ['text/event-stream', '200'], ['text/plain', '202']] as const) {
      const s = client.open();
      await s.exchange(envoy.requestHeaders(POST('/weather/mcp')));
      await s.exchange(envoy.requestBody('{"jsonrpc":"2.0","id":1,"method":"ping"}'));
      const h = await s.exchange(envoy.responseHeaders({ ':status': status, 'content-type': type }));
      // Both body modes must be stated: Envoy takes an override's body modes literally.
      expect(BODY_MODES[Number(h.mode_override?.request_body_mode)]).toBe('BUFFERED');
      modes.push(BODY_MODES[Number(h.mode_override?.response_body_mode)] ?? 'missing');
      s.halfClose();
    }
    expect(modes).toEqual(['BUFFERED', 'STREAMED', 'NONE']);
  });

  it('matches a JSON response to its request on the same stream', async () => {
    const s = client.open();
    await s.exchange(envoy.requestHeaders(POST('/weather/mcp', { 'mcp-session-id': 'json-1' })));
    await s.exchange(envoy.requestBody('{"jsonrpc":"2.0","id":42,"method":"tools/list"}'));
    await s.exchange(envoy.responseHeaders({ ':status': '200', 'content-type': 'application/json' }));
    const r = await s.exchange(envoy.responseBody('{"jsonrpc":"2.0","id":42,"result":{"tools":[]}}', true));
    expect(r.response_body?.response?.body_mutation).toBeUndefined();
    expect(proc.events.find((e) => e.direction === 'server_to_client' && e.session === 'json-1')).toMatchObject({ answers: 'tools/list', correlation: 'stream' });
    s.halfClose();
  });

  it('records a call the upstream refused with an id-less JSON-RPC error as an upstream error', async () => {
    const s = client.open();
    await s.exchange(envoy.requestHeaders(POST('/weather/mcp', { 'mcp-session-id': 'up-400' })));
    await s.exchange(envoy.requestBody('{"jsonrpc":"2.0","id":"u1","method":"tools/call","params":{"name":"x"}}'));
    await s.exchange(envoy.responseHeaders({ ':status': '400', 'content-type': 'application/json' }));
    await s.exchange(envoy.responseBody('{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"Bad Request: Mcp-Session-Id header is required"}}', true));
    s.halfClose();
    await s.status;
    const record = (await proc.auditRecords()).find((r) => r['jsonrpc.request.id'] === 'u1');
    expect(record).toMatchObject({ 'mcp_ext_proc.outcome': 'upstream_error', 'http.response.status_code': 400 });
  });

  it('answers pipelined SSE chunks in order and forwards every byte exactly', async () => {
    const events = [
      'event: message\nid: 1_0\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}\n\n',
      ': keepalive\n\n',
      'event: message\nid: 1_1\ndata: {"jsonrpc":"2.0","id":5,"result":{"content":[{"type":"text","text":"naïve ☃ 日本"}]}}\n\n',
    ];
    const stream = Buffer.from(events.join(''), 'utf8');
    // Awkward boundaries: inside the JSON, between CR-free line ends, inside the multi-byte characters.
    const cuts = [3, 40, 41, 120, 150, stream.indexOf('☃') + 1, stream.indexOf('日') + 2, stream.length - 1];
    const chunks: Buffer[] = [];
    let at = 0;
    for (const c of cuts) {
      chunks.push(stream.subarray(at, c));
      at = c;
    }
    chunks.push(stream.subarray(at));

    const s = client.open();
    await s.exchange(envoy.requestHeaders(POST('/weather/mcp', { 'mcp-session-id': 'sse-1' })));
    await s.exchange(envoy.requestBody('{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"slow"}}'));
    await s.exchange(envoy.responseHeaders({ ':status': '200', 'content-type': 'text/event-stream' }));
    // Pipelined like Envoy in STREAMED mode: every chunk goes out before any answer is read.
    chunks.forEach((c, i) => s.send(envoy.responseBody(c, i === chunks.length - 1)));
    const forwarded: Buffer[] = [];
    for (const c of chunks) forwarded.push(forwardedBody(c, await s.next()));
    expect(Buffer.concat(forwarded).equals(stream)).toBe(true);
    const seen = proc.events.filter((e) => e.session === 'sse-1' && e.direction === 'server_to_client');
    expect(seen.map((e) => e.message.kind)).toEqual(['notification', 'result']);
    expect(seen[1]).toMatchObject({ answers: 'tools/call', correlation: 'stream', transport: 'sse' });
    s.halfClose();
  });

  it('flushes an event stream that ends in the middle of an event unchanged', async () => {
    const s = client.open();
    await s.exchange(envoy.requestHeaders(POST('/weather/mcp')));
    await s.exchange(envoy.requestBody('{"jsonrpc":"2.0","id":1,"method":"ping"}'));
    await s.exchange(envoy.responseHeaders({ ':status': '200', 'content-type': 'text/event-stream' }));
    const a = Buffer.from('event: message\ndata: {"jsonrpc":"2.0","id":1,');
    const b = Buffer.from('"result":{}');
    const out = [forwardedBody(a, await s.exchange(envoy.responseBody(a, false))), forwardedBody(b, await s.exchange(envoy.responseBody(b, true)))];
    expect(Buffer.concat(out).toString()).toBe(Buffer.concat([a, b]).toString());
    s.halfClose();
  });

  it('matches responses on the legacy SSE stream to requests POSTed on other streams', async () => {
    // GET /sse: the endpoint event names the session; responses to POSTs arrive here.
    const get = client.open();
    await get.exchange(envoy.requestHeaders({ ':method': 'GET', ':path': '/weather/sse', accept: 'text/event-stream' }, { endOfStream: true }));
    await get.exchange(envoy.responseHeaders({ ':status': '200', 'content-type': 'text/event-stream' }));
    await get.exchange(envoy.responseBody('event: endpoint\ndata: /weather/messages?sessionId=legacy-9\n\n', false));

    const post = client.open();
    await post.exchange(envoy.requestHeaders(POST('/weather/messages?sessionId=legacy-9')));
    await post.exchange(envoy.requestBody('{"jsonrpc":"2.0","id":3,"method":"prompts/get","params":{"name":"p"}}'));

    await get.exchange(envoy.responseBody('event: message\ndata: {"jsonrpc":"2.0","id":3,"result":{"description":"x","messages":[]}}\n\n', false));
    const answer = proc.events.find((e) => e.session === 'legacy-9' && e.direction === 'server_to_client');
    expect(answer).toMatchObject({ answers: 'prompts/get', correlation: 'shared_state' });
    get.cancel();
    post.cancel();
  });

  it('matches a response replayed on a resumed stream to the request of a dropped stream', async () => {
    const post = client.open();
    await post.exchange(envoy.requestHeaders(POST('/weather/mcp', { 'mcp-session-id': 'resume-1' })));
    await post.exchange(envoy.requestBody('{"jsonrpc":"2.0","id":"r1","method":"resources/read","params":{"uri":"file:///a"}}'));
    await post.exchange(envoy.responseHeaders({ ':status': '200', 'content-type': 'text/event-stream' }));
    await post.exchange(envoy.responseBody('id: 0_0\ndata:\n\n', false));
    post.cancel(); // the client dropped the stream before the response
    await new Promise((r) => setTimeout(r, 50));

    const resumed = client.open();
    await resumed.exchange(envoy.requestHeaders({ ':method': 'GET', ':path': '/weather/mcp', 'mcp-session-id': 'resume-1', 'last-event-id': '0_0' }, { endOfStream: true }));
    await resumed.exchange(envoy.responseHeaders({ ':status': '200', 'content-type': 'text/event-stream' }));
    await resumed.exchange(envoy.responseBody('id: 0_1\ndata: {"jsonrpc":"2.0","id":"r1","result":{"contents":[]}}\n\n', false));
    expect(proc.events.find((e) => e.session === 'resume-1' && e.direction === 'server_to_client')).toMatchObject({
      answers: 'resources/read',
      correlation: 'shared_state',
    });
    resumed.cancel();
  });
});

describe('failures inside the processor', () => {
  it('answers 500 with JSON-RPC -32603 instead of letting the request through', async () => {
    const failing = await startTestProcessor(GOVERNANCE, {
      handle: (ex, req) => {
        if (req.request === 'request_body') throw new TypeError('boom');
        return dispatch(ex, req);
      },
    });
    const c = connect(failing.grpcPort);
    try {
      const s = c.open();
      await s.exchange(envoy.requestHeaders(POST('/weather/mcp')));
      const res = immediateJson(await s.exchange(envoy.requestBody('{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"x"}}')));
      expect([res.status, res.body.error.code, res.body.error.data.code]).toEqual([500, -32603, 'ERR_INTERNAL']);
      // The internal message is not shown to the client.
      expect(res.body.error.message).not.toContain('boom');
      s.cancel();
    } finally {
      c.close();
      await failing.stop();
    }
  });

  it('keeps client errors and our own failures apart in the catalog', () => {
    const own = new GatewayError('ERR_INTERNAL', 'x');
    expect([own.spec.httpStatus, own.spec.rpcCode, own.spec.fault]).toEqual([500, -32603, 'server']);
  });
});
