// Client scenarios for the end-to-end tier. Each takes a URL (a server directly, or an Envoy
// listener in front of it: the paths are the same) and drives the SDK Client over the matching
// transport, returning a plain JSON transcript of everything the client saw. Two runs against the
// same server give equal transcripts (see test/e2e/mcp-servers-direct.test.ts), so a run through
// Envoy + the processor must give the same transcript as a direct run.
//
// Only what legitimately differs between two runs is normalised: session ids never enter a
// transcript (only whether one was issued); raw bodies are compared after normaliseSessionIds().

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { RequestOptions } from '@modelcontextprotocol/sdk/shared/protocol.js';
import type { Transport, TransportSendOptions } from '@modelcontextprotocol/sdk/shared/transport.js';
import {
  CallToolResultSchema,
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  McpError,
} from '@modelcontextprotocol/sdk/types.js';
import type {
  CreateMessageResult,
  ElicitResult,
  JSONRPCMessage,
  MessageExtraInfo,
  Progress,
} from '@modelcontextprotocol/sdk/types.js';
import { DEMO_RESOURCE_COUNT, DEMO_RESOURCE_TEMPLATE, demoResourceUri } from './mcp-servers.ts';

// ---------------------------------------------------------------------------------------------
// Transcript types

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Round-trips through JSON: drops undefined, turns class instances into plain data. */
export function toJson(value: unknown): Json {
  // JSON.stringify yields undefined for undefined (and functions), whatever its declared type says.
  const text = JSON.stringify(value) as string | undefined;
  return text === undefined ? null : (JSON.parse(text) as Json);
}

/** What a request ended with: its result, or the JSON-RPC error the client saw. */
export type Outcome = { result: Json } | { error: { code: number | null; message: string; data?: Json } };

export interface PageRecord {
  readonly cursor: string | null;
  readonly nextCursor: string | null;
  readonly count: number;
}

export interface ListingRecord {
  readonly pages: PageRecord[];
  readonly items: Json[];
}

/** A server-to-client request seen by the client's handler, and what the handler answered. */
export interface ServerRequestRecord {
  readonly method: string;
  readonly params: Json;
  readonly answer: Json;
}

export interface ToolCallRecord {
  readonly name: string;
  readonly arguments: Json;
  readonly outcome: Outcome;
  /** Progress notifications delivered to the call's onprogress, in order. */
  readonly progress: Json[];
  /** sampling/elicitation requests the server issued during the call, in order. */
  readonly serverRequests: ServerRequestRecord[];
}

export interface InitializeRecord {
  readonly protocolVersion: string | null;
  readonly serverInfo: Json;
  readonly capabilities: Json;
  readonly instructions: string | null;
}

export interface ScenarioTranscript {
  readonly transport: 'streamableHttp' | 'sse';
  readonly initialize: InitializeRecord;
  /** Whether the server issued an Mcp-Session-Id (Streamable HTTP). */
  readonly sessionIdIssued: boolean;
  readonly ping: Outcome;
  readonly tools: ListingRecord;
  readonly toolCalls: ToolCallRecord[];
  readonly prompts: ListingRecord;
  readonly promptGets: { name: string; arguments: Json; outcome: Outcome }[];
  readonly resources: ListingRecord;
  readonly resourceTemplates: ListingRecord;
  readonly resourceReads: { uri: string; outcome: Outcome }[];
  readonly completions: { ref: Json; argument: Json; outcome: Outcome }[];
  /** How the session ended: DELETE (Streamable HTTP) or closing the stream (legacy SSE). */
  readonly termination: { method: 'DELETE' | 'close'; sessionIdCleared: boolean };
}

// ---------------------------------------------------------------------------------------------
// Client plumbing

/**
 * Wraps a client transport and records every message it delivers to the Client, in arrival order
 * (the Client installs its handlers on the wrapper; the wrapper forwards).
 */
export class RecordingTransport implements Transport {
  readonly inner: Transport;
  readonly received: JSONRPCMessage[] = [];
  onclose?: () => void;
  onerror?: (error: Error) => void;
  // Generic because the SDK's Transport interface declares it so.
  // eslint-disable-next-line @typescript-eslint/no-unnecessary-type-parameters
  onmessage?: <T extends JSONRPCMessage>(message: T, extra?: MessageExtraInfo) => void;

