// One HTTP exchange as the processor sees it: the state the phases of a single ext_proc stream share.
// Envoy opens one gRPC stream per HTTP request, so an Exchange lives exactly as long as its call.

import type { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import type { CompiledDocument, ServerSpec } from '../config/document.ts';
import { outcomeOf, type Auditor, type CallContext, type PendingCall } from '../audit/auditor.ts';
import type { Correlation, Direction, McpMessageEvent, Observer } from '../audit/events.ts';
import type { Metrics } from '../audit/metrics.ts';
import { parseTraceparent } from '../audit/tracing.ts';
import type { GatewayError } from '../errors.ts';
import type { RpcMessage } from '../mcp/jsonrpc.ts';
import type { SseParser } from '../mcp/sse.ts';
import { principalKey, type Caller } from '../identity/principal.ts';
import type { Revocations } from '../identity/revocation.ts';
import type { Credential, CredentialBroker } from '../credentials/broker.ts';
import type { TokenVerifier } from '../identity/verifier.ts';
import { keys, type SharedState } from '../state/store.ts';
import type { Decision } from '../policy/types.ts';
import type { Headers } from './headers.ts';

export interface ProcessorContext {
  readonly document: () => CompiledDocument;
  /** The verifier for the document in force; undefined when it has no identity section. */
  readonly verifier: () => TokenVerifier | undefined;
  readonly revocations: Revocations;
  readonly state: SharedState;
  /**
   * Runs a shared-state call for a check that matters (sessions): when the store is unreachable it
   * throws ERR_STATE_UNAVAILABLE in the closed failure mode, and yields undefined in the open one.
   */
  sharedStateCall<T>(call: () => Promise<T>): Promise<T | undefined>;
  readonly observer: Observer;
  /** Downstream credentials: what each request carries upstream in place of the caller's token. */
  readonly credentials: CredentialBroker;
  readonly auditor: Auditor;
  readonly metrics: Metrics;
  readonly log: Logger;
  /** How long shared state remembers a request whose response may come on another stream. */
  readonly correlationTtlSeconds: number;
  /** How long a session stays bound to its user without being presented again. */
  readonly sessionTtlSeconds: number;
  /** This replica's copy of session bindings it has seen (key → owner). */
  readonly sessionOwners: LRUCache<string, string>;
}

/** How long a credential lookup may run before Envoy is asked for more time (its message_timeout is ≥ 1 s). */
const ASK_FOR_TIME_AFTER_MS = 100;

/** A call stored in shared state by another stream; anything unreadable is treated as absent. */
function parsePendingCall(text: string): PendingCall | undefined {
  try {
    const v = JSON.parse(text) as PendingCall;
    return typeof v.id === 'string' && typeof v.method === 'string' ? v : undefined;
  } catch {
    return undefined;
  }
}

export class Exchange {
  readonly ctx: ProcessorContext;
  /** Server named by the gRPC initial metadata of this call (ExtProcPerRoute.grpc_initial_metadata). */
  readonly routeServerHeader: string | undefined;
  readonly startedAt = process.hrtime.bigint();

  server: ServerSpec | undefined;
  /** The authenticated user and agent, when the server requires authentication. */
  caller: Caller | undefined;
  requestHeaders: Headers = new Map();
  path = '';
  httpMethod = '';
  /** Mcp-Session-Id, or the legacy transport's sessionId query parameter. */
  session: string | undefined;
  legacy = false;
  /** The protocol version the request declared (MCP-Protocol-Version header), if any. */
  declaredVersion: string | undefined;

  /** What Envoy gets as dynamic metadata (namespace mcp_ext_proc): server, user, agent, method, tool, … */
  readonly meta: Record<string, string | undefined> = {};
  /** Requests sent on this stream that still await their response, by JSON-RPC id text. */
  readonly pending = new Map<string, PendingCall>();
  /** Status of the upstream response, and when its headers came. */
  responseStatus: number | undefined;
  upstreamAtMs: number | undefined;
  responseKind: 'json' | 'sse' | 'none' = 'none';
  /** The upstream response was seen to its end (Envoy sent end_of_stream). */
  responseComplete = false;
  responseEncoding: string | undefined;
  sse: SseParser | undefined;
  /** Bytes of earlier chunks held back by the SSE parser and not yet sent on. */
  heldBytes = 0;
  /** The downstream credential lookup started at request headers, awaited when the body is in. */
  credentialLookup: Promise<Credential> | undefined;
  credentialReady = false;
  /** The credential the upstream request went out with. */
  credential: Credential | undefined;
  /**
   * Asks Envoy for more time on the message being processed (override_message_timeout); set by the
   * stream loop. Envoy honours it once per message, up to its max_message_timeout.
   */
  askForTime: (ms: number) => void = () => undefined;

  constructor(ctx: ProcessorContext, routeServerHeader: string | undefined) {
    this.ctx = ctx;
    this.routeServerHeader = routeServerHeader;
  }

  get serverName(): string {
    return this.server?.name ?? '';
  }

  /** Binds a session the server just created to the caller who created it. */
  async bindSession(session: string): Promise<void> {
    if (this.caller === undefined) return;
    const owner = principalKey(this.caller.user);
    const key = keys.sessionOwner(this.serverName, session);
    await this.ctx.sharedStateCall(() => this.ctx.state.set(key, owner, this.ctx.sessionTtlSeconds));
    this.ctx.sessionOwners.set(key, owner);
  }

  /** What the audit trail needs to know about this HTTP request. */
  callContext(): CallContext {
    return {
      server: this.serverName,
      session: this.session,
      protocolVersion: this.declaredVersion,
      legacy: this.legacy,
      caller: this.caller,
      requestId: this.requestHeaders.get('x-request-id'),
      trace: parseTraceparent(this.requestHeaders.get('traceparent')),
    };
  }

  /** Opens the audit call of a client→server message. */
  begin(m: RpcMessage, requestBytes: number | undefined, decision: Decision | undefined): PendingCall {
    return this.ctx.auditor.begin(this.callContext(), m, requestBytes, decision);
  }

  /**
   * A client→server message goes upstream. Requests wait for their response; anything else is written
   * now. Legacy-transport requests are answered on the separate GET stream, often before the POST's own
   * 202 comes back, so they are in shared state before the body goes upstream.
   */
  async sawClientMessage(m: RpcMessage, call: PendingCall): Promise<void> {
    if (m.kind === 'request' && m.id !== undefined) {
      call.forwardedAtMs = Date.now();
      this.pending.set(m.id, call);
      if (this.legacy && this.session !== undefined) {
        await this.ctx.state.set(keys.request(this.serverName, this.session, m.id), JSON.stringify(call), this.ctx.correlationTtlSeconds);
      }
    } else {
      this.ctx.auditor.finish(call, { outcome: 'ok' });
    }
    this.emit('client_to_server', m, undefined, 'none', 'json');
  }

  /** Reports a server→client message, matching responses to the request they answer (returned). */
  async sawServerMessage(m: RpcMessage, transport: 'json' | 'sse', bytes: number): Promise<string | undefined> {
    if (m.kind !== 'result' && m.kind !== 'error') {
      // Requests from the server (sampling, elicitation, roots) are recorded; its notifications are not.
      if (m.kind === 'request') this.ctx.auditor.finish(this.ctx.auditor.begin(this.callContext(), m, bytes, undefined), { outcome: 'ok' });
      this.emit('server_to_client', m, undefined, 'none', transport);
      return undefined;
    }
    let call: PendingCall | undefined;
    let correlation: Correlation = 'none';
    const local = m.id === undefined ? undefined : this.pending.get(m.id);
    if (local !== undefined && m.id !== undefined) {
      this.pending.delete(m.id);
      call = local;
      correlation = 'stream';
    } else if (m.id !== undefined && this.session !== undefined) {
      const key = keys.request(this.serverName, this.session, m.id);
      const stored = await this.ctx.state.get(key);
      if (stored !== undefined) {
        call = parsePendingCall(stored);
        correlation = 'shared_state';
        await this.ctx.state.delete(key);
      }
    }
    let answers = call?.method;
    if (answers === undefined && m.kind === 'result') {
      answers = methodFromShape(m.result);
      if (answers !== undefined) correlation = 'shape';
    }
    if (call !== undefined) {
      this.ctx.auditor.finish(call, { ...outcomeOf(m), httpStatus: this.responseStatus, responseBytes: bytes, upstreamAtMs: this.upstreamAtMs });
    }
    if (answers === 'initialize' && this.session !== undefined) await this.rememberVersion(m.result);
    this.emit('server_to_client', m, answers, correlation, transport);
    return answers;
  }

  /** The upstream answered with no JSON-RPC to read (an HTTP error page, say): every open call ends here. */
  upstreamFailed(httpStatus: number, errorCode?: GatewayError['code']): void {
    for (const call of this.pending.values()) {
      this.ctx.auditor.finish(call, { outcome: 'upstream_error', httpStatus, upstreamAtMs: this.upstreamAtMs, ...(errorCode === undefined ? {} : { errorCode }) });
    }
    this.pending.clear();
  }

  /** Starts finding the credential this request will carry upstream (it overlaps with the body's arrival). */
  startCredentialLookup(server: ServerSpec): void {
    const authorization = this.requestHeaders.get('authorization');
    // authenticate() accepted it as "Bearer <token>" (any case, spaces or tabs around the token).
    const bearer = authorization === undefined ? undefined : authorization.slice(6).trim();
    const plan = server.credential;
    const actor = plan.kind === 'tokenExchange' && plan.actorTokenHeader !== undefined ? this.requestHeaders.get(plan.actorTokenHeader) : undefined;
    const found = this.ctx.credentials.obtain(server, this.caller, bearer, actor?.replace(/^bearer\s+/i, '').trim());
    if (!(found instanceof Promise)) {
      this.credential = found;
      this.credentialReady = true;
      return;
    }
    this.credentialLookup = found;
    // Settled before anyone awaits it (a failure is thrown where it is awaited, not reported as unhandled).
    found.then(
      () => {
        this.credentialReady = true;
      },
      () => {
        this.credentialReady = true;
      },
    );
  }

  /** The credential, once found; a slow lookup first asks Envoy to wait up to the token endpoint's timeout. */
  async awaitCredential(): Promise<Credential | undefined> {
    const lookup = this.credentialLookup;
    if (lookup !== undefined) {
      const plan = this.server?.credential;
      // A lookup still running after ASK_FOR_TIME_AFTER_MS is a token endpoint round trip, which may take
      // longer than Envoy's message_timeout allows: ask for the endpoint's timeout and a margin.
      const timer =
        !this.credentialReady && plan !== undefined && (plan.kind === 'tokenExchange' || plan.kind === 'clientCredentials')
          ? setTimeout(() => this.askForTime(plan.timeoutMs + 1000), ASK_FOR_TIME_AFTER_MS)
          : undefined;
      try {
        this.credential = await lookup;
      } finally {
        clearTimeout(timer);
      }
    }
    if (this.credential !== undefined) this.meta['credential'] = `${this.credential.strategy}/${this.credential.source}`;
    return this.credential;
  }

  /** A refusal that no denial has recorded yet gets its record here (on every path, never twice). */
  auditRefusal(err: GatewayError): void {
    if (err.audited) return;
    const m: RpcMessage = {
      kind: 'request',
      id: err.rpcId,
      method: this.meta['method'] ?? 'unknown',
      params: undefined,
      result: undefined,
      error: undefined,
      name: this.meta['name'],
    };
    const denied = err.code === 'ERR_POLICY_DENIED' || err.code === 'ERR_INSUFFICIENT_SCOPE' || err.code === 'ERR_SESSION_FOREIGN';
    this.ctx.auditor.finish(this.begin(m, undefined, undefined), {
      outcome: denied ? 'denied' : 'rejected',
      errorCode: err.code,
      rpcErrorCode: err.spec.rpcCode,
      httpStatus: err.spec.httpStatus,
    });
    for (const call of this.pending.values()) this.ctx.auditor.finish(call, { outcome: 'rejected', errorCode: err.code, httpStatus: err.spec.httpStatus });
    this.pending.clear();
  }

  /** The negotiated version decides, for example, whether a later batch is allowed. */
  private async rememberVersion(result: unknown): Promise<void> {
    const version = (result as { protocolVersion?: unknown } | undefined)?.protocolVersion;
    if (typeof version === 'string' && this.session !== undefined) {
      await this.ctx.state.set(keys.sessionVersion(this.serverName, this.session), version, this.ctx.correlationTtlSeconds);
    }
  }

  /**
   * The stream is over. A request whose response never came on it is recorded as cancelled (the client
   * went away) or unanswered. Legacy-transport requests are answered on the GET stream, and a dropped SSE
   * stream may be resumed, so those calls also wait in shared state: a late response there writes its
   * own record, with the same id.
   */
  async close(reason: 'ended' | 'cancelled'): Promise<void> {
    const writes: Promise<void>[] = [];
    for (const [id, call] of this.pending) {
      if (this.legacy) {
        this.ctx.auditor.release(call);
        continue;
      }
      // Envoy may close the stream cleanly when the client goes away; a response cut short is a cancellation.
      const cancelled = reason === 'cancelled' || (this.responseKind !== 'none' && !this.responseComplete);
      this.ctx.auditor.finish(call, { outcome: cancelled ? 'cancelled' : 'no_response', httpStatus: this.responseStatus });
      if (this.session !== undefined && this.responseKind === 'sse') {
        writes.push(this.ctx.state.set(keys.request(this.serverName, this.session, id), JSON.stringify(call), this.ctx.correlationTtlSeconds));
      }
    }
    this.pending.clear();
    await Promise.all(writes);
  }

  private emit(direction: Direction, message: RpcMessage, answers: string | undefined, correlation: Correlation, transport: 'json' | 'sse'): void {
    const event: McpMessageEvent = { server: this.serverName, session: this.session, direction, message, answers, correlation, transport };
    this.ctx.observer.message(event);
  }
}

/** Last resort for responses with no known request: what kind of result is this? */
export function methodFromShape(result: unknown): string | undefined {
  if (typeof result !== 'object' || result === null) return undefined;
  const r = result as Record<string, unknown>;
  if (Array.isArray(r['tools'])) return 'tools/list';
  if (Array.isArray(r['prompts'])) return 'prompts/list';
  if (Array.isArray(r['resourceTemplates'])) return 'resources/templates/list';
  if (Array.isArray(r['resources'])) return 'resources/list';
  if (typeof r['protocolVersion'] === 'string' && typeof r['serverInfo'] === 'object') return 'initialize';
  if (Array.isArray(r['content'])) return 'tools/call';
  if (Array.isArray(r['contents'])) return 'resources/read';
  if (Array.isArray(r['messages'])) return 'prompts/get';
  return undefined;
}
