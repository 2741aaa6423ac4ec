// Trace context and spans: which traceparent headers continue a trace, what a span carries when tracing is
// off (ids only, no SDK, nothing keeping the process alive), and what a real OTLP/HTTP receiver gets when it
// is on. The receiver is a node:http server in this file; the exporter speaks OTLP/HTTP JSON to it.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { createTracer, parseTraceparent, type TraceContext } from '../../ext-proc/src/audit/tracing.ts';

const TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736';
const PARENT_ID = '00f067aa0ba902b7';
const TRACING_TS = fileURLToPath(new URL('../../ext-proc/src/audit/tracing.ts', import.meta.url));
const HEX32 = /^[0-9a-f]{32}$/;
const HEX16 = /^[0-9a-f]{16}$/;

describe('parseTraceparent', () => {
  const sampled = { traceId: TRACE_ID, parentSpanId: PARENT_ID, sampled: true };
  const unsampled = { ...sampled, sampled: false };
  const cases: [string, string | undefined, TraceContext | undefined][] = [
    ['reads a sampled version-00 header', `00-${TRACE_ID}-${PARENT_ID}-01`, sampled],
    ['reads an unsampled version-00 header', `00-${TRACE_ID}-${PARENT_ID}-00`, unsampled],
    ['reads only the sampled bit of the flags', `00-${TRACE_ID}-${PARENT_ID}-09`, sampled],
    ['treats unknown flag bits without the sampled bit as unsampled', `00-${TRACE_ID}-${PARENT_ID}-fe`, unsampled],
    ['ignores whitespace around the value', ` 00-${TRACE_ID}-${PARENT_ID}-01\t`, sampled],
    ['reads the first four fields of a future version with more fields', `cc-${TRACE_ID}-${PARENT_ID}-01-what-the-future-will-be-like`, sampled],
    ['reads a future version with exactly four fields', `cc-${TRACE_ID}-${PARENT_ID}-00`, unsampled],
    ['is absent without a header', undefined, undefined],
    ['rejects an empty header', '', undefined],
    ['rejects version ff', `ff-${TRACE_ID}-${PARENT_ID}-01`, undefined],
    ['rejects a version that is not hex', `zz-${TRACE_ID}-${PARENT_ID}-01`, undefined],
    ['rejects a one-character version', `0-${TRACE_ID}-${PARENT_ID}-01`, undefined],
    ['rejects extra fields on version 00', `00-${TRACE_ID}-${PARENT_ID}-01-extra`, undefined],
    ['rejects a future version whose flags run on without a dash', `cc-${TRACE_ID}-${PARENT_ID}-01x`, undefined],
    ['rejects a trace id one character short', `00-${TRACE_ID.slice(1)}-${PARENT_ID}-01`, undefined],
    ['rejects a trace id one character long', `00-${TRACE_ID}a-${PARENT_ID}-01`, undefined],
    ['rejects a parent id one character short', `00-${TRACE_ID}-${PARENT_ID.slice(1)}-01`, undefined],
    ['rejects a parent id one character long', `00-${TRACE_ID}-${PARENT_ID}0-01`, undefined],
    ['rejects one-character flags', `00-${TRACE_ID}-${PARENT_ID}-1`, undefined],
    ['rejects three-character flags', `00-${TRACE_ID}-${PARENT_ID}-011`, undefined],
    ['rejects an all-zero trace id', `00-${'0'.repeat(32)}-${PARENT_ID}-01`, undefined],
    ['rejects an all-zero parent id', `00-${TRACE_ID}-${'0'.repeat(16)}-01`, undefined],
    ['rejects an uppercase trace id', `00-${TRACE_ID.toUpperCase()}-${PARENT_ID}-01`, undefined],
    ['rejects an uppercase parent id', `00-${TRACE_ID}-${PARENT_ID.toUpperCase()}-01`, undefined],
    ['rejects uppercase flags', `00-${TRACE_ID}-${PARENT_ID}-0A`, undefined],
    ['rejects a non-hex character in the trace id', `00-${TRACE_ID.slice(0, 31)}g-${PARENT_ID}-01`, undefined],
    ['rejects other separators', `00_${TRACE_ID}_${PARENT_ID}_01`, undefined],
    ['rejects two headers joined by a comma', `00-${TRACE_ID}-${PARENT_ID}-01,00-${TRACE_ID}-${PARENT_ID}-01`, undefined],
  ];
  it.each(cases)('%s', (_name, header, expected) => {
    expect(parseTraceparent(header)).toEqual(expected);
  });
});