  constructor(inner: Transport) {
    this.inner = inner;
    // eslint-disable-next-line @typescript-eslint/no-unnecessary-type-parameters -- as above
    inner.onmessage = <T extends JSONRPCMessage>(message: T, extra?: MessageExtraInfo) => {
      this.received.push(structuredClone(message));
      this.onmessage?.(message, extra);
    };
    inner.onclose = () => this.onclose?.();
    inner.onerror = (error: Error) => this.onerror?.(error);
  }

  get sessionId(): string | undefined {
    return this.inner.sessionId;
  }

  start(): Promise<void> {
    return this.inner.start();
  }

  send(message: JSONRPCMessage, options?: TransportSendOptions): Promise<void> {
    return this.inner.send(message, options);
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  setProtocolVersion(version: string): void {
    this.inner.setProtocolVersion?.(version);
  }
}

interface ScenarioClient {
  readonly client: Client;
  readonly recorder: RecordingTransport;
  /** Server-to-client requests seen since the last take(). */
  takeServerRequests(): ServerRequestRecord[];
}

function textOf(content: unknown): string {
  if (typeof content === 'object' && content !== null && 'text' in content && typeof content.text === 'string') {
    return content.text;
  }
  return '';
}

/** A Client that answers sampling and form elicitation deterministically and records both. */
function newScenarioClient(name: string, transport: Transport): ScenarioClient {
  const client = new Client(
    { name, version: '1.0.0' },
    { capabilities: { sampling: {}, elicitation: { form: {} } } },
  );
  const seen: ServerRequestRecord[] = [];
  client.setRequestHandler(CreateMessageRequestSchema, (request) => {
    const last = request.params.messages.at(-1);
    const answer: CreateMessageResult = {
      model: 'test-model-1',
      role: 'assistant',
      content: { type: 'text', text: `deterministic reply to: ${textOf(last?.content)}` },
      stopReason: 'endTurn',
    };
    seen.push({ method: request.method, params: toJson(request.params), answer: toJson(answer) });
    return answer;
  });
  client.setRequestHandler(ElicitRequestSchema, (request) => {
    const answer: ElicitResult = { action: 'accept', content: { answer: 'yes', confident: true } };
    seen.push({ method: request.method, params: toJson(request.params), answer: toJson(answer) });
    return answer;
  });
  // Errors the transport reports (e.g. a stream aborted on close) are not client-visible results.
  client.onerror = () => undefined;
  return {
    client,
    recorder: new RecordingTransport(transport),
    takeServerRequests: () => seen.splice(0),
  };
}

async function outcome(run: () => Promise<unknown>): Promise<Outcome> {
  try {
    return { result: toJson(await run()) };
  } catch (error) {
    if (error instanceof McpError) {
      return {
        error: {
          code: error.code,
          message: error.message,
          ...(error.data === undefined ? {} : { data: toJson(error.data) }),
        },
      };
    }
    return { error: { code: null, message: error instanceof Error ? error.message : String(error) } };
  }
}

async function listAll(
  fetchPage: (cursor: string | undefined) => Promise<{ nextCursor?: string | undefined }>,
  itemsOf: (page: object) => unknown[],
  maxPages = 50,
): Promise<ListingRecord> {
  const pages: PageRecord[] = [];
  const items: Json[] = [];
  let cursor: string | undefined;
  do {
    const page = await fetchPage(cursor);
    const pageItems = itemsOf(page);
    pages.push({ cursor: cursor ?? null, nextCursor: page.nextCursor ?? null, count: pageItems.length });
    items.push(...pageItems.map(toJson));
    cursor = page.nextCursor;
  } while (cursor !== undefined && pages.length < maxPages);
  return { pages, items };
}

async function callTool(
  sc: ScenarioClient,
  name: string,
  args: Record<string, unknown>,
  options: { withProgress?: boolean; timeoutMs?: number } = {},
): Promise<ToolCallRecord> {
  const progress: Json[] = [];
  sc.takeServerRequests();
  const requestOptions: RequestOptions = {
    ...(options.withProgress === true ? { onprogress: (p: Progress) => progress.push(toJson(p)) } : {}),
    ...(options.timeoutMs === undefined ? {} : { timeout: options.timeoutMs }),
  };
  const result = await outcome(() => sc.client.callTool({ name, arguments: args }, CallToolResultSchema, requestOptions));
  return { name, arguments: toJson(args), outcome: result, progress, serverRequests: sc.takeServerRequests() };
}

function initializeRecord(sc: ScenarioClient): InitializeRecord {
  let protocolVersion: string | null = null;
  for (const message of sc.recorder.received) {
    if ('result' in message && typeof message.result['protocolVersion'] === 'string') {
      protocolVersion = message.result['protocolVersion'];
      break;
    }
  }
  return {
    protocolVersion,
    serverInfo: toJson(sc.client.getServerVersion()),
    capabilities: toJson(sc.client.getServerCapabilities()),
    instructions: sc.client.getInstructions() ?? null,
  };
}

async function listings(sc: ScenarioClient): Promise<{
  tools: ListingRecord;
  prompts: ListingRecord;
  resources: ListingRecord;
  resourceTemplates: ListingRecord;
}> {
  const c = sc.client;
  const tools = await listAll((cursor) => c.listTools(cursor === undefined ? {} : { cursor }), (p) => (p as { tools: unknown[] }).tools);
  const prompts = await listAll((cursor) => c.listPrompts(cursor === undefined ? {} : { cursor }), (p) => (p as { prompts: unknown[] }).prompts);
  const resources = await listAll(
    (cursor) => c.listResources(cursor === undefined ? {} : { cursor }),
    (p) => (p as { resources: unknown[] }).resources,
  );
  const resourceTemplates = await listAll(
    (cursor) => c.listResourceTemplates(cursor === undefined ? {} : { cursor }),
    (p) => (p as { resourceTemplates: unknown[] }).resourceTemplates,
  );
  return { tools, prompts, resources, resourceTemplates };
}

// ---------------------------------------------------------------------------------------------
// Scenarios against the project's own demo servers (test/support/mcp-servers.ts)

export interface DemoScenarioOptions {
  /** Progress notifications asked of `slow_progress` (default 5). */
  progressSteps?: number;
}

async function runDemoScenario(
  transportKind: 'streamableHttp' | 'sse',
  transport: Transport,
  terminate: () => Promise<{ method: 'DELETE' | 'close'; sessionIdCleared: boolean }>,
  options: DemoScenarioOptions,
): Promise<ScenarioTranscript> {
  const sc = newScenarioClient(`mcp-ext-proc-e2e-${transportKind}`, transport);
  await sc.client.connect(sc.recorder);
  try {
    const initialize = initializeRecord(sc);
    const sessionIdIssued = sc.recorder.sessionId !== undefined;
    const ping = await outcome(() => sc.client.ping());
    const { tools, prompts, resources, resourceTemplates } = await listings(sc);

    const steps = options.progressSteps ?? 5;
    const toolCalls: ToolCallRecord[] = [
      await callTool(sc, 'echo', { text: 'hello through envoy' }),
      await callTool(sc, 'add', { a: 2, b: 40 }),
      await callTool(sc, 'slow_progress', { steps, delayMs: 10 }, { withProgress: true }),
      await callTool(sc, 'ask_model', { prompt: 'What is the capital of France?' }),
      await callTool(sc, 'ask_user', { question: 'Proceed with the deployment?' }),
      await callTool(sc, 'big_id_echo', { number: 12345 }),
      await callTool(sc, 'fail', { reason: 'on purpose' }),
      await callTool(sc, 'no_such_tool', {}),
      await callTool(sc, 'add', { a: 'not a number', b: 1 }),
    ];

    const promptGets = [];
    for (const [name, args] of [
      ['greeting', { name: 'Ada' }],
      ['summarize', { topic: 'the Model Context Protocol', style: 'terse' }],
      ['summarize', { topic: 'Envoy' }],
      ['no_such_prompt', {}],
    ] as const) {
      promptGets.push({ name, arguments: toJson(args), outcome: await outcome(() => sc.client.getPrompt({ name, arguments: args })) });
    }

    const resourceReads = [];
    for (const uri of [demoResourceUri(1), demoResourceUri(DEMO_RESOURCE_COUNT), 'demo://item/42', 'demo://nothing/here']) {
      resourceReads.push({ uri, outcome: await outcome(() => sc.client.readResource({ uri })) });
    }

    const completions = [];
    for (const [ref, argument] of [
      [{ type: 'ref/prompt', name: 'greeting' }, { name: 'name', value: 'Al' }],
      [{ type: 'ref/resource', uri: DEMO_RESOURCE_TEMPLATE }, { name: 'id', value: '1' }],
    ] as const) {
      completions.push({ ref: toJson(ref), argument: toJson(argument), outcome: await outcome(() => sc.client.complete({ ref, argument })) });
    }

    const termination = await terminate();
    return {
      transport: transportKind,
      initialize,
      sessionIdIssued,
      ping,
      tools,
      toolCalls,
      prompts,
      promptGets,
      resources,
      resourceTemplates,
      resourceReads,
      completions,
      termination,
    };
  } finally {
    await sc.client.close();
  }
}

/** The full demo scenario over Streamable HTTP (`url` ends in `/mcp`), ending with DELETE. */
export function runStreamableHttpScenario(url: string | URL, options: DemoScenarioOptions = {}): Promise<ScenarioTranscript> {
  const transport = new StreamableHTTPClientTransport(new URL(url));
  return runDemoScenario(
    'streamableHttp',
    transport,
    async () => {
      await transport.terminateSession();
      return { method: 'DELETE', sessionIdCleared: transport.sessionId === undefined };
    },
    options,
  );
}

/** The full demo scenario over the legacy HTTP+SSE transport (`url` ends in `/sse`). */
export function runLegacySseScenario(url: string | URL, options: DemoScenarioOptions = {}): Promise<ScenarioTranscript> {
  // eslint-disable-next-line @typescript-eslint/no-deprecated -- the legacy transport is the point
  const transport = new SSEClientTransport(new URL(url));
  return runDemoScenario(
    'sse',
    transport,
    async () => {
      await transport.close();
      return { method: 'close', sessionIdCleared: true };
    },
    options,
  );
}

// ---------------------------------------------------------------------------------------------
// Resumption (Streamable HTTP answered with SSE, with an event store)

export interface ResumedStreamRecord {
  /** The Last-Event-ID header of the GET that resumed the stream. */
  readonly lastEventId: string | null;
  /** Ids of the events the resumed stream delivered, in order. */
  readonly eventIds: string[];
  /** Every message the resumed stream delivered, in order. */
  readonly messages: Json[];
}

export interface ResumptionTranscript {
  readonly toolArguments: Json;
  /** Event ids (resumption tokens) the first client saw up to the disconnect: priming event first. */
  readonly tokensBeforeDisconnect: string[];
  readonly progressBeforeDisconnect: Json[];
  /** The Last-Event-ID the second client resumed from. */
  readonly lastEventId: string;
  /** Every message the second client received, in order (progress, the ping barrier, the result). */
  readonly messagesAfterReconnect: Json[];
  readonly resumedOutcome: Outcome;
  /** A second call whose stream the server closes mid-way; the SDK client reconnects by itself. */
  readonly serverClosedStream: { progress: Json[]; outcome: Outcome };
  /** Every GET the second client made with Last-Event-ID, as the bytes it received. */
  readonly resumedStreams: ResumedStreamRecord[];
}

export interface ResumptionScenarioOptions {
  /** Progress notifications of the long call (default 6). */
  steps?: number;
  /** Disconnect after this many progress notifications (default 2). */
  disconnectAfter?: number;
  /** Delay between progress notifications (default 150 ms, leaving time to disconnect). */
  delayMs?: number;
}

interface RecordedGet {
  readonly lastEventId: string | null;
  body: string;
  readonly done: Promise<void>;
}

/**
 * A fetch that tees every GET response body so the bytes the client received can be inspected
 * (the SDK reports no resumption tokens for a stream resumed through `resumptionToken`).
 */
function recordingGetFetch(gets: RecordedGet[]): (url: string | URL, init?: RequestInit) => Promise<Response> {
  return async (url, init) => {
    const response = await fetch(url, init);
    if ((init?.method ?? 'GET') !== 'GET' || response.body === null) return response;
    const [forClient, forRecord] = response.body.tee();
    const reader: ReadableStreamDefaultReader<Uint8Array> = forRecord.getReader();
    const decoder = new TextDecoder();
    const record: { lastEventId: string | null; body: string; done: Promise<void> } = {
      lastEventId: new Headers(init?.headers).get('last-event-id'),
      body: '',
      done: Promise.resolve(),
    };
    record.done = (async () => {
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          record.body += decoder.decode(value, { stream: true });
        }
      } catch {
        // the client went away; what was read is kept
      }
    })();
    gets.push(record);
    return new Response(forClient, { status: response.status, statusText: response.statusText, headers: response.headers });
  };
}

