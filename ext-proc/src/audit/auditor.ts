// One audit record per MCP message. A request opens a pending call (with its span) when the processor
// reads it; the call is finished — and written — when its response is seen, when the request is refused,
// or when the stream ends without a response. What is written is built from the same decision values
// that were enforced. Writing never waits on I/O: the sink buffers.

import { randomUUID } from 'node:crypto';
import type { Caller } from '../identity/principal.ts';
import type { RpcMessage } from '../mcp/jsonrpc.ts';
import type { Decision } from '../policy/types.ts';
import type { Metrics } from './metrics.ts';
import { hashSession, type AuditEvent, type AuditOutcome } from './record.ts';
import type { Redactor } from './redact.ts';
import type { AuditSink } from './sink.ts';
import type { McpSpan, TraceContext, Tracer } from './tracing.ts';

/** What an exchange knows about the HTTP request a message came in. */
export interface CallContext {
  readonly server: string;
  readonly session: string | undefined;
  readonly protocolVersion: string | undefined;
  readonly legacy: boolean;
  readonly caller: Caller | undefined;
  readonly requestId: string | undefined;
  readonly trace: TraceContext | undefined;
}

/** A request waiting for its response. Serializable (for responses that arrive on another stream). */
export interface PendingCall {
  readonly id: string;
  readonly time: string;
  readonly startedAtMs: number;
  readonly server: string;
  readonly sessionHash: string | undefined;
  readonly protocolVersion: string | undefined;
  readonly transport: AuditEvent['transport'];
  readonly method: string;
  readonly rpcId: string | undefined;
  readonly name: string | undefined;
  readonly arguments: unknown;
  readonly user: AuditEvent['user'];
  readonly agent: AuditEvent['agent'];
  readonly decision: AuditEvent['decision'];
  readonly requestId: string | undefined;
  readonly traceId: string | undefined;
  readonly spanId: string | undefined;
  readonly requestBytes: number | undefined;
  /** Set when the request went upstream: the upstream time is measured from here. */
  forwardedAtMs?: number | undefined;
}

export interface Finish {
  readonly outcome: AuditOutcome;
  readonly errorCode?: string | undefined;
  readonly rpcErrorCode?: number | undefined;
  readonly httpStatus?: number | undefined;
  readonly responseBytes?: number | undefined;
  readonly upstreamAtMs?: number | undefined;
  readonly decision?: Decision | undefined;
}

export interface AuditSettings {
  readonly salt: string;
  readonly includeEmail: boolean;
  readonly includeGroups: boolean;
}

export class Auditor {
  readonly #sink: AuditSink;
  readonly #tracer: Tracer;
  readonly #metrics: Metrics;
  readonly #redactor: () => Redactor;
  readonly #settings: () => AuditSettings;
  readonly #now: () => number;
  /** Spans of calls still open in this process, by record id. */
  readonly #spans = new Map<string, McpSpan>();

  constructor(deps: { sink: AuditSink; tracer: Tracer; metrics: Metrics; redactor: () => Redactor; settings: () => AuditSettings; now?: () => number }) {
    this.#sink = deps.sink;
    this.#tracer = deps.tracer;
    this.#metrics = deps.metrics;
    this.#redactor = deps.redactor;
    this.#settings = deps.settings;
    this.#now = deps.now ?? Date.now;
  }

