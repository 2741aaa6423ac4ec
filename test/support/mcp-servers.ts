// Real MCP servers for the end-to-end tier, built with the official TypeScript SDK and served on
// 127.0.0.1 with an ephemeral port. Every server serves the same deterministic content (tools,
// prompts, 25 paginated resources, a resource template, completions) so that a transcript taken
// directly and one taken through Envoy + the processor can be compared byte for byte.
//
// Each server listens under a caller-given path prefix, because the Envoy in front routes by path
// prefix without rewriting paths:
//   Streamable HTTP (JSON or SSE answers)  ${pathPrefix}/mcp         POST, GET, DELETE
//   legacy HTTP+SSE (2024-11-05)           ${pathPrefix}/sse         GET (the stream)
//                                          ${pathPrefix}/messages    POST ?sessionId=…
//   server-everything (child process)      /mcp, or /sse + /message  (its own fixed paths)
//
// `received` records every JSON-RPC message a server took in (and every HTTP request), so a test
// can prove that a request the processor rejected never reached the server.
//
// Downstream credentials. A Streamable HTTP server can check the credential each HTTP request carries,
// before any MCP handling, like a real resource server behind the gateway: `verifyTokens` verifies the
// bearer JWT with jose against an issuer's JWKS (signature, issuer, audience, exp), and `requireBearer`
// demands one exact Authorization header value (a static secret). A request that fails is answered
// 401 with `WWW-Authenticate: Bearer error="invalid_token"` and a small JSON body, and never reaches the
// MCP layer; its HTTP record still shows what arrived (the authorization header, and with
// verifyTokens the verification outcome). Every server's `rejectAllTokens(true)` refuses every request
// that way until turned off, to play a downstream that revoked the credential it was given.