/**
 * Starts `slow_progress`, disconnects after `disconnectAfter` progress notifications, reconnects
 * with a new client on the same session sending `Last-Event-ID` (the SDK's `resumptionToken`), and
 * records what the resumed stream delivers. Then a call whose stream the server closes by itself
 * (`closeStreamAfter`), which the SDK client resumes with GET + Last-Event-ID on its own.
 */
export async function runResumptionScenario(
  url: string | URL,
  options: ResumptionScenarioOptions = {},
): Promise<ResumptionTranscript> {
  const steps = options.steps ?? 6;
  const disconnectAfter = options.disconnectAfter ?? 2;
  const args = { steps, delayMs: options.delayMs ?? 150 };
  const endpoint = new URL(url);

  const first = new StreamableHTTPClientTransport(endpoint);
  const a = newScenarioClient('mcp-ext-proc-e2e-resume-a', first);
  await a.client.connect(a.recorder);
  const sessionId = first.sessionId;
  const protocolVersion = first.protocolVersion;
  if (sessionId === undefined || protocolVersion === undefined) throw new Error('server issued no session id');

  const tokens: string[] = [];
  const progressBefore: Json[] = [];
  let disconnected!: () => void;
  const disconnect = new Promise<void>((resolve) => { disconnected = resolve; });
  const abandoned = a.client
    .callTool({ name: 'slow_progress', arguments: args }, CallToolResultSchema, {
      onresumptiontoken: (token) => tokens.push(token),
      onprogress: (p) => {
        if (progressBefore.length >= disconnectAfter) return;
        progressBefore.push(toJson(p));
        if (progressBefore.length === disconnectAfter) disconnected();
      },
    })
    .catch(() => undefined); // rejected with "Connection closed" when the client goes away
  await disconnect;
  await a.client.close();
  await abandoned;
  // Events carry ids from the priming event on: token k is the id of the k-th progress event,
  // whatever else the stream had already delivered before the client was closed.
  const tokensBefore = tokens.slice(0, disconnectAfter + 1);
  const lastEventId = tokensBefore.at(-1);
  if (lastEventId === undefined || tokensBefore.length !== disconnectAfter + 1) {
    throw new Error(`expected ${disconnectAfter + 1} event ids before the disconnect, got ${JSON.stringify(tokens)}`);
  }

  const gets: RecordedGet[] = [];
  const second = new StreamableHTTPClientTransport(endpoint, { sessionId, fetch: recordingGetFetch(gets) });
  second.setProtocolVersion(protocolVersion);
  const b = newScenarioClient('mcp-ext-proc-e2e-resume-b', second);
  await b.client.connect(b.recorder); // a transport with a session id skips initialize
  const resumedOutcome = await outcome(() =>
    b.client.request({ method: 'tools/call', params: { name: 'slow_progress', arguments: args } }, CallToolResultSchema, {
      resumptionToken: lastEventId,
    }),
  );
  const messagesAfter = b.recorder.received.map(toJson);

  // The server closes the stream after 2 notifications; the client reconnects with Last-Event-ID.
  const progress: Json[] = [];
  const polled = await outcome(() =>
    b.client.callTool({ name: 'slow_progress', arguments: { steps: 4, delayMs: 30, closeStreamAfter: 2 } }, CallToolResultSchema, {
      onprogress: (p) => progress.push(toJson(p)),
    }),
  );
  await second.terminateSession();
  await b.client.close();
  await Promise.all(gets.map((g) => g.done));

  return {
    toolArguments: toJson(args),
    tokensBeforeDisconnect: tokensBefore,
    progressBeforeDisconnect: progressBefore,
    lastEventId,
    messagesAfterReconnect: messagesAfter,
    resumedOutcome,
    serverClosedStream: { progress, outcome: polled },
    resumedStreams: gets.map((g) => {
      const events = parseSseEvents(g.body);
      return {
        lastEventId: g.lastEventId,
        eventIds: events.flatMap((e) => (e.id === undefined ? [] : [e.id])),
        messages: events.filter((e) => e.data !== '').map((e) => JSON.parse(e.data) as Json),
      };
    }),
  };
}