describe('tracing off (no OTLP endpoint)', () => {
  const tracer = createTracer({ otlpEndpoint: undefined });
  const attrs = { server: 'weather', method: 'tools/call', name: 'get_weather' };

  it('continues the parent trace with a new span id', () => {
    const span = tracer.startMcpSpan({ traceId: TRACE_ID, parentSpanId: PARENT_ID, sampled: true }, attrs);
    expect(span.traceId).toBe(TRACE_ID);
    expect(span.spanId).toMatch(HEX16);
    expect(span.spanId).not.toBe(PARENT_ID);
  });

  it('continues an unsampled parent trace too: the audit record still joins it', () => {
    const span = tracer.startMcpSpan({ traceId: TRACE_ID, parentSpanId: PARENT_ID, sampled: false }, attrs);
    expect(span.traceId).toBe(TRACE_ID);
  });

  it('continues a trace known without a parent span', () => {
    expect(tracer.startMcpSpan({ traceId: TRACE_ID, parentSpanId: undefined, sampled: true }, attrs).traceId).toBe(TRACE_ID);
  });

  it('starts a new random trace without a parent, so every record has a trace id', () => {
    const ids = new Set<string>();
    for (let i = 0; i < 1000; i++) {
      const span = tracer.startMcpSpan(undefined, attrs);
      expect(span.traceId).toMatch(HEX32);
      expect(span.traceId).not.toBe('0'.repeat(32));
      expect(span.spanId).toMatch(HEX16);
      ids.add(span.traceId).add(span.spanId);
    }
    expect(ids.size).toBe(2000);
  });

  it('ends and shuts down without doing anything', async () => {
    const span = tracer.startMcpSpan(undefined, attrs);
    span.end({ outcome: 'ok' });
    span.end({ outcome: 'cancelled' });
    await expect(tracer.shutdown()).resolves.toBeUndefined();
  });

  it('treats an empty endpoint (an unset environment variable) as off', () => {
    const before = process.getActiveResourcesInfo();
    const off = createTracer({ otlpEndpoint: '  ' });
    off.startMcpSpan(undefined, attrs).end({ outcome: 'ok' });
    expect(process.getActiveResourcesInfo()).toEqual(before);
  });

  it('starts no timer or handle while making spans', () => {
    const before = process.getActiveResourcesInfo();
    const t = createTracer({ otlpEndpoint: undefined });
    for (let i = 0; i < 10_000; i++) t.startMcpSpan(undefined, attrs).end({ outcome: 'ok' });
    expect(process.getActiveResourcesInfo()).toEqual(before);
  });

  it('loads no OpenTelemetry module and lets the process exit on its own', async () => {
    const script = `
      import { createRequire } from 'node:module';
      import { createTracer } from ${JSON.stringify(TRACING_TS)};
      const t = createTracer({ otlpEndpoint: undefined });
      for (let i = 0; i < 1000; i++) t.startMcpSpan(undefined, { server: 's', method: 'tools/list' }).end({ outcome: 'ok' });
      const loaded = Object.keys(createRequire(import.meta.url).cache).filter((k) => k.includes('@opentelemetry'));
      console.log(JSON.stringify({ loaded }));
    `;
    const run = await runNode(script);
    expect(run).toMatchObject({ code: 0, timedOut: false });
    expect(JSON.parse(run.stdout)).toEqual({ loaded: [] });
  });
});

