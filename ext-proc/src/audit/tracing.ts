// One span per MCP call, continuing the W3C trace the request carries, so a security team can join each
// tool call to the trace of the LLM call that made it. Off by default: without an OTLP endpoint no SDK is
// loaded and a span is just a pair of ids for the audit record. With one, spans go to the collector over
// OTLP/HTTP (JSON encoding) through a batch processor.
//
// Attribute names follow the OpenTelemetry MCP semantic conventions (semantic-conventions-genai,
// docs/gen-ai/mcp.md); our own facts are under `mcp_ext_proc.*`, the namespace of our dynamic metadata.

import { randomFillSync } from 'node:crypto';
import { createRequire } from 'node:module';
import type { Attributes, Context, Span, SpanStatusCode } from '@opentelemetry/api';
import type { IdGenerator } from '@opentelemetry/sdk-trace';

export interface TraceContext {
  traceId: string;
  /** Undefined when only the trace is known: the span then starts the trace's local root. */
  parentSpanId: string | undefined;
  sampled: boolean;
}

export interface McpSpanAttributes {
  server: string;
  method: string;
  /** Tool or prompt name (`params.name`), or the resource URI for resources/* calls. */
  name?: string;
  rpcId?: string;
  /** Already hashed: the raw Mcp-Session-Id is a bearer-like secret and never leaves the processor. */
  sessionHash?: string;
  protocolVersion?: string;
  user?: string;
  agent?: string;
}

export interface McpSpanResult {
  outcome: string;
  rpcErrorCode?: number;
  /** `tool_error` for a result with isError, or our error code; marks the span as failed. */
  errorType?: string;
  decision?: 'allow' | 'deny';
  ruleId?: string;
}

export interface McpSpan {
  readonly traceId: string;
  readonly spanId: string;
  /** Ends the span; later calls do nothing (a call can be both answered and cancelled). */
  end(result: McpSpanResult): void;
}

export interface Tracer {
  startMcpSpan(parent: TraceContext | undefined, attrs: McpSpanAttributes, startTimeMs?: number): McpSpan;
  /** Flushes spans still queued. Rejects when they could not be delivered; the tracer is shut down either way. */
  shutdown(): Promise<void>;
}

export interface TracerOptions {
  /**
   * OTLP/HTTP collector URL. Undefined or empty: tracing is off. A URL with no path gets the standard
   * `/v1/traces` appended (`http://otel-collector:4318`); a URL with a path is used as it is.
   */
  otlpEndpoint: string | undefined;
  serviceName?: string;
  serviceVersion?: string;
  /** Extra HTTP headers on every export (e.g. a collector API key). */
  headers?: Record<string, string>;
}

// ---------------------------------------------------------------------------------------------------------
// traceparent (W3C Trace Context, https://www.w3.org/TR/trace-context/#traceparent-header)

const TRACEPARENT_LENGTH = 55; // "00-" + 32 + "-" + 16 + "-" + 2

/**
 * Parses a W3C traceparent header. Version 00 must be exactly four fields; a higher version may carry more
 * fields after a dash, and only its first four are read (as the spec asks). Lowercase hex only, version ff,
 * all-zero trace or parent ids are invalid. Optional whitespace around the value is ignored. Pure.
 */
export function parseTraceparent(header: string | undefined): TraceContext | undefined {
  if (header === undefined) return undefined;
  const h = header.trim();
  if (h.length < TRACEPARENT_LENGTH) return undefined;
  if (!isLowerHex(h, 0, 2) || (h.charCodeAt(0) === CHAR_F && h.charCodeAt(1) === CHAR_F)) return undefined;
  if (h.charCodeAt(2) !== CHAR_DASH || h.charCodeAt(35) !== CHAR_DASH || h.charCodeAt(52) !== CHAR_DASH) return undefined;
  if (!isLowerHex(h, 3, 35) || !isLowerHex(h, 36, 52) || !isLowerHex(h, 53, 55)) return undefined;
  if (isZero(h, 3, 35) || isZero(h, 36, 52)) return undefined;
  const version00 = h.charCodeAt(0) === CHAR_0 && h.charCodeAt(1) === CHAR_0;
  if (h.length > TRACEPARENT_LENGTH && (version00 || h.charCodeAt(TRACEPARENT_LENGTH) !== CHAR_DASH)) return undefined;
  return {
    traceId: h.slice(3, 35),
    parentSpanId: h.slice(36, 52),
    // Only the sampled bit (the lowest bit of the flags) is defined for every version.
    sampled: (hexValue(h.charCodeAt(54)) & 1) === 1,
  };
}

const CHAR_0 = 0x30;
const CHAR_9 = 0x39;
const CHAR_A = 0x61;
const CHAR_F = 0x66;
const CHAR_DASH = 0x2d;

function isLowerHex(s: string, start: number, end: number): boolean {
  for (let i = start; i < end; i++) {
    const c = s.charCodeAt(i);
    if (!((c >= CHAR_0 && c <= CHAR_9) || (c >= CHAR_A && c <= CHAR_F))) return false;
  }
  return true;
}