// ---------------------------------------------------------------------------------------------
// @modelcontextprotocol/server-everything

export interface EverythingTranscript {
  readonly initialize: InitializeRecord;
  readonly sessionIdIssued: boolean;
  readonly tools: ListingRecord;
  readonly toolCalls: ToolCallRecord[];
  readonly prompts: ListingRecord;
  readonly promptGets: { name: string; arguments: Json; outcome: Outcome }[];
  readonly resources: ListingRecord;
  readonly resourceTemplates: ListingRecord;
  readonly resourceReads: { uri: string; outcome: Outcome }[];
  readonly completions: { ref: Json; argument: Json; outcome: Outcome }[];
  readonly termination: { method: 'DELETE' | 'close'; sessionIdCleared: boolean };
}

/**
 * Drives `@modelcontextprotocol/server-everything` (`url` ends in `/mcp` for Streamable HTTP, or
 * `/sse` for its legacy mode), using only its deterministic features: its dynamic template
 * resources and `get-env` embed timestamps or the environment, so they are not read or called.
 */
export async function runEverythingScenario(url: string | URL): Promise<EverythingTranscript> {
  const endpoint = new URL(url);
  const legacy = endpoint.pathname.endsWith('/sse');
  const streamable = legacy ? undefined : new StreamableHTTPClientTransport(endpoint);
  // eslint-disable-next-line @typescript-eslint/no-deprecated -- its legacy mode is served by the legacy transport
  const transport: Transport = streamable ?? new SSEClientTransport(endpoint);
  const sc = newScenarioClient('mcp-ext-proc-e2e-everything', transport);
  await sc.client.connect(sc.recorder);
  try {
    const initialize = initializeRecord(sc);
    const sessionIdIssued = sc.recorder.sessionId !== undefined;
    const { tools, prompts, resources, resourceTemplates } = await listings(sc);
    const toolCalls: ToolCallRecord[] = [
      await callTool(sc, 'echo', { message: 'hello everything' }),
      await callTool(sc, 'get-sum', { a: 19, b: 23 }),
      await callTool(sc, 'get-structured-content', { location: 'New York' }),
      // Progress only over Streamable HTTP: the SDK's legacy SSE client drops a progress
      // notification that arrives in the same chunk as the result, so there it is timing-dependent.
      await callTool(sc, 'trigger-long-running-operation', { duration: 0.3, steps: 3 }, { withProgress: !legacy }),
      await callTool(sc, 'trigger-sampling-request', { prompt: 'Say hi', maxTokens: 20 }),
    ];
    const promptGets = [];
    for (const [name, args] of [
      ['simple-prompt', {}],
      ['args-prompt', { city: 'Lisbon', state: 'Lisboa' }],
      ['completable-prompt', { department: 'Engineering', name: 'Alice' }],
    ] as const) {
      promptGets.push({ name, arguments: toJson(args), outcome: await outcome(() => sc.client.getPrompt({ name, arguments: args })) });
    }
    const resourceReads = [];
    for (const item of resources.items.slice(0, 2)) {
      const uri = typeof item === 'object' && item !== null && !Array.isArray(item) ? item['uri'] : undefined;
      if (typeof uri === 'string') resourceReads.push({ uri, outcome: await outcome(() => sc.client.readResource({ uri })) });
    }
    const completions = [];
    for (const argument of [
      { name: 'department', value: 'S' },
      { name: 'department', value: 'E' },
    ]) {
      const ref = { type: 'ref/prompt', name: 'completable-prompt' } as const;
      completions.push({ ref: toJson(ref), argument: toJson(argument), outcome: await outcome(() => sc.client.complete({ ref, argument })) });
    }
    let termination: { method: 'DELETE' | 'close'; sessionIdCleared: boolean };
    if (streamable !== undefined) {
      await streamable.terminateSession();
      termination = { method: 'DELETE', sessionIdCleared: streamable.sessionId === undefined };
    } else {
      await transport.close();
      termination = { method: 'close', sessionIdCleared: true };
    }
    return {
      initialize,
      sessionIdIssued,
      tools,
      toolCalls,
      prompts,
      promptGets,
      resources,
      resourceTemplates,
      resourceReads,
      completions,
      termination,
    };
  } finally {
    await sc.client.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP

/** Response headers worth comparing direct vs proxied (hop-by-hop, length and date excluded). */
export const COMPARABLE_HEADERS = [
  'content-type',
  'cache-control',
  'x-accel-buffering',
  'allow',
  'mcp-session-id',
  'mcp-protocol-version',
  'www-authenticate',
  'location',
  'content-encoding',
] as const;

export const SESSION_ID_PLACEHOLDER = '<session-id>';

export interface RawExchange {
  readonly status: number;
  /** COMPARABLE_HEADERS present on the response; mcp-session-id reads SESSION_ID_PLACEHOLDER. */
  readonly headers: Record<string, string>;
  /** Every response header as received. */
  readonly allHeaders: Record<string, string>;
  /** The Mcp-Session-Id response header, if any. */
  readonly sessionId: string | undefined;
  readonly body: Buffer;
  /** False when reading stopped early (readUntil satisfied, or the timeout hit). */
  readonly complete: boolean;
}

export interface RawExchangeOptions {
  /** Stop reading (and abort the request) once this holds for the body read so far. */
  readUntil?: (body: Buffer) => boolean;
  /** Give up reading after this long (default 10 s); what was read is returned. */
  timeoutMs?: number;
}

/** One HTTP exchange with global fetch, keeping the body as bytes. */
export async function rawExchange(url: string | URL, init: RequestInit = {}, options: RawExchangeOptions = {}): Promise<RawExchange> {
  const controller = new AbortController();
  const timer = setTimeout(() => { controller.abort(); }, options.timeoutMs ?? 10_000);
  try {
    const response = await fetch(url, { ...init, signal: controller.signal });
    const allHeaders: Record<string, string> = {};
    response.headers.forEach((value, key) => {
      allHeaders[key] = value;
    });
    const headers: Record<string, string> = {};
    for (const name of COMPARABLE_HEADERS) {
      const value = response.headers.get(name);
      if (value !== null) headers[name] = name === 'mcp-session-id' ? SESSION_ID_PLACEHOLDER : value;
    }
    const chunks: Uint8Array[] = [];
    let complete = true;
    if (response.body !== null) {
      const reader: ReadableStreamDefaultReader<Uint8Array> = response.body.getReader();
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          chunks.push(value);
          if (options.readUntil?.(Buffer.concat(chunks)) === true) {
            complete = false;
            await reader.cancel();
            break;
          }
        }
      } catch (error) {
        if (!controller.signal.aborted) throw error;
        complete = false;
      }
    }
    return {
      status: response.status,
      headers,
      allHeaders,
      sessionId: response.headers.get('mcp-session-id') ?? undefined,
      body: Buffer.concat(chunks),
      complete,
    };
  } finally {
    clearTimeout(timer);
    controller.abort();
  }
}