describe('tracing on (OTLP/HTTP JSON to a local receiver)', () => {
  let receiver: Receiver | undefined;
  afterEach(async () => {
    await receiver?.close();
    receiver = undefined;
  });

  it('exports one span per call with the parent, name, kind and MCP attributes', async () => {
    receiver = await startReceiver();
    const tracer = createTracer({ otlpEndpoint: receiver.url, serviceName: 'mcp-ext-proc-test', serviceVersion: '9.9.9', headers: { 'x-api-key': 'collector-key' } });
    const startTimeMs = Date.now() - 250;
    const parent = parseTraceparent(`00-${TRACE_ID}-${PARENT_ID}-01`);
    const call = tracer.startMcpSpan(parent, {
      server: 'weather',
      method: 'tools/call',
      name: 'get_weather',
      rpcId: '7',
      sessionHash: 'sess-hash',
      protocolVersion: '2025-06-18',
      user: 'alice',
      agent: 'claude-desktop',
    }, startTimeMs);
    call.end({ outcome: 'ok', decision: 'allow', ruleId: 'weather-readers' });
    const list = tracer.startMcpSpan(undefined, { server: 'weather', method: 'tools/list', rpcId: '1' });
    list.end({ outcome: 'ok', decision: 'allow' });
    await tracer.shutdown();

    expect(receiver.requests.length).toBeGreaterThan(0);
    for (const r of receiver.requests) {
      expect(r.url).toBe('/v1/traces');
      expect(r.headers['content-type']).toBe('application/json');
      expect(r.headers['x-api-key']).toBe('collector-key');
    }
    const exported = receiver.spans();
    expect(exported).toHaveLength(2);

    const c = exported.find((s) => s.spanId === call.spanId);
    expect(c).toBeDefined();
    expect(call.traceId).toBe(TRACE_ID);
    expect(c).toMatchObject({ traceId: TRACE_ID, parentSpanId: PARENT_ID, name: 'tools/call get_weather', kind: SPAN_KIND_INTERNAL });
    expect(c?.startTimeUnixNano).toBe(String(BigInt(startTimeMs) * 1_000_000n));
    expect(c?.attributes).toEqual({
      'mcp.method.name': 'tools/call',
      'gen_ai.tool.name': 'get_weather',
      'gen_ai.operation.name': 'execute_tool',
      'jsonrpc.request.id': '7',
      'mcp.session.id': 'sess-hash',
      'mcp.protocol.version': '2025-06-18',
      'enduser.id': 'alice',
      'mcp_ext_proc.agent': 'claude-desktop',
      'mcp_ext_proc.server': 'weather',
      'mcp_ext_proc.outcome': 'ok',
      'mcp_ext_proc.decision': 'allow',
      'mcp_ext_proc.rule': 'weather-readers',
    });
    expect(c?.status.code ?? STATUS_UNSET).toBe(STATUS_UNSET);

    const l = exported.find((s) => s.spanId === list.spanId);
    expect(l).toMatchObject({ traceId: list.traceId, name: 'tools/list', kind: SPAN_KIND_INTERNAL });
    expect(l?.traceId).toMatch(HEX32);
    expect(l?.traceId).not.toBe(TRACE_ID);
    expect(l?.parentSpanId ?? '').toBe('');
    expect(l?.attributes).not.toHaveProperty('gen_ai.operation.name');

    expect(receiver.resources()[0]).toMatchObject({ 'service.name': 'mcp-ext-proc-test', 'service.version': '9.9.9' });
  });

  it('marks failed calls as errors with error.type and the JSON-RPC code', async () => {
    receiver = await startReceiver();
    const tracer = createTracer({ otlpEndpoint: receiver.url });
    const denied = tracer.startMcpSpan(undefined, { server: 'shell', method: 'tools/call', name: 'exec', rpcId: '3' });
    denied.end({ outcome: 'denied', rpcErrorCode: -32003, errorType: 'ERR_POLICY_DENIED', decision: 'deny', ruleId: 'no-shell' });
    const toolError = tracer.startMcpSpan(undefined, { server: 'shell', method: 'tools/call', name: 'ls' });
    toolError.end({ outcome: 'tool_error', errorType: 'tool_error', decision: 'allow' });
    const rpcError = tracer.startMcpSpan(undefined, { server: 'shell', method: 'resources/read', name: 'file:///etc/hosts' });
    rpcError.end({ outcome: 'jsonrpc_error', rpcErrorCode: -32602 });
    await tracer.shutdown();

    const byId = new Map(receiver.spans().map((s) => [s.spanId, s]));
    expect(byId.get(denied.spanId)).toMatchObject({
      name: 'tools/call exec',
      status: { code: STATUS_ERROR, message: 'ERR_POLICY_DENIED' },
      attributes: { 'error.type': 'ERR_POLICY_DENIED', 'rpc.response.status_code': '-32003', 'mcp_ext_proc.decision': 'deny', 'mcp_ext_proc.rule': 'no-shell' },
    });
    expect(byId.get(toolError.spanId)).toMatchObject({ status: { code: STATUS_ERROR }, attributes: { 'error.type': 'tool_error' } });
    expect(byId.get(toolError.spanId)?.attributes).not.toHaveProperty('rpc.response.status_code');
    // A resource URI names the target in an attribute, never in the span name.
    expect(byId.get(rpcError.spanId)).toMatchObject({
      name: 'resources/read',
      status: { code: STATUS_ERROR },
      attributes: { 'mcp.resource.uri': 'file:///etc/hosts', 'error.type': '-32602', 'rpc.response.status_code': '-32602' },
    });
  });

  it('records nothing for an unsampled parent but still continues its trace', async () => {
    receiver = await startReceiver();
    const tracer = createTracer({ otlpEndpoint: receiver.url });
    const span = tracer.startMcpSpan(parseTraceparent(`00-${TRACE_ID}-${PARENT_ID}-00`), { server: 'weather', method: 'tools/call', name: 'get_weather' });
    expect(span.traceId).toBe(TRACE_ID);
    expect(span.spanId).toMatch(HEX16);
    span.end({ outcome: 'ok' });
    const recorded = tracer.startMcpSpan(undefined, { server: 'weather', method: 'ping' });
    recorded.end({ outcome: 'ok' });
    await tracer.shutdown();
    expect(receiver.spans().map((s) => s.spanId)).toEqual([recorded.spanId]);
  });

  it('continues a trace known without a parent span as a local root of that trace', async () => {
    receiver = await startReceiver();
    const tracer = createTracer({ otlpEndpoint: receiver.url });
    const span = tracer.startMcpSpan({ traceId: TRACE_ID, parentSpanId: undefined, sampled: true }, { server: 'weather', method: 'initialize' });
    span.end({ outcome: 'ok' });
    const next = tracer.startMcpSpan(undefined, { server: 'weather', method: 'ping' });
    next.end({ outcome: 'ok' });
    await tracer.shutdown();
    const [first, second] = receiver.spans();
    expect(first).toMatchObject({ traceId: TRACE_ID, spanId: span.spanId });
    expect(first?.parentSpanId ?? '').toBe('');
    // The forced trace id does not leak into the next root span.
    expect(second?.traceId).not.toBe(TRACE_ID);
  });

  it('ends a span once even when it is ended twice', async () => {
    receiver = await startReceiver();
    const tracer = createTracer({ otlpEndpoint: receiver.url });
    const span = tracer.startMcpSpan(undefined, { server: 'weather', method: 'tools/call', name: 'get_weather' });
    span.end({ outcome: 'ok' });
    span.end({ outcome: 'cancelled', errorType: 'ERR_CANCELLED' });
    await tracer.shutdown();
    await tracer.shutdown();
    const spans = receiver.spans();
    expect(spans).toHaveLength(1);
    expect(spans[0]?.attributes['mcp_ext_proc.outcome']).toBe('ok');
  });

  it('posts to an endpoint path as given', async () => {
    receiver = await startReceiver();
    const tracer = createTracer({ otlpEndpoint: `${receiver.url}/otlp/v1/traces` });
    tracer.startMcpSpan(undefined, { server: 'weather', method: 'ping' }).end({ outcome: 'ok' });
    await tracer.shutdown();
    expect(receiver.requests.map((r) => r.url)).toEqual(['/otlp/v1/traces']);
  });

  it('rejects shutdown naming the endpoint when the collector refuses the spans', async () => {
    receiver = await startReceiver(400);
    const tracer = createTracer({ otlpEndpoint: receiver.url });
    tracer.startMcpSpan(undefined, { server: 'weather', method: 'ping' }).end({ outcome: 'ok' });
    await expect(tracer.shutdown()).rejects.toThrow(`tracing: queued spans were not exported to ${receiver.url}/v1/traces`);
  });

  it.each([
    ['not a url', 'otlpEndpoint must be an http(s) URL, got "not a url"'],
    ['grpc://collector:4317', 'otlpEndpoint must be an http(s) URL, got "grpc://collector:4317" (OTLP/gRPC is not supported'],
  ])('refuses the endpoint %j at start-up', (endpoint, message) => {
    expect(() => createTracer({ otlpEndpoint: endpoint })).toThrow(message);
  });

  it('lets the process exit after shutdown', async () => {
    receiver = await startReceiver();
    const script = `
      import { createTracer } from ${JSON.stringify(TRACING_TS)};
      const t = createTracer({ otlpEndpoint: ${JSON.stringify(receiver.url)} });
      t.startMcpSpan(undefined, { server: 's', method: 'tools/list' }).end({ outcome: 'ok' });
      await t.shutdown();
    `;
    expect(await runNode(script)).toMatchObject({ code: 0, timedOut: false });
    expect(receiver.spans()).toHaveLength(1);
  });
});

