// One HTTP exchange as the processor sees it: the state the phases of a single ext_proc stream share.
// Envoy opens one gRPC stream per HTTP request, so an Exchange lives exactly as long as its call.

import type { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import type { CompiledDocument, ServerSpec } from '../config/document.ts';
import type { Correlation, Direction, McpMessageEvent, Observer } from '../audit/events.ts';
import type { RpcMessage } from '../mcp/jsonrpc.ts';
import type { SseParser } from '../mcp/sse.ts';
import { principalKey, type Caller } from '../identity/principal.ts';
import type { Revocations } from '../identity/revocation.ts';
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
  readonly log: Logger;
  /** How long shared state remembers a request whose response may come on another stream. */
  readonly correlationTtlSeconds: number;
  /** How long a session stays bound to its user without being presented again. */
  readonly sessionTtlSeconds: number;
  /** This replica's copy of session bindings it has seen (key → owner). */
  readonly sessionOwners: LRUCache<string, string>;
}

interface PendingRequest {
  readonly method: string;
  readonly name: string | undefined;
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
  /** Policy decisions taken for this exchange's requests, in order. */
  readonly decisions: Decision[] = [];
  /** Requests sent on this stream that still await their response, by JSON-RPC id text. */
  readonly pending = new Map<string, PendingRequest>();
  responseKind: 'json' | 'sse' | 'none' = 'none';
  responseEncoding: string | undefined;
  sse: SseParser | undefined;
  /** Bytes of earlier chunks held back by the SSE parser and not yet sent on. */
  heldBytes = 0;

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

  /** Reports a client→server message and remembers requests so their responses can be matched. */
  async sawClientMessage(m: RpcMessage): Promise<void> {
    if (m.kind === 'request' && m.id !== undefined && m.method !== undefined) {
      this.pending.set(m.id, { method: m.method, name: m.name });
      // The legacy transport answers every POST on the separate GET stream, often before the POST's own
      // 202 comes back: the request must be in shared state before the body goes upstream.
      if (this.legacy && this.session !== undefined) {
        await this.ctx.state.set(keys.request(this.serverName, this.session, m.id), m.method, this.ctx.correlationTtlSeconds);
      }
    }
    this.emit('client_to_server', m, undefined, 'none', 'json');
  }

  /** Reports a server→client message, matching responses to the request they answer (returned). */
  async sawServerMessage(m: RpcMessage, transport: 'json' | 'sse'): Promise<string | undefined> {
    if (m.kind !== 'result' && m.kind !== 'error') {
      this.emit('server_to_client', m, undefined, 'none', transport);
      return undefined;
    }
    let answers: string | undefined;
    let correlation: Correlation = 'none';
    const local = m.id === undefined ? undefined : this.pending.get(m.id);
    if (local !== undefined && m.id !== undefined) {
      this.pending.delete(m.id);
      answers = local.method;
      correlation = 'stream';
    } else if (m.id !== undefined && this.session !== undefined) {
      const key = keys.request(this.serverName, this.session, m.id);
      answers = await this.ctx.state.get(key);
      if (answers !== undefined) {
        correlation = 'shared_state';
        await this.ctx.state.delete(key);
      }
    }
    if (answers === undefined && m.kind === 'result') {
      answers = methodFromShape(m.result);
      if (answers !== undefined) correlation = 'shape';
    }
    if (answers === 'initialize' && this.session !== undefined) await this.rememberVersion(m.result);
    this.emit('server_to_client', m, answers, correlation, transport);
    return answers;
  }

  /** The negotiated version decides, for example, whether a later batch is allowed. */
  private async rememberVersion(result: unknown): Promise<void> {
    const version = (result as { protocolVersion?: unknown } | undefined)?.protocolVersion;
    if (typeof version === 'string' && this.session !== undefined) {
      await this.ctx.state.set(keys.sessionVersion(this.serverName, this.session), version, this.ctx.correlationTtlSeconds);
    }
  }

  /**
   * The stream is over. Requests whose response never came on it (the client or server dropped an SSE
   * stream) may be answered on a resumed stream, so they move to shared state.
   */
  async close(): Promise<void> {
    if (this.session === undefined || this.pending.size === 0 || this.legacy) return;
    const session = this.session;
    const writes = [...this.pending].map(([id, p]) =>
      this.ctx.state.set(keys.request(this.serverName, session, id), p.method, this.ctx.correlationTtlSeconds),
    );
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