/** Replaces every occurrence of the given session ids with SESSION_ID_PLACEHOLDER. */
export function normaliseSessionIds(body: Buffer | string, sessionIds: Iterable<string | undefined>): string {
  let text = typeof body === 'string' ? body : body.toString('utf8');
  for (const id of sessionIds) {
    if (id !== undefined && id !== '') text = text.split(id).join(SESSION_ID_PLACEHOLDER);
  }
  return text;
}

export interface SseEvent {
  readonly event: string | undefined;
  readonly id: string | undefined;
  readonly retry: number | undefined;
  readonly data: string;
}

/** Parses an SSE body into its events (comments and events without fields are skipped). */
export function parseSseEvents(body: Buffer | string): SseEvent[] {
  const text = typeof body === 'string' ? body : body.toString('utf8');
  const events: SseEvent[] = [];
  for (const block of text.split(/\r\n\r\n|\n\n|\r\r/)) {
    let event: string | undefined;
    let id: string | undefined;
    let retry: number | undefined;
    const data: string[] = [];
    let fields = 0;
    for (const line of block.split(/\r\n|\n|\r/)) {
      if (line === '' || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon === -1 ? line : line.slice(0, colon);
      const value = colon === -1 ? '' : line.slice(colon + 1).replace(/^ /, '');
      fields++;
      if (field === 'event') event = value;
      else if (field === 'id') id = value;
      else if (field === 'retry') retry = Number(value);
      else if (field === 'data') data.push(value);
    }
    if (fields > 0) events.push({ event, id, retry, data: data.join('\n') });
  }
  return events;
}

/** The JSON-RPC messages in a response body, whether answered as JSON or as SSE. */
export function messagesOf(exchange: RawExchange): unknown[] {
  const text = exchange.body.toString('utf8');
  if ((exchange.headers['content-type'] ?? '').startsWith('text/event-stream')) {
    return parseSseEvents(text)
      .filter((e) => e.data !== '')
      .map((e) => JSON.parse(e.data) as unknown);
  }
  if (text === '') return [];
  const parsed = JSON.parse(text) as unknown;
  return Array.isArray(parsed) ? (parsed as unknown[]) : [parsed];
}

export interface RawSession {
  readonly url: string;
  readonly sessionId: string;
  readonly protocolVersion: string;
  readonly initialize: RawExchange;
  /** Headers a client sends on a session request (Accept, Content-Type, session, protocol version). */
  headers(extra?: Record<string, string>): Record<string, string>;
  /** POSTs a message (an object, or a string sent verbatim, e.g. with a big id). */
  post(message: object | string, options?: RawExchangeOptions): Promise<RawExchange>;
  /** GETs the standalone stream, or resumes one with Last-Event-ID. */
  get(lastEventId?: string, options?: RawExchangeOptions): Promise<RawExchange>;
  /** Ends the session with DELETE. */
  terminate(): Promise<RawExchange>;
}

/**
 * Initializes a Streamable HTTP session with raw requests (initialize, then
 * notifications/initialized), for tests that compare bytes rather than transcripts.
 */
export async function openRawSession(url: string | URL, protocolVersion = '2025-11-25', extraHeaders: Record<string, string> = {}): Promise<RawSession> {
  const target = String(url);
  // extraHeaders (e.g. Authorization) go on every request of the session.
  const base = { accept: 'application/json, text/event-stream', 'content-type': 'application/json', ...extraHeaders };
  const initialize = await rawExchange(target, {
    method: 'POST',
    headers: base,
    body: JSON.stringify({
      jsonrpc: '2.0',
      id: 0,
      method: 'initialize',
      params: { protocolVersion, capabilities: {}, clientInfo: { name: 'mcp-ext-proc-e2e-raw', version: '1.0.0' } },
    }),
  });
  const sessionId = initialize.sessionId;
  const result = messagesOf(initialize).find((m): m is { result: { protocolVersion: string } } => {
    if (typeof m !== 'object' || m === null || !('result' in m)) return false;
    const r = m.result;
    return typeof r === 'object' && r !== null && 'protocolVersion' in r && typeof r.protocolVersion === 'string';
  });
  if (initialize.status !== 200 || sessionId === undefined || result === undefined) {
    throw new Error(`raw initialize failed: ${initialize.status} ${initialize.body.toString('utf8')}`);
  }
  const negotiated = result.result.protocolVersion;
  const headers = (extra: Record<string, string> = {}): Record<string, string> => ({
    ...base,
    'mcp-session-id': sessionId,
    'mcp-protocol-version': negotiated,
    ...extra,
  });
  const initialized = await rawExchange(target, {
    method: 'POST',
    headers: headers(),
    body: JSON.stringify({ jsonrpc: '2.0', method: 'notifications/initialized' }),
  });
  if (initialized.status !== 202) throw new Error(`notifications/initialized answered ${initialized.status}`);
  return {
    url: target,
    sessionId,
    protocolVersion: negotiated,
    initialize,
    headers,
    post: (message, options) =>
      rawExchange(
        target,
        { method: 'POST', headers: headers(), body: typeof message === 'string' ? message : JSON.stringify(message) },
        options,
      ),
    get: (lastEventId, options) =>
      rawExchange(
        target,
        {
          method: 'GET',
          headers: headers({ accept: 'text/event-stream', ...(lastEventId === undefined ? {} : { 'last-event-id': lastEventId }) }),
        },
        options,
      ),
    terminate: () => rawExchange(target, { method: 'DELETE', headers: headers() }),
  };
}