// ---------------------------------------------------------------------------------------------------------
// A minimal OTLP/HTTP JSON receiver.

const SPAN_KIND_INTERNAL = 1;
const STATUS_UNSET = 0;
const STATUS_ERROR = 2;

interface OtlpValue { stringValue?: string; intValue?: string | number; boolValue?: boolean; doubleValue?: number }
interface OtlpKeyValue { key: string; value: OtlpValue }
interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  startTimeUnixNano: string;
  attributes?: OtlpKeyValue[];
  status?: { code?: number; message?: string };
}
interface OtlpRequest {
  resourceSpans: { resource?: { attributes?: OtlpKeyValue[] }; scopeSpans: { spans: OtlpSpan[] }[] }[];
}
interface ExportedSpan extends Omit<OtlpSpan, 'attributes' | 'status'> {
  attributes: Record<string, unknown>;
  status: { code?: number; message?: string };
}

interface Receiver {
  url: string;
  requests: { url: string | undefined; headers: IncomingHttpHeaders; body: OtlpRequest }[];
  spans(): ExportedSpan[];
  resources(): Record<string, unknown>[];
  close(): Promise<void>;
}

function flatten(attrs: OtlpKeyValue[] | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const { key, value } of attrs ?? []) out[key] = value.stringValue ?? value.intValue ?? value.boolValue ?? value.doubleValue;
  return out;
}

async function startReceiver(status = 200): Promise<Receiver> {
  const requests: Receiver['requests'] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      requests.push({ url: req.url, headers: req.headers, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) as OtlpRequest });
      res.writeHead(status, { 'content-type': 'application/json' }).end(status === 200 ? '{}' : '{"code":3,"message":"refused by test"}');
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    spans: () =>
      requests.flatMap((r) =>
        r.body.resourceSpans.flatMap((rs) =>
          rs.scopeSpans.flatMap((ss) => ss.spans.map((s) => ({ ...s, attributes: flatten(s.attributes), status: s.status ?? {} }))),
        ),
      ),
    resources: () => requests.flatMap((r) => r.body.resourceSpans.map((rs) => flatten(rs.resource?.attributes))),
    close: async () => {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}

/** Runs an ES module in a fresh Node process; a process kept alive by a handle hits the timeout. */
async function runNode(source: string, timeoutMs = 10_000): Promise<{ code: number | null; stdout: string; stderr: string; timedOut: boolean }> {
  const child = spawn(process.execPath, ['--input-type=module', '-e', source], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGKILL');
  }, timeoutMs);
  const [code] = (await once(child, 'exit')) as [number | null];
  clearTimeout(timer);
  return { code, stdout, stderr, timedOut };
}