import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { createServer, request as httpRequest } from 'node:http';
import type { IncomingMessage, Server as HttpServer, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { McpServer, ResourceTemplate } from '@modelcontextprotocol/sdk/server/mcp.js';
import { completable } from '@modelcontextprotocol/sdk/server/completable.js';
// The legacy HTTP+SSE transport is deprecated by the SDK, and served here on purpose: clients of
// the 2024-11-05 protocol still exist and must pass through Envoy unchanged.
import { SSEServerTransport } from '@modelcontextprotocol/sdk/server/sse.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import type { EventId, EventStore, StreamId } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { EmptyResultSchema, ErrorCode, ListResourcesRequestSchema, McpError } from '@modelcontextprotocol/sdk/types.js';
import type {
  CreateMessageRequest,
  JSONRPCMessage,
  MessageExtraInfo,
  RequestId,
  ServerNotification,
  ServerRequest,
} from '@modelcontextprotocol/sdk/types.js';
import type { RequestHandlerExtra } from '@modelcontextprotocol/sdk/shared/protocol.js';
import type { Transport } from '@modelcontextprotocol/sdk/shared/transport.js';
// zod is the SDK's peer dependency (schemas for tools and prompts); it is always installed with it.
import { z } from 'zod';
import { createRemoteJWKSet, errors as joseErrors, jwtVerify } from 'jose';
import type { JWTPayload, JWTVerifyGetKey } from 'jose';

// ---------------------------------------------------------------------------------------------
// Received log

export type ReceivedKind = 'request' | 'notification' | 'response' | 'error';

/** One JSON-RPC message as the server's MCP layer received it. */
export interface ReceivedMessage {
  readonly sessionId: string | undefined;
  readonly kind: ReceivedKind;
  readonly method: string | undefined;
  readonly id: RequestId | undefined;
  /** `params.name` (tools/call, prompts/get), when present. */
  readonly name: string | undefined;
  /** `params.uri` (resources/read, subscribe), when present. */
  readonly uri: string | undefined;
}

/** Outcome of verifying a request's bearer token (servers started with `verifyTokens`). */
export type TokenCheck =
  | { readonly valid: true; readonly claims: JWTPayload }
  | { readonly valid: false; readonly error: string };

/** What the server's credential checks made of a request, as recorded with it. */
export interface AuthOutcome {
  /** Only when the server verifies tokens (`verifyTokens`). */
  readonly token?: TokenCheck;
  /** Why the request was answered 401 before any MCP handling; absent when it got through. */
  readonly rejected?: string;
}

/** One HTTP request as the server's HTTP layer received it (before any MCP handling). */
export interface ReceivedHttpRequest extends AuthOutcome {
  readonly method: string;
  readonly path: string;
  readonly search: string;
  readonly sessionId: string | undefined;
  readonly lastEventId: string | undefined;
  /** The Authorization header the server received, if any. */
  readonly authorization: string | undefined;
  /** Every header, as Node joined them (lower-case names). */
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
}

export class ReceivedLog {
  readonly messages: ReceivedMessage[] = [];
  readonly http: ReceivedHttpRequest[] = [];

  recordMessage(sessionId: string | undefined, message: unknown): void {
    if (typeof message !== 'object' || message === null) return;
    const method = stringField(message, 'method');
    const idValue = (message as { id?: unknown }).id;
    const id = typeof idValue === 'string' || typeof idValue === 'number' ? idValue : undefined;
    const params = (message as { params?: unknown }).params;
    const kind: ReceivedKind =
      method !== undefined
        ? id !== undefined
          ? 'request'
          : 'notification'
        : 'error' in message
          ? 'error'
          : 'response';
    this.messages.push({
      sessionId,
      kind,
      method,
      id,
      name: typeof params === 'object' && params !== null ? stringField(params, 'name') : undefined,
      uri: typeof params === 'object' && params !== null ? stringField(params, 'uri') : undefined,
    });
  }

  recordHttp(req: IncomingMessage, url: URL, sessionId: string | undefined, auth: AuthOutcome = {}): void {
    const lastEventId = req.headers['last-event-id'];
    this.http.push({
      method: req.method ?? '',
      path: url.pathname,
      search: url.search,
      sessionId,
      lastEventId: typeof lastEventId === 'string' ? lastEventId : undefined,
      authorization: req.headers.authorization,
      headers: { ...req.headers },
      ...(auth.token === undefined ? {} : { token: auth.token }),
      ...(auth.rejected === undefined ? {} : { rejected: auth.rejected }),
    });
  }

  /** Requests received, optionally only those of one method (and one `params.name`). */
  requests(method?: string, name?: string): ReceivedMessage[] {
    return this.messages.filter(
      (m) =>
        m.kind === 'request' &&
        (method === undefined || m.method === method) &&
        (name === undefined || m.name === name),
    );
  }

  /** Whether a request of this method (and `params.name`) reached the server. */
  has(method: string, name?: string): boolean {
    return this.requests(method, name).length > 0;
  }

  /** Names of the tools called, in order. */
  toolCalls(): string[] {
    return this.requests('tools/call').map((m) => m.name ?? '');
  }

  clear(): void {
    this.messages.length = 0;
    this.http.length = 0;
  }
}

function stringField(value: object, key: string): string | undefined {
  const field = (value as Record<string, unknown>)[key];
  return typeof field === 'string' ? field : undefined;
}

// ---------------------------------------------------------------------------------------------
// Public server handle

export interface McpTestServer {
  readonly name: string;
  readonly port: number;
  /** '' or '/something' (no trailing slash); every path the server serves starts with it. */
  readonly pathPrefix: string;
  /** The path an MCP client connects to: `${pathPrefix}/mcp` or `${pathPrefix}/sse`. */
  readonly endpointPath: string;
  readonly received: ReceivedLog;
  /** `http://127.0.0.1:<port><path>`; `path` is absolute (prefix included), default `endpointPath`. */
  url(path?: string): string;
  /** Sessions currently open (undefined for the child-process everything server). */
  openSessions(): number | undefined;
  /**
   * While on, every HTTP request is answered 401 `invalid_token` before any MCP handling, whatever
   * credential it carries (a downstream that revoked it); still recorded in `received.http`.
   */
  rejectAllTokens(on: boolean): void;
  close(): Promise<void>;
}

export interface PrefixOptions {
  /** '' (default) or a path starting with '/' and not ending with '/'. */
  pathPrefix?: string;
}

/** Where the bearer JWTs a server accepts come from, and whom they must be for. */
export interface VerifyTokensOptions {
  readonly jwksUri: string;
  /** Expected `iss`. */
  readonly issuer: string;
  /** Expected `aud` (the resource indicator tokens for this server are issued for). */
  readonly audience: string;
}

export interface StreamableServerOptions extends PrefixOptions {
  /** Interval of SSE keep-alive comments; 0 (default) disables them so stream bytes are deterministic. */
  keepAliveMs?: number;
  /**
   * Verify every request's `Authorization: Bearer <JWT>` against this JWKS, issuer and audience; a
   * missing or invalid token is answered 401. Each HTTP record then carries the outcome (`token`).
   */
  verifyTokens?: VerifyTokensOptions;
  /** The exact Authorization header value every request must carry (e.g. `Bearer s3cret`), else 401. */
  requireBearer?: string;
}

export interface StreamableSseServerOptions extends StreamableServerOptions {
  /** `retry:` advertised in priming events, used by clients to reconnect (default 100 ms). */
  retryIntervalMs?: number;
}

// ---------------------------------------------------------------------------------------------
// Deterministic demo content

export const DEMO_TOOL_NAMES = ['echo', 'add', 'slow_progress', 'ask_model', 'ask_user', 'big_id_echo', 'fail'] as const;
export const DEMO_PROMPT_NAMES = ['greeting', 'summarize'] as const;
export const DEMO_RESOURCE_COUNT = 25;
export const DEMO_RESOURCE_PAGE_SIZE = 10;
export const DEMO_RESOURCE_TEMPLATE = 'demo://item/{id}';
export const DEMO_INSTRUCTIONS = 'Deterministic MCP test server for mcp-ext-proc end-to-end tests.';
const GREETING_NAMES = ['Ada', 'Alan', 'Alonzo', 'Barbara', 'Grace'];
const ITEM_IDS = ['1', '2', '3', '10', '11', '42'];
const STANDALONE_WAIT_MS = 5_000;

export function demoResourceUri(index: number): string {
  return `demo://doc/${String(index).padStart(2, '0')}`;
}

interface DemoResource {
  readonly uri: string;
  readonly name: string;
  readonly title: string;
  readonly description: string;
  readonly mimeType: string;
  readonly text: string;
}

const DEMO_RESOURCES: readonly DemoResource[] = Array.from({ length: DEMO_RESOURCE_COUNT }, (_, i) => {
  const n = i + 1;
  return {
    uri: demoResourceUri(n),
    name: `doc-${String(n).padStart(2, '0')}`,
    title: `Document ${n}`,
    description: `Static document number ${n}`,
    mimeType: 'text/plain',
    text: `This is document ${n} of ${DEMO_RESOURCE_COUNT}.\nIts content never changes.`,
  };
});

function encodeCursor(offset: number): string {
  return Buffer.from(`offset:${offset}`, 'utf8').toString('base64url');
}

function decodeCursor(cursor: string): number {
  const match = /^offset:(\d+)$/.exec(Buffer.from(cursor, 'base64url').toString('utf8'));
  const offset = match?.[1] === undefined ? Number.NaN : Number(match[1]);
  if (!Number.isSafeInteger(offset) || offset <= 0 || offset >= DEMO_RESOURCES.length) {
    throw new McpError(ErrorCode.InvalidParams, `Invalid cursor: ${cursor}`);
  }
  return offset;
}

type ToolExtra = RequestHandlerExtra<ServerRequest, ServerNotification>;

/**
 * How server-to-client messages tied to a request travel. `related`: on the request's own stream
 * (Streamable HTTP answered with SSE, and the legacy single stream). `standalone`: on the GET
 * stream, because a Streamable HTTP server answering with JSON has no stream per request (the SDK
 * silently drops related notifications and requests in that mode).
 */
interface ServerToClientRoute {
  readonly related: boolean;
  /**
   * Whether `slow_progress` pings the client (on the notifications' stream) before returning, so
   * that every notification is delivered before the result: needed on the standalone route (the
   * notifications and the result travel on different streams) and on the legacy transport (the
   * SDK's legacy SSE client drops a progress notification that arrives in the same chunk as the
   * result). The Streamable HTTP client handles one stream's events in order, so the SSE server
   * needs none, and its tools/call streams hold only progress and the result.
   */
  readonly pingBeforeResult: boolean;
  /** Resolves once the session's standalone GET stream is open (standalone route only). */
  standaloneReady(): Promise<void>;
}

function relatedOptions(route: ServerToClientRoute, extra: ToolExtra): { relatedRequestId?: RequestId } {
  return route.related ? { relatedRequestId: extra.requestId } : {};
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function buildDemoServer(serverName: string, route: ServerToClientRoute): McpServer {
  const mcp = new McpServer(
    { name: serverName, title: `mcp-ext-proc test server (${serverName})`, version: '1.0.0' },
    { instructions: DEMO_INSTRUCTIONS },
  );

  mcp.registerTool(
    'echo',
    { title: 'Echo', description: 'Returns its text unchanged.', inputSchema: { text: z.string() } },
    ({ text }) => ({ content: [{ type: 'text', text }] }),
  );

  mcp.registerTool(
    'add',
    {
      title: 'Add',
      description: 'Adds two numbers.',
      inputSchema: { a: z.number(), b: z.number() },
      outputSchema: { sum: z.number() },
      annotations: { readOnlyHint: true, idempotentHint: true },
    },
    ({ a, b }) => ({
      content: [{ type: 'text', text: `${a} + ${b} = ${a + b}` }],
      structuredContent: { sum: a + b },
    }),
  );

  mcp.registerTool(
    'slow_progress',
    {
      description:
        'Sends `steps` progress notifications `delayMs` apart, then returns. With `closeStreamAfter`, ' +
        'the server closes the SSE stream after that many notifications (the client must resume).',
      inputSchema: {
        steps: z.number().int().min(1).max(100),
        delayMs: z.number().int().min(0).max(5_000).optional(),
        closeStreamAfter: z.number().int().min(1).optional(),
      },
    },
    async ({ steps, delayMs, closeStreamAfter }, extra) => {
      const progressToken = extra._meta?.progressToken;
      let sent = 0;
      for (let i = 1; i <= steps; i++) {
        await delay(delayMs ?? 20);
        if (progressToken === undefined) continue;
        const notification: ServerNotification = {
          method: 'notifications/progress',
          params: { progressToken, progress: i, total: steps, message: `step ${i} of ${steps}` },
        };
        if (!route.related) await route.standaloneReady();
        await mcp.server.notification(notification, relatedOptions(route, extra));
        sent++;
        if (closeStreamAfter === i) extra.closeSSEStream?.();
      }
      // The client answers the ping only after it handled everything sent before it.
      if (route.pingBeforeResult && sent > 0) await mcp.server.request({ method: 'ping' }, EmptyResultSchema, relatedOptions(route, extra));
      return { content: [{ type: 'text', text: `completed ${steps} steps, ${sent} progress notifications` }] };
    },
  );

  mcp.registerTool(
    'ask_model',
    {
      description: 'Asks the client to sample the model (sampling/createMessage) and returns its answer.',
      inputSchema: { prompt: z.string() },
    },
    async ({ prompt }, extra) => {
      const params: CreateMessageRequest['params'] = {
        messages: [{ role: 'user', content: { type: 'text', text: prompt } }],
        systemPrompt: 'Answer in one short sentence.',
        maxTokens: 64,
      };
      if (!route.related) await route.standaloneReady();
      const answer = await mcp.server.createMessage(params, relatedOptions(route, extra));
      const text = answer.content.type === 'text' ? answer.content.text : `[${answer.content.type}]`;
      return {
        content: [{ type: 'text', text: `model ${answer.model} (${answer.role}) said: ${text}` }],
      };
    },
  );

  mcp.registerTool(
    'ask_user',
    {
      description: 'Asks the user a question through form elicitation and returns the answer.',
      inputSchema: { question: z.string() },
    },
    async ({ question }, extra) => {
      if (!route.related) await route.standaloneReady();
      const answer = await mcp.server.elicitInput(
        {
          mode: 'form',
          message: question,
          requestedSchema: {
            type: 'object',
            properties: {
              answer: { type: 'string', title: 'Answer' },
              confident: { type: 'boolean', title: 'Confident' },
            },
            required: ['answer'],
          },
        },
        relatedOptions(route, extra),
      );
      return { content: [{ type: 'text', text: `user ${answer.action}: ${JSON.stringify(answer.content ?? null)}` }] };
    },
  );

  mcp.registerTool(
    'big_id_echo',
    {
      description: 'Echoes the JSON-RPC request id (and an optional number) exactly as the server parsed them.',
      inputSchema: { number: z.number().optional() },
    },
    ({ number }, extra) => {
      const echoed = {
        requestId: String(extra.requestId),
        requestIdType: typeof extra.requestId,
        ...(number === undefined ? {} : { number: String(number) }),
      };
      return { content: [{ type: 'text', text: JSON.stringify(echoed) }] };
    },
  );

  mcp.registerTool(
    'fail',
    { description: 'Always fails with a tool error result.', inputSchema: { reason: z.string() } },
    ({ reason }) => ({ isError: true, content: [{ type: 'text', text: `failed: ${reason}` }] }),
  );

  mcp.registerPrompt(
    'greeting',
    {
      title: 'Greeting',
      description: 'Greets someone by name.',
      argsSchema: {
        name: completable(z.string(), (value) => GREETING_NAMES.filter((n) => n.startsWith(value))),
      },
    },
    ({ name }) => ({
      messages: [{ role: 'user', content: { type: 'text', text: `Please greet ${name} warmly.` } }],
    }),
  );

  mcp.registerPrompt(
    'summarize',
    {
      title: 'Summarize',
      description: 'Summarizes a topic in a given style.',
      argsSchema: { topic: z.string(), style: z.string().optional() },
    },
    ({ topic, style }) => ({
      description: `Summary of ${topic}`,
      messages: [
        { role: 'user', content: { type: 'text', text: `Summarize ${topic} in a ${style ?? 'neutral'} style.` } },
        { role: 'assistant', content: { type: 'text', text: `Here is a ${style ?? 'neutral'} summary of ${topic}.` } },
      ],
    }),
  );

  for (const resource of DEMO_RESOURCES) {
    mcp.registerResource(
      resource.name,
      resource.uri,
      { title: resource.title, description: resource.description, mimeType: resource.mimeType },
      (uri) => ({ contents: [{ uri: uri.href, mimeType: resource.mimeType, text: resource.text }] }),
    );
  }

  mcp.registerResource(
    'item',
    new ResourceTemplate(DEMO_RESOURCE_TEMPLATE, {
      list: undefined,
      complete: { id: (value) => ITEM_IDS.filter((id) => id.startsWith(value)) },
    }),
    { title: 'Item', description: 'An item by numeric id.', mimeType: 'application/json' },
    (uri, variables) => {
      const id = variables['id'];
      if (typeof id !== 'string' || !/^\d+$/.test(id)) {
        throw new McpError(ErrorCode.InvalidParams, `Unknown item: ${uri.href}`);
      }
      return {
        contents: [{ uri: uri.href, mimeType: 'application/json', text: JSON.stringify({ id: Number(id), label: `item ${id}` }) }],
      };
    },
  );

  // McpServer answers resources/list with everything in one page; replace its handler with a
  // paginated one (same resources, same metadata) so that cursors are exercised.
  mcp.server.removeRequestHandler('resources/list');
  mcp.server.setRequestHandler(ListResourcesRequestSchema, (request) => {
    const cursor = request.params?.cursor;
    const offset = cursor === undefined ? 0 : decodeCursor(cursor);
    const end = offset + DEMO_RESOURCE_PAGE_SIZE;
    const resources = DEMO_RESOURCES.slice(offset, end).map(({ uri, name, title, description, mimeType }) => ({
      uri,
      name,
      title,
      description,
      mimeType,
    }));
    return end < DEMO_RESOURCES.length ? { resources, nextCursor: encodeCursor(end) } : { resources };
  });

  return mcp;
}

/** Records every message a connected transport hands to the MCP layer. */
function recordIncoming(transport: Transport, received: ReceivedLog): void {
  const inner = transport.onmessage;
  transport.onmessage = (message: JSONRPCMessage, extra?: MessageExtraInfo) => {
    received.recordMessage(transport.sessionId, message);
    inner?.(message, extra);
  };
}

// ---------------------------------------------------------------------------------------------
// Deterministic event store

interface StoredStream {
  readonly streamId: StreamId;
  readonly index: number;
  readonly events: { readonly id: EventId; readonly message: JSONRPCMessage }[];
}

/**
 * Event store for one session with deterministic ids `<streamIndex>_<counter>`: streams are
 * numbered in the order they first store an event (the SDK's own stream ids are random), events
 * within a stream from 0 (the priming event).
 */
export class DeterministicEventStore implements EventStore {
  readonly #streams = new Map<StreamId, StoredStream>();
  readonly #byEventId = new Map<EventId, { stream: StoredStream; position: number }>();

  storeEvent(streamId: StreamId, message: JSONRPCMessage): Promise<EventId> {
    let stream = this.#streams.get(streamId);
    if (stream === undefined) {
      stream = { streamId, index: this.#streams.size, events: [] };
      this.#streams.set(streamId, stream);
    }
    const id = `${stream.index}_${stream.events.length}`;
    this.#byEventId.set(id, { stream, position: stream.events.length });
    stream.events.push({ id, message });
    return Promise.resolve(id);
  }

  async replayEventsAfter(
    lastEventId: EventId,
    { send }: { send: (eventId: EventId, message: JSONRPCMessage) => Promise<void> },
  ): Promise<StreamId> {
    const found = this.#byEventId.get(lastEventId);
    if (found === undefined) throw new Error(`Unknown event id: ${lastEventId}`);
    for (const event of found.stream.events.slice(found.position + 1)) {
      // Priming events are stored as `{}`; they carry no message to replay.
      if (!('jsonrpc' in event.message)) continue;
      await send(event.id, event.message);
    }
    return found.stream.streamId;
  }
}

// ---------------------------------------------------------------------------------------------
// HTTP plumbing

function normalisePrefix(pathPrefix: string | undefined): string {
  const prefix = pathPrefix ?? '';
  if (prefix !== '' && (!prefix.startsWith('/') || prefix.endsWith('/'))) {
    throw new Error(`pathPrefix must be '' or start with '/' and not end with '/': ${JSON.stringify(prefix)}`);
  }
  return prefix;
}

function headerValue(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return typeof value === 'string' ? value : undefined;
}

function sendJsonRpcError(res: ServerResponse, status: number, code: number, message: string): void {
  if (res.headersSent) {
    res.end();
    return;
  }
  res.writeHead(status, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify({ jsonrpc: '2.0', error: { code, message }, id: null }));
}

function sendText(res: ServerResponse, status: number, text: string): void {
  if (res.headersSent) {
    res.end();
    return;
  }
  res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8' });
  res.end(text);
}

// ---------------------------------------------------------------------------------------------
// Credential checks (verifyTokens, requireBearer, rejectAllTokens)

/** The credential checks of one server, run on every HTTP request before anything else. */
class CredentialGate {
  readonly #verify: VerifyTokensOptions | undefined;
  readonly #jwks: JWTVerifyGetKey | undefined;
  readonly #requireBearer: string | undefined;
  #rejectAll = false;

  constructor(options: Pick<StreamableServerOptions, 'verifyTokens' | 'requireBearer'> = {}) {
    this.#verify = options.verifyTokens;
    this.#jwks = options.verifyTokens === undefined ? undefined : createRemoteJWKSet(new URL(options.verifyTokens.jwksUri));
    this.#requireBearer = options.requireBearer;
  }

  rejectAll(on: boolean): void {
    this.#rejectAll = on;
  }

  async check(req: IncomingMessage): Promise<AuthOutcome> {
    const authorization = req.headers.authorization;
    const problems: string[] = [];
    if (this.#requireBearer !== undefined && authorization !== this.#requireBearer) {
      problems.push(authorization === undefined ? 'missing Authorization header' : 'unexpected Authorization header');
    }
    let token: TokenCheck | undefined;
    if (this.#verify !== undefined && this.#jwks !== undefined) {
      token = await verifyBearer(authorization, this.#verify, this.#jwks);
      if (!token.valid) problems.push(token.error);
    }
    if (this.#rejectAll) problems.push('credential revoked (rejectAllTokens)');
    return {
      ...(token === undefined ? {} : { token }),
      ...(problems.length === 0 ? {} : { rejected: problems.join('; ') }),
    };
  }
}

async function verifyBearer(
  authorization: string | undefined,
  { issuer, audience }: VerifyTokensOptions,
  jwks: JWTVerifyGetKey,
): Promise<TokenCheck> {
  const match = authorization === undefined ? null : /^Bearer +(\S+) *$/i.exec(authorization);
  const token = match?.[1];
  if (token === undefined) {
    return { valid: false, error: authorization === undefined ? 'missing bearer token' : 'not a bearer token' };
  }
  try {
    const { payload } = await jwtVerify(token, jwks, { issuer, audience });
    return { valid: true, claims: payload };
  } catch (err) {
    const error = err instanceof joseErrors.JOSEError ? `${err.code}: ${err.message}` : String(err);
    return { valid: false, error };
  }
}

/** 401 for a request whose credential the server refuses; the request body is drained, not read. */
function sendInvalidToken(req: IncomingMessage, res: ServerResponse, description: string): void {
  req.resume();
  if (res.headersSent) {
    res.end();
    return;
  }
  res.writeHead(401, { 'Content-Type': 'application/json', 'WWW-Authenticate': 'Bearer error="invalid_token"' });
  res.end(JSON.stringify({ error: 'invalid_token', error_description: description }));
}

/** Runs the gate, records the request with its outcome; false (401 sent) when the request is refused. */
async function admit(
  gate: CredentialGate,
  received: ReceivedLog,
  req: IncomingMessage,
  res: ServerResponse,
  url: URL,
  sessionId: string | undefined,
): Promise<boolean> {
  const auth = await gate.check(req);
  received.recordHttp(req, url, sessionId, auth);
  if (auth.rejected === undefined) return true;
  sendInvalidToken(req, res, auth.rejected);
  return false;
}

async function listenHttp(
  handler: (req: IncomingMessage, res: ServerResponse) => Promise<void>,
): Promise<{ server: HttpServer; port: number }> {
  const server = createServer((req, res) => {
    handler(req, res).catch((error: unknown) => {
      sendJsonRpcError(res, 500, ErrorCode.InternalError, `Internal server error: ${String(error)}`);
    });
  });
  // Envoy keeps upstream connections open for long; a server closing an idle keep-alive connection
  // exactly when Envoy reuses it makes a request fail. Keep idle connections longer than a test.
  server.keepAliveTimeout = 120_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  return { server, port: (server.address() as AddressInfo).port };
}

async function closeHttp(server: HttpServer): Promise<void> {
  const closed = new Promise<void>((resolve) => server.close(() => { resolve(); }));
  server.closeAllConnections();
  await closed;
}

/** Calls `onOpen` once the response headers went out (the SDK writes them asynchronously). */
function whenHeadersSent(res: ServerResponse, onOpen: () => void): void {
  const check = (): void => {
    if (res.headersSent) onOpen();
    else if (!res.writableEnded && !res.destroyed) setImmediate(check);
  };
  check();
}

/** Tracks whether a session's standalone GET stream is open; tools wait for it. */
class StandaloneStream {
  #open = false;
  #waiters: (() => void)[] = [];

  opened(): void {
    this.#open = true;
    for (const waiter of this.#waiters.splice(0)) waiter();
  }

  closed(): void {
    this.#open = false;
  }

  ready(): Promise<void> {
    if (this.#open) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const waiter = (): void => {
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        reject(new McpError(ErrorCode.InternalError, 'No standalone SSE stream (GET) open for this session'));
      }, STANDALONE_WAIT_MS);
      this.#waiters.push(waiter);
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Streamable HTTP servers

interface StreamableSession {
  readonly mcp: McpServer;
  readonly transport: StreamableHTTPServerTransport;
  readonly standalone: StandaloneStream;
}

async function startStreamableServer(
  name: string,
  pathPrefix: string,
  json: boolean,
  options: StreamableSseServerOptions,
): Promise<McpTestServer> {
  const received = new ReceivedLog();
  const sessions = new Map<string, StreamableSession>();
  const endpointPath = `${pathPrefix}/mcp`;
  const gate = new CredentialGate(options);

  const newSession = async (): Promise<StreamableSession> => {
    const standalone = new StandaloneStream();
    const mcp = buildDemoServer(name, { related: !json, pingBeforeResult: json, standaloneReady: () => standalone.ready() });
    const transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      enableJsonResponse: json,
      keepAliveMs: options.keepAliveMs ?? 0,
      ...(json ? {} : { eventStore: new DeterministicEventStore(), retryInterval: options.retryIntervalMs ?? 100 }),
      onsessioninitialized: (sessionId) => {
        sessions.set(sessionId, session);
      },
    });
    const session: StreamableSession = { mcp, transport, standalone };
    mcp.server.onclose = () => {
      if (transport.sessionId !== undefined) sessions.delete(transport.sessionId);
    };
    await mcp.connect(transport);
    recordIncoming(transport, received);
    return session;
  };

  const handler = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const sessionId = headerValue(req, 'mcp-session-id');
    if (!(await admit(gate, received, req, res, url, sessionId))) return;
    if (url.pathname !== endpointPath) {
      sendText(res, 404, `Not found: ${url.pathname}`);
      return;
    }
    if (sessionId === undefined) {
      if (req.method !== 'POST') {
        sendJsonRpcError(res, 400, -32000, 'Bad Request: Mcp-Session-Id header is required');
        return;
      }
      // A POST without a session: a fresh session's transport accepts only initialize.
      const session = await newSession();
      await session.transport.handleRequest(req, res);
      if (session.transport.sessionId === undefined) await session.mcp.close();
      return;
    }
    const session = sessions.get(sessionId);
    if (session === undefined) {
      sendJsonRpcError(res, 404, -32001, 'Session not found');
      return;
    }
    if (req.method === 'GET' && json) {
      // Without an event store every GET is the standalone stream.
      whenHeadersSent(res, () => {
        if (res.statusCode === 200) {
          session.standalone.opened();
          res.once('close', () => { session.standalone.closed(); });
        }
      });
    }
    await session.transport.handleRequest(req, res);
  };

  const { server, port } = await listenHttp(handler);
  return {
    name,
    port,
    pathPrefix,
    endpointPath,
    received,
    url: (path = endpointPath) => `http://127.0.0.1:${port}${path}`,
    openSessions: () => sessions.size,
    rejectAllTokens: (on) => {
      gate.rejectAll(on);
    },
    close: async () => {
      await Promise.all([...sessions.values()].map((s) => s.mcp.close()));
      sessions.clear();
      await closeHttp(server);
    },
  };
}

/**
 * Streamable HTTP, stateful sessions, every POST answered with a single JSON body
 * (`enableJsonResponse: true`). Server-to-client messages (progress, sampling, elicitation)
 * travel on the standalone GET stream. Serves `${pathPrefix}/mcp`.
 */
export function startStreamableJsonServer(options: StreamableServerOptions = {}): Promise<McpTestServer> {
  return startStreamableServer('streamable-json', normalisePrefix(options.pathPrefix), true, options);
}

/**
 * Streamable HTTP, stateful sessions, every POST with a request answered as an SSE stream, with a
 * deterministic in-memory event store (`Last-Event-ID` resumption, priming events, `retry:`).
 * Serves `${pathPrefix}/mcp` (POST, GET standalone stream or resumption, DELETE).
 */
export function startStreamableSseServer(options: StreamableSseServerOptions = {}): Promise<McpTestServer> {
  return startStreamableServer('streamable-sse', normalisePrefix(options.pathPrefix), false, options);
}

// ---------------------------------------------------------------------------------------------
// Legacy HTTP+SSE server (protocol 2024-11-05)

/**
 * The deprecated HTTP+SSE transport: GET `${pathPrefix}/sse` opens the stream, whose first event
 * announces `${pathPrefix}/messages?sessionId=…`; the client POSTs its messages there (202).
 */
export async function startLegacySseServer(options: PrefixOptions = {}): Promise<McpTestServer> {
  const pathPrefix = normalisePrefix(options.pathPrefix);
  const name = 'legacy-sse';
  const received = new ReceivedLog();
  // eslint-disable-next-line @typescript-eslint/no-deprecated -- the legacy transport is the point
  const sessions = new Map<string, { mcp: McpServer; transport: SSEServerTransport }>();
  const ssePath = `${pathPrefix}/sse`;
  const messagesPath = `${pathPrefix}/messages`;
  const gate = new CredentialGate();

  const handler = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const sessionId = url.searchParams.get('sessionId') ?? undefined;
    if (!(await admit(gate, received, req, res, url, sessionId))) return;
    if (url.pathname === ssePath && req.method === 'GET') {
      // eslint-disable-next-line @typescript-eslint/no-deprecated -- the legacy transport is the point
      const transport = new SSEServerTransport(messagesPath, res);
      const mcp = buildDemoServer(name, { related: true, pingBeforeResult: true, standaloneReady: () => Promise.resolve() });
      sessions.set(transport.sessionId, { mcp, transport });
      mcp.server.onclose = () => {
        sessions.delete(transport.sessionId);
      };
      await mcp.connect(transport);
      recordIncoming(transport, received);
      return;
    }
    if (url.pathname === messagesPath && req.method === 'POST') {
      const session = sessionId === undefined ? undefined : sessions.get(sessionId);
      if (session === undefined) {
        sendText(res, 404, 'Session not found');
        return;
      }
      await session.transport.handlePostMessage(req, res);
      return;
    }
    if (url.pathname === ssePath || url.pathname === messagesPath) {
      res.setHeader('Allow', url.pathname === ssePath ? 'GET' : 'POST');
      sendText(res, 405, 'Method not allowed');
      return;
    }
    sendText(res, 404, `Not found: ${url.pathname}`);
  };

  const { server, port } = await listenHttp(handler);
  return {
    name,
    port,
    pathPrefix,
    endpointPath: ssePath,
    received,
    url: (path = ssePath) => `http://127.0.0.1:${port}${path}`,
    openSessions: () => sessions.size,
    rejectAllTokens: (on) => {
      gate.rejectAll(on);
    },
    close: async () => {
      await Promise.all([...sessions.values()].map((s) => s.mcp.close()));
      sessions.clear();
      await closeHttp(server);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// @modelcontextprotocol/server-everything, as a child process behind a recording proxy

export interface EverythingServerOptions {
  /** The everything server's transport: `streamableHttp` (default, `/mcp`) or `sse` (`/sse` + `/message`). */
  transport?: 'streamableHttp' | 'sse';
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => { resolve(); }));
  return port;
}

function everythingEntryPoint(): string {
  const require = createRequire(import.meta.url);
  return join(dirname(require.resolve('@modelcontextprotocol/server-everything/package.json')), 'dist', 'index.js');
}

/** Starts the child on `port`; resolves once it listens, rejects if it exits or stays silent. */
function spawnEverything(port: number, transport: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, [everythingEntryPoint(), transport], {
    env: { ...process.env, PORT: String(port) },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  return new Promise<ChildProcess>((resolve, reject) => {
    let stderr = '';
    let settled = false;
    const onError = (error: Error): void => {
      fail(`failed to spawn: ${error.message}`);
    };
    const onExit = (code: number | null, signal: NodeJS.Signals | null): void => {
      fail(`exited early (code ${code}, signal ${String(signal)})`);
    };
    const onData = (chunk: string): void => {
      stderr = (stderr + chunk).slice(-8_000);
      // streamableHttp: "MCP Streamable HTTP Server listening on port N"; sse: "Server is running on port N".
      if (/listening on port|running on port/.test(stderr)) settle();
    };
    const settle = (): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.off('error', onError);
      child.off('exit', onExit);
      // Keep draining stderr (the sse mode logs every connection there) without holding on to it.
      child.stderr.off('data', onData);
      child.stderr.resume();
      resolve(child);
    };
    const fail = (why: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`server-everything (${transport}, port ${port}) ${why}; stderr:\n${stderr}`));
    };
    const timer = setTimeout(() => { fail('did not start listening within 20 s'); }, 20_000);
    child.once('error', onError);
    child.once('exit', onExit);
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', onData);
  });
}

/** Records each JSON-RPC message in a POST body (a single message or a batch). */
function recordBody(received: ReceivedLog, body: Buffer, sessionId: string | undefined): void {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch {
    return;
  }
  for (const message of Array.isArray(parsed) ? (parsed as unknown[]) : [parsed]) {
    received.recordMessage(sessionId, message);
  }
}

/**
 * `@modelcontextprotocol/server-everything` run as a child process (`node dist/index.js
 * streamableHttp` with env `PORT`), fronted by an in-process pass-through HTTP proxy on an
 * ephemeral port that records what reaches it. The child serves fixed paths: `/mcp` in
 * streamableHttp mode, `/sse` + `/message` in sse mode (so `pathPrefix` is always '').
 * Its content is only partly deterministic: avoid the dynamic resource template (timestamps),
 * `get-env`, and its random event ids.
 */
export async function startEverythingServer(options: EverythingServerOptions = {}): Promise<McpTestServer> {
  const mode = options.transport ?? 'streamableHttp';
  let child: ChildProcess | undefined;
  let childPort = 0;
  let lastError: unknown;
  for (let attempt = 0; attempt < 3 && child === undefined; attempt++) {
    childPort = await freePort();
    try {
      child = await spawnEverything(childPort, mode);
    } catch (error) {
      lastError = error; // most likely the port was taken between probing and binding
    }
  }
  if (child === undefined) throw lastError;
  const running = child;
  const exited = new Promise<void>((resolve) => running.once('exit', () => { resolve(); }));

  const received = new ReceivedLog();
  const endpointPath = mode === 'sse' ? '/sse' : '/mcp';
  const gate = new CredentialGate();
  const handler = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const sessionId = headerValue(req, 'mcp-session-id') ?? url.searchParams.get('sessionId') ?? undefined;
    if (!(await admit(gate, received, req, res, url, sessionId))) return;
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks);
    if (req.method === 'POST') recordBody(received, body, sessionId);
    await new Promise<void>((resolve) => {
      const upstream = httpRequest(
        { host: '127.0.0.1', port: childPort, method: req.method, path: req.url, headers: req.headers },
        (upstreamRes) => {
          res.writeHead(upstreamRes.statusCode ?? 502, upstreamRes.rawHeaders);
          res.flushHeaders();
          upstreamRes.pipe(res);
          upstreamRes.once('end', resolve);
          upstreamRes.once('error', () => { res.destroy(); resolve(); });
        },
      );
      upstream.once('error', (error) => {
        if (res.headersSent) res.destroy();
        else sendText(res, 502, `everything server unreachable: ${error.message}`);
        resolve();
      });
      // A client that goes away (e.g. to resume later) must be seen going away by the server.
      res.once('close', () => {
        if (!res.writableFinished) upstream.destroy();
        resolve();
      });
      upstream.end(body);
    });
  };

  const { server, port } = await listenHttp(handler);
  return {
    name: `everything-${mode}`,
    port,
    pathPrefix: '',
    endpointPath,
    received,
    url: (path = endpointPath) => `http://127.0.0.1:${port}${path}`,
    openSessions: () => undefined,
    rejectAllTokens: (on) => {
      gate.rejectAll(on);
    },
    close: async () => {
      await closeHttp(server);
      if (running.exitCode === null && running.signalCode === null) {
        running.kill('SIGTERM');
        await exited;
      }
    },
  };
}