function isZero(s: string, start: number, end: number): boolean {
  for (let i = start; i < end; i++) if (s.charCodeAt(i) !== CHAR_0) return false;
  return true;
}

function hexValue(c: number): number {
  return c <= CHAR_9 ? c - CHAR_0 : c - CHAR_A + 10;
}

// ---------------------------------------------------------------------------------------------------------
// Ids: random bytes drawn from a pool refilled in one call, so a span costs two short strings and no
// Buffer. Trace ids are not secrets, but W3C asks for randomness in them; crypto gives it for free here.

const POOL_BYTES = 4096;
const pool = Buffer.allocUnsafe(POOL_BYTES);
let poolOffset = POOL_BYTES;

function randomHexId(bytes: 8 | 16): string {
  for (;;) {
    if (poolOffset + bytes > POOL_BYTES) {
      randomFillSync(pool);
      poolOffset = 0;
    }
    const start = poolOffset;
    poolOffset += bytes;
    // An all-zero id is invalid in W3C; draw again in that (1 in 2^64) case.
    for (let i = start; i < poolOffset; i++) if (pool[i] !== 0) return pool.toString('hex', start, poolOffset);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Off (and unsampled): ids only.

class IdOnlySpan implements McpSpan {
  readonly traceId: string;
  readonly spanId: string;
  constructor(traceId: string, spanId: string) {
    this.traceId = traceId;
    this.spanId = spanId;
  }
  end(): void {
    // Nothing recorded, nothing to end.
  }
}

function idOnlySpan(parent: TraceContext | undefined): McpSpan {
  return new IdOnlySpan(parent?.traceId ?? randomHexId(16), randomHexId(8));
}

const idOnlyTracer: Tracer = {
  startMcpSpan: (parent) => idOnlySpan(parent),
  shutdown: () => Promise.resolve(),
};

/** The tracer for the given options: ids only when no OTLP endpoint is set, exporting spans otherwise. */
export function createTracer(options: TracerOptions): Tracer {
  const endpoint = options.otlpEndpoint?.trim();
  if (endpoint === undefined || endpoint === '') return idOnlyTracer;
  return createOtlpTracer({ ...options, otlpEndpoint: tracesUrl(endpoint) });
}

function tracesUrl(endpoint: string): string {
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    throw new TypeError(`otlpEndpoint must be an http(s) URL, got "${endpoint}"`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new TypeError(`otlpEndpoint must be an http(s) URL, got "${endpoint}" (OTLP/gRPC is not supported; use the collector's OTLP/HTTP port, usually 4318)`);
  }
  if (url.pathname === '/' || url.pathname === '') url.pathname = '/v1/traces';
  return url.href;
}

// ---------------------------------------------------------------------------------------------------------
// On: the OpenTelemetry SDK, loaded only here. Loading it and the exporter costs ~150 ms of start-up and
// some megabytes, which a deployment that leaves tracing off should not pay; createRequire keeps
// createTracer synchronous. Nothing is registered globally: the provider is ours alone, and parents are
// passed explicitly, so no context manager is needed.

const load = createRequire(import.meta.url);
// require() gets the packages' CommonJS builds; their declarations match the ES module ones typed here.

function createOtlpTracer(options: TracerOptions & { otlpEndpoint: string }): Tracer {
  const otel = load('@opentelemetry/api') as typeof import('@opentelemetry/api');
  const sdk = load('@opentelemetry/sdk-trace') as typeof import('@opentelemetry/sdk-trace');
  const resources = load('@opentelemetry/resources') as typeof import('@opentelemetry/resources');
  const { OTLPTraceExporter } = load('@opentelemetry/exporter-trace-otlp-http') as typeof import('@opentelemetry/exporter-trace-otlp-http');

  // The SDK asks for the span id first, then (for a new trace only) the trace id. A TraceContext without
  // a parent span id still names the trace to continue: hand that id out when the SDK asks for one.
  let pendingTraceId: string | undefined;
  const ids: IdGenerator = {
    generateTraceId: () => pendingTraceId ?? randomHexId(16),
    generateSpanId: () => randomHexId(8),
  };

  const resource = resources
    .defaultResource()
    .merge(resources.resourceFromAttributes({
      'service.name': options.serviceName ?? 'mcp-ext-proc',
      ...(options.serviceVersion === undefined ? {} : { 'service.version': options.serviceVersion }),
    }))
    // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (e.g. k8s.pod.name from the downward API) win.
    .merge(resources.detectResources({ detectors: [resources.resourceAttributesEnvDetector, resources.serviceNameEnvDetector] }));

  const exporter = new OTLPTraceExporter({ url: options.otlpEndpoint, ...(options.headers === undefined ? {} : { headers: options.headers }) });
  const provider = new sdk.TracerProvider({
    resource,
    idGenerator: ids,
    // A parent that was not sampled never reaches the SDK (see startMcpSpan); every other span is recorded.
    sampler: new sdk.AlwaysOnSampler(),
    spanProcessors: [new sdk.BatchSpanProcessor({ exporter })],
  });
  const tracer = provider.getTracer('mcp-ext-proc', options.serviceVersion);
  // INTERNAL, not SERVER: we observe the exchange, the MCP server serves it. Backends that derive MCP
  // server latency or service maps from SERVER spans with mcp.* attributes would count us as a second server.
  const kind = otel.SpanKind.INTERNAL;
  const errorStatus = otel.SpanStatusCode.ERROR;

  let stopped: Promise<void> | undefined;
  return {
    startMcpSpan(parent, attrs, startTimeMs) {
      // The caller asked not to record this trace: ids only, and the SDK is not touched.
      if (parent !== undefined && !parent.sampled) return idOnlySpan(parent);
      const ctx: Context =
        parent?.parentSpanId === undefined
          ? otel.ROOT_CONTEXT
          : otel.trace.setSpanContext(otel.ROOT_CONTEXT, { traceId: parent.traceId, spanId: parent.parentSpanId, traceFlags: otel.TraceFlags.SAMPLED, isRemote: true });
      pendingTraceId = parent?.parentSpanId === undefined ? parent?.traceId : undefined;
      let span: Span;
      try {
        span = tracer.startSpan(spanName(attrs), { kind, attributes: startAttributes(attrs), ...(startTimeMs === undefined ? {} : { startTime: startTimeMs }) }, ctx);
      } finally {
        pendingTraceId = undefined;
      }
      return new RecordingSpan(span, errorStatus);
    },
    shutdown() {
      stopped ??= provider.shutdown().catch((err: unknown) => {
        throw new Error(`tracing: queued spans were not exported to ${options.otlpEndpoint}: ${describe(err)}`, { cause: err });
      });
      return stopped;
    },
  };
}

class RecordingSpan implements McpSpan {
  readonly traceId: string;
  readonly spanId: string;
  readonly #span: Span;
  readonly #errorStatus: SpanStatusCode;
  #ended = false;

  constructor(span: Span, errorStatus: SpanStatusCode) {
    const sc = span.spanContext();
    this.traceId = sc.traceId;
    this.spanId = sc.spanId;
    this.#span = span;
    this.#errorStatus = errorStatus;
  }

  end(result: McpSpanResult): void {
    if (this.#ended) return;
    this.#ended = true;
    const span = this.#span;
    span.setAttribute('mcp_ext_proc.outcome', result.outcome);
    if (result.decision !== undefined) span.setAttribute('mcp_ext_proc.decision', result.decision);
    if (result.ruleId !== undefined) span.setAttribute('mcp_ext_proc.rule', result.ruleId);
    // The conventions carry the JSON-RPC code as a string, and use it as error.type when nothing better names the failure.
    const rpcCode = result.rpcErrorCode === undefined ? undefined : String(result.rpcErrorCode);
    if (rpcCode !== undefined) span.setAttribute('rpc.response.status_code', rpcCode);
    const errorType = result.errorType ?? rpcCode;
    if (errorType !== undefined) {
      span.setAttribute('error.type', errorType);
      span.setStatus({ code: this.#errorStatus, message: errorType });
    }
    span.end();
  }
}

/** `{mcp.method.name} {target}`; the target is a tool or prompt name, never a resource URI (cardinality). */
function spanName(attrs: McpSpanAttributes): string {
  if (attrs.name !== undefined && (attrs.method === 'tools/call' || attrs.method === 'prompts/get')) return `${attrs.method} ${attrs.name}`;
  return attrs.method;
}

function startAttributes(attrs: McpSpanAttributes): Attributes {
  const a: Attributes = { 'mcp.method.name': attrs.method, 'mcp_ext_proc.server': attrs.server };
  if (attrs.name !== undefined) {
    if (attrs.method === 'tools/call') {
      a['gen_ai.tool.name'] = attrs.name;
      a['gen_ai.operation.name'] = 'execute_tool';
    } else if (attrs.method === 'prompts/get') {
      a['gen_ai.prompt.name'] = attrs.name;
    } else if (attrs.method.startsWith('resources/')) {
      a['mcp.resource.uri'] = attrs.name;
    }
  }
  if (attrs.rpcId !== undefined) a['jsonrpc.request.id'] = attrs.rpcId;
  if (attrs.sessionHash !== undefined) a['mcp.session.id'] = attrs.sessionHash;
  if (attrs.protocolVersion !== undefined) a['mcp.protocol.version'] = attrs.protocolVersion;
  if (attrs.user !== undefined) a['enduser.id'] = attrs.user;
  if (attrs.agent !== undefined) a['mcp_ext_proc.agent'] = attrs.agent;
  return a;
}

function describe(err: unknown): string {
  // The SDK rejects a failed flush with an array of errors.
  if (Array.isArray(err)) return err.map(describe).join('; ');
  return err instanceof Error ? err.message : String(err);
}