  /** A client→server message was read. */
  begin(ctx: CallContext, m: RpcMessage, requestBytes: number | undefined, decision: Decision | undefined): PendingCall {
    const settings = this.#settings();
    const startedAtMs = this.#now();
    const method = m.method ?? (m.kind === 'result' || m.kind === 'error' ? 'response' : 'unknown');
    const u = ctx.caller?.user;
    const sessionHash = ctx.session === undefined ? undefined : hashSession(ctx.session, settings.salt);
    const span = this.#tracer.startMcpSpan(ctx.trace, {
      server: ctx.server,
      method,
      ...(m.name === undefined ? {} : { name: m.name }),
      ...(m.id === undefined ? {} : { rpcId: m.id }),
      ...(ctx.protocolVersion === undefined ? {} : { protocolVersion: ctx.protocolVersion }),
      ...(sessionHash === undefined ? {} : { sessionHash }),
      ...(u === undefined ? {} : { user: u.subject }),
      ...(ctx.caller === undefined ? {} : { agent: ctx.caller.agent.id }),
    }, startedAtMs);
    const args = m.method === 'tools/call' || m.method === 'prompts/get' ? m.params?.['arguments'] : m.method === 'completion/complete' ? m.params?.['argument'] : undefined;
    const call: PendingCall = {
      id: randomUUID(),
      time: new Date(startedAtMs).toISOString(),
      startedAtMs,
      server: ctx.server,
      sessionHash,
      protocolVersion: ctx.protocolVersion,
      transport: ctx.legacy ? 'sse_legacy' : 'streamable_http',
      method,
      rpcId: m.id,
      name: m.name,
      arguments: args === undefined ? undefined : this.#redactor().redact(ctx.server, m.name, args),
      user:
        u === undefined
          ? undefined
          : {
              subject: u.subject,
              issuer: u.issuer,
              ...(settings.includeEmail && u.email !== undefined ? { email: u.email } : {}),
              ...(settings.includeGroups ? { groups: u.groups } : {}),
            },
      agent:
        ctx.caller === undefined
          ? undefined
          : {
              id: ctx.caller.agent.id,
              ...(ctx.caller.agent.clientId === undefined ? {} : { clientId: ctx.caller.agent.clientId }),
              ...(ctx.caller.agent.spiffeId === undefined ? {} : { spiffeId: ctx.caller.agent.spiffeId }),
            },
      decision: decision === undefined ? undefined : { effect: decision.effect, ruleId: decision.ruleId, reason: decision.reason },
      requestId: ctx.requestId,
      traceId: span.traceId,
      spanId: span.spanId,
      requestBytes,
    };
    this.#spans.set(call.id, span);
    return call;
  }

  /** Writes the record of a call. */
  finish(call: PendingCall, f: Finish): void {
    const now = this.#now();
    const decision = f.decision === undefined ? call.decision : { effect: f.decision.effect, ruleId: f.decision.ruleId, reason: f.decision.reason };
    const event: AuditEvent = {
      time: call.time,
      id: call.id,
      requestId: call.requestId,
      traceId: call.traceId,
      spanId: call.spanId,
      server: call.server,
      sessionHash: call.sessionHash,
      protocolVersion: call.protocolVersion,
      transport: call.transport,
      method: call.method,
      rpcId: call.rpcId,
      name: call.name,
      arguments: call.arguments,
      user: call.user,
      agent: call.agent,
      decision,
      outcome: f.outcome,
      errorCode: f.errorCode,
      rpcErrorCode: f.rpcErrorCode,
      httpStatus: f.httpStatus,
      durationMs: now - call.startedAtMs,
      upstreamMs: call.forwardedAtMs !== undefined && f.upstreamAtMs !== undefined ? f.upstreamAtMs - call.forwardedAtMs : undefined,
      requestBytes: call.requestBytes,
      responseBytes: f.responseBytes,
    };
    this.#sink.write(event);
    this.#metrics.call({
      server: call.server,
      method: call.method,
      tool: call.method === 'tools/call' ? call.name : undefined,
      decision: decision?.effect ?? 'none',
      outcome: f.outcome,
      ruleId: decision?.ruleId,
      durationSeconds: (now - call.startedAtMs) / 1000,
    });
    const span = this.#spans.get(call.id);
    this.#spans.delete(call.id);
    const end = {
      outcome: f.outcome,
      ...(f.rpcErrorCode === undefined ? {} : { rpcErrorCode: f.rpcErrorCode }),
      ...(f.errorCode === undefined ? (f.outcome === 'tool_error' ? { errorType: 'tool_error' } : {}) : { errorType: f.errorCode }),
      ...(decision === undefined ? {} : { decision: decision.effect }),
      ...(decision?.ruleId === undefined ? {} : { ruleId: decision.ruleId }),
    };
    if (span !== undefined) span.end(end);
  }

  /** A call handed to another stream (legacy transport, resumption) leaves this process's span map. */
  release(call: PendingCall): void {
    this.#spans.get(call.id)?.end({ outcome: 'forwarded' });
    this.#spans.delete(call.id);
  }

  /** Everything written so far reaches the sink's destination (graceful shutdown). */
  async close(): Promise<void> {
    for (const span of this.#spans.values()) span.end({ outcome: 'cancelled' });
    this.#spans.clear();
    await this.#sink.close();
    await this.#tracer.shutdown();
  }
}

/** The outcome of a JSON-RPC response message. */
export function outcomeOf(m: RpcMessage): { outcome: AuditOutcome; rpcErrorCode?: number } {
  if (m.kind === 'error') return { outcome: 'jsonrpc_error', rpcErrorCode: m.error?.code ?? 0 };
  const isError = (m.result as { isError?: unknown } | undefined)?.isError === true;
  return { outcome: isError ? 'tool_error' : 'ok' };
}
