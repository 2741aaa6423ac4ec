// The real MCP servers and client scenarios of the end-to-end tier, run directly (no Envoy): every
// scenario gives the same transcript twice in a row, so a transcript taken through Envoy + the
// processor can be compared with a direct one; and the transcripts hold what they are meant to.
// Servers asked to check credentials refuse a bad one with 401 before their MCP layer sees anything.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DEMO_RESOURCE_COUNT,
  DEMO_RESOURCE_PAGE_SIZE,
  DEMO_TOOL_NAMES,
  startEverythingServer,
  startLegacySseServer,
  startStreamableJsonServer,
  startStreamableSseServer,
} from '../support/mcp-servers.ts';
import type { McpTestServer } from '../support/mcp-servers.ts';
import {
  messagesOf,
  normaliseSessionIds,
  openRawSession,
  parseSseEvents,
  rawExchange,
  runEverythingScenario,
  runLegacySseScenario,
  runResumptionScenario,
  runStreamableHttpScenario,
  SESSION_ID_PLACEHOLDER,
} from '../support/mcp-scenarios.ts';
import type { Json, RawExchange, ScenarioTranscript, ToolCallRecord } from '../support/mcp-scenarios.ts';
import { ACCESS_TOKEN_TYPE, forgeToken, startIdp, TOKEN_EXCHANGE_GRANT } from '../support/idp.ts';
import type { Idp } from '../support/idp.ts';

const PROGRESS_STEPS = 5;

function toolCall(transcript: { toolCalls: ToolCallRecord[] }, name: string): ToolCallRecord {
  const call = transcript.toolCalls.find((c) => c.name === name);
  if (call === undefined) throw new Error(`no call of ${name} in the transcript`);
  return call;
}

function resultText(call: ToolCallRecord): string {
  expect(call.outcome).toHaveProperty('result');
  const result = (call.outcome as { result: { content: { text: string }[] } }).result;
  return result.content.map((c) => c.text).join('\n');
}

function expectedProgress(steps: number): Json[] {
  return Array.from({ length: steps }, (_, i) => ({ progress: i + 1, total: steps, message: `step ${i + 1} of ${steps}` }));
}

async function eventually(check: () => boolean, timeoutMs = 2_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Assertions shared by the three demo servers (same content, different transports). */
function describeDemoTranscript(label: string, get: () => { server: McpTestServer; first: ScenarioTranscript; second: ScenarioTranscript }): void {
  describe(`${label}: demo scenario`, () => {
    it('gives the same transcript on a second run (deterministic, so usable for differential tests)', () => {
      const { first, second } = get();
      expect(second).toEqual(first);
    });

    it('reports the server it initialized with', () => {
      const { server, first } = get();
      expect(first.initialize.protocolVersion).toBe('2025-11-25');
      expect(first.initialize.serverInfo).toMatchObject({ name: server.name, version: '1.0.0' });
      expect(first.initialize.capabilities).toMatchObject({ tools: {}, prompts: {}, resources: {}, completions: {} });
      expect(first.ping).toEqual({ result: {} });
    });

    it('lists every tool and answers plain calls', () => {
      const { first } = get();
      expect(first.tools.items.map((t) => (t as { name: string }).name)).toEqual([...DEMO_TOOL_NAMES]);
      expect(resultText(toolCall(first, 'echo'))).toBe('hello through envoy');
      expect(toolCall(first, 'add').outcome).toEqual({
        result: { content: [{ type: 'text', text: '2 + 40 = 42' }], structuredContent: { sum: 42 } },
      });
      expect(toolCall(first, 'fail').outcome).toMatchObject({ result: { isError: true } });
      expect(toolCall(first, 'no_such_tool').outcome).toMatchObject({ result: { isError: true } });
    });

    it('delivers every progress notification of a long call, in order, before its result', () => {
      const call = toolCall(get().first, 'slow_progress');
      expect(call.progress).toEqual(expectedProgress(PROGRESS_STEPS));
      expect(resultText(call)).toBe(`completed ${PROGRESS_STEPS} steps, ${PROGRESS_STEPS} progress notifications`);
    });

    it('relays the sampling request to the client and its answer back to the tool', () => {
      const call = toolCall(get().first, 'ask_model');
      expect(call.serverRequests).toHaveLength(1);
      expect(call.serverRequests[0]).toMatchObject({
        method: 'sampling/createMessage',
        params: { messages: [{ role: 'user', content: { type: 'text', text: 'What is the capital of France?' } }] },
      });
      expect(resultText(call)).toBe('model test-model-1 (assistant) said: deterministic reply to: What is the capital of France?');
    });

    it('relays the form elicitation to the client and its answer back to the tool', () => {
      const call = toolCall(get().first, 'ask_user');
      expect(call.serverRequests).toHaveLength(1);
      expect(call.serverRequests[0]).toMatchObject({ method: 'elicitation/create', params: { mode: 'form', message: 'Proceed with the deployment?' } });
      expect(resultText(call)).toBe('user accept: {"answer":"yes","confident":true}');
    });

    it('pages resources/list with cursors until the last page', () => {
      const { resources } = get().first;
      const pageCount = Math.ceil(DEMO_RESOURCE_COUNT / DEMO_RESOURCE_PAGE_SIZE);
      expect(resources.pages).toHaveLength(pageCount);
      expect(resources.pages.map((p) => p.count)).toEqual([10, 10, 5]);
      expect(resources.pages[0]?.cursor).toBeNull();
      for (let i = 1; i < pageCount; i++) expect(resources.pages[i]?.cursor).toBe(resources.pages[i - 1]?.nextCursor);
      expect(resources.pages.at(-1)?.nextCursor).toBeNull();
      expect(resources.items).toHaveLength(DEMO_RESOURCE_COUNT);
    });

    it('serves prompts, resource reads, the template and completions (errors included)', () => {
      const t = get().first;
      expect(t.prompts.items.map((p) => (p as { name: string }).name)).toEqual(['greeting', 'summarize']);
      expect(t.promptGets[0]?.outcome).toEqual({
        result: { messages: [{ role: 'user', content: { type: 'text', text: 'Please greet Ada warmly.' } }] },
      });
      expect(t.promptGets.at(-1)?.outcome).toMatchObject({ error: { code: -32602 } });
      expect(t.resourceTemplates.items).toEqual([expect.objectContaining({ uriTemplate: 'demo://item/{id}' })]);
      expect(t.resourceReads.map((r) => Object.keys(r.outcome)[0])).toEqual(['result', 'result', 'result', 'error']);
      expect(t.completions.map((c) => c.outcome)).toEqual([
        { result: { completion: { values: ['Alan', 'Alonzo'], total: 2, hasMore: false } } },
        { result: { completion: { values: ['1', '10', '11'], total: 3, hasMore: false } } },
      ]);
    });

    it('records each request that reached the server, by method and tool name', () => {
      const { server } = get();
      const calls = server.received.toolCalls();
      // Two runs, the same nine calls each.
      expect(calls).toHaveLength(18);
      expect(calls.slice(0, 9)).toEqual(calls.slice(9));
      expect(server.received.has('tools/call', 'ask_model')).toBe(true);
      expect(server.received.has('tools/call', 'never_called')).toBe(false);
      expect(server.received.requests('initialize')).toHaveLength(2);
    });
  });
}

describe('Streamable HTTP server answering with JSON', () => {
  let server: McpTestServer;
  let first: ScenarioTranscript;
  let second: ScenarioTranscript;
  beforeAll(async () => {
    server = await startStreamableJsonServer({ pathPrefix: '/json' });
    first = await runStreamableHttpScenario(server.url(), { progressSteps: PROGRESS_STEPS });
    second = await runStreamableHttpScenario(server.url(), { progressSteps: PROGRESS_STEPS });
  });
  afterAll(async () => {
    await server.close();
  });

  describeDemoTranscript('JSON', () => ({ server, first, second }));

  it('serves MCP under its path prefix only', async () => {
    expect(server.endpointPath).toBe('/json/mcp');
    const elsewhere = await rawExchange(server.url('/mcp'), { method: 'POST', body: '{}' });
    expect(elsewhere.status).toBe(404);
  });

  it('ends each session with DELETE', () => {
    expect(first.termination).toEqual({ method: 'DELETE', sessionIdCleared: true });
    expect(first.sessionIdIssued).toBe(true);
    expect(server.received.http.filter((h) => h.method === 'DELETE')).toHaveLength(2);
    expect(server.openSessions()).toBe(0);
  });

  it('answers a tools/call POST with the same JSON bytes in every session', async () => {
    const call = { jsonrpc: '2.0', id: 7, method: 'tools/call', params: { name: 'add', arguments: { a: 1, b: 2 } } };
    const exchanges = [];
    for (let i = 0; i < 2; i++) {
      const session = await openRawSession(server.url());
      exchanges.push({ session, answer: await session.post(call) });
      expect((await session.terminate()).status).toBe(200);
    }
    const [a, b] = exchanges;
    expect(a?.answer.status).toBe(200);
    expect(a?.answer.headers).toEqual({ 'content-type': 'application/json', 'mcp-session-id': SESSION_ID_PLACEHOLDER });
    expect(b?.answer.headers).toEqual(a?.answer.headers);
    expect(normaliseSessionIds(b?.answer.body ?? '', [b?.session.sessionId])).toBe(
      normaliseSessionIds(a?.answer.body ?? '', [a?.session.sessionId]),
    );
    expect(messagesOf(a?.answer ?? (undefined as never))).toEqual([
      { jsonrpc: '2.0', id: 7, result: { content: [{ type: 'text', text: '1 + 2 = 3' }], structuredContent: { sum: 3 } } },
    ]);
  });

  it('echoes the largest safe integer id and big string ids exactly, the same in every session', async () => {
    const bodies: string[] = [];
    for (let i = 0; i < 2; i++) {
      const session = await openRawSession(server.url());
      for (const id of ['9007199254740991', '"90071992547409931234"']) {
        const answer = await session.post(`{"jsonrpc":"2.0","id":${id},"method":"tools/call","params":{"name":"big_id_echo","arguments":{}}}`);
        expect(answer.status).toBe(200);
        bodies.push(answer.body.toString('utf8'));
      }
      await session.terminate();
    }
    expect(bodies.slice(2)).toEqual(bodies.slice(0, 2));
    expect(bodies[0]).toContain('"id":9007199254740991');
    expect(bodies[0]).toContain('\\"requestId\\":\\"9007199254740991\\",\\"requestIdType\\":\\"number\\"');
    expect(bodies[1]).toContain('"id":"90071992547409931234"');
    expect(bodies[1]).toContain('\\"requestIdType\\":\\"string\\"');
  });

  it('refuses an integer id beyond 2^53 as an invalid JSON-RPC message (SDK behaviour)', async () => {
    const session = await openRawSession(server.url());
    const answer = await session.post('{"jsonrpc":"2.0","id":9007199254740993,"method":"tools/call","params":{"name":"big_id_echo","arguments":{}}}');
    await session.terminate();
    expect(answer.status).toBe(400);
    expect(JSON.parse(answer.body.toString('utf8'))).toEqual({
      jsonrpc: '2.0',
      error: { code: -32700, message: 'Parse error: Invalid JSON-RPC message' },
      id: null,
    });
    expect(server.received.requests().some((m) => typeof m.id === 'number' && m.id > Number.MAX_SAFE_INTEGER)).toBe(false);
  });

  it('rejects an unknown session with 404 and a JSON-RPC error', async () => {
    const answer = await rawExchange(server.url(), {
      method: 'POST',
      headers: { accept: 'application/json, text/event-stream', 'content-type': 'application/json', 'mcp-session-id': 'no-such-session' },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list' }),
    });
    expect(answer.status).toBe(404);
    expect(JSON.parse(answer.body.toString('utf8'))).toEqual({ jsonrpc: '2.0', error: { code: -32001, message: 'Session not found' }, id: null });
  });
});

describe('Streamable HTTP server answering with SSE', () => {
  let server: McpTestServer;
  let first: ScenarioTranscript;
  let second: ScenarioTranscript;
  beforeAll(async () => {
    server = await startStreamableSseServer({ pathPrefix: '/sse-server' });
    first = await runStreamableHttpScenario(server.url(), { progressSteps: PROGRESS_STEPS });
    second = await runStreamableHttpScenario(server.url(), { progressSteps: PROGRESS_STEPS });
  });
  afterAll(async () => {
    await server.close();
  });

  describeDemoTranscript('SSE', () => ({ server, first, second }));

  it('gives the same transcript as the JSON-answering server, bar its name', async () => {
    const json = await startStreamableJsonServer({ pathPrefix: '/other' });
    try {
      const viaJson = await runStreamableHttpScenario(json.url(), { progressSteps: PROGRESS_STEPS });
      const strip = (t: ScenarioTranscript): unknown => ({ ...t, initialize: { ...t.initialize, serverInfo: null } });
      expect(strip(viaJson)).toEqual(strip(first));
    } finally {
      await json.close();
    }
  });

  it('answers a tools/call POST with the same SSE bytes in every session, once the session id is normalised', async () => {
    const call = {
      jsonrpc: '2.0',
      id: 3,
      method: 'tools/call',
      params: { name: 'slow_progress', arguments: { steps: 3, delayMs: 5 }, _meta: { progressToken: 'p-1' } },
    };
    const runs = [];
    for (let i = 0; i < 2; i++) {
      const session = await openRawSession(server.url());
      runs.push({ session, answer: await session.post(call) });
      await session.terminate();
    }
    const [a, b] = runs;
    if (a === undefined || b === undefined) throw new Error('two runs expected');
    expect(a.answer.status).toBe(200);
    expect(a.answer.complete).toBe(true);
    expect(a.answer.headers).toEqual({
      'content-type': 'text/event-stream',
      'cache-control': 'no-cache, no-transform',
      'x-accel-buffering': 'no',
      'mcp-session-id': SESSION_ID_PLACEHOLDER,
    });
    expect(b.answer.headers).toEqual(a.answer.headers);
    expect(normaliseSessionIds(b.answer.body, [b.session.sessionId])).toBe(normaliseSessionIds(a.answer.body, [a.session.sessionId]));
    const events = parseSseEvents(a.answer.body);
    // Stream 0 answered initialize; this POST is stream 1: priming event, 3 progress, the result.
    expect(events.map((e) => e.id)).toEqual(['1_0', '1_1', '1_2', '1_3', '1_4']);
    expect(events[0]).toEqual({ event: undefined, id: '1_0', retry: 100, data: '' });
    expect(messagesOf(a.answer).at(-1)).toMatchObject({ id: 3, result: { content: [{ text: 'completed 3 steps, 3 progress notifications' }] } });
  });

  it('replays the events after a Last-Event-ID on GET', async () => {
    const session = await openRawSession(server.url());
    const answer = await session.post({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'slow_progress', arguments: { steps: 3, delayMs: 5 }, _meta: { progressToken: 9 } } });
    expect(parseSseEvents(answer.body).map((e) => e.id)).toEqual(['1_0', '1_1', '1_2', '1_3', '1_4']);
    // The replay stream stays open after the stored events; stop once the result went by.
    const replay = await session.get('1_2', { readUntil: (body) => body.includes('"result"'), timeoutMs: 5_000 });
    expect(replay.status).toBe(200);
    expect(parseSseEvents(replay.body).map((e) => e.id)).toEqual(['1_3', '1_4']);
    expect(server.received.http.at(-1)).toMatchObject({ method: 'GET', lastEventId: '1_2' });
    await session.terminate();
  });

  it('resumes an interrupted tools/call from Last-Event-ID with the same transcript every time', async () => {
    const a = await runResumptionScenario(server.url());
    const b = await runResumptionScenario(server.url());
    expect(b).toEqual(a);

    expect(a.progressBeforeDisconnect).toEqual(expectedProgress(6).slice(0, 2));
    expect(a.tokensBeforeDisconnect).toEqual(['1_0', '1_1', '1_2']);
    expect(a.lastEventId).toBe('1_2');
    // Everything after the given id arrives on the resumed stream, and nothing before it.
    const [resumed, polled] = a.resumedStreams;
    expect(resumed?.lastEventId).toBe('1_2');
    expect(resumed?.eventIds).toEqual(['1_3', '1_4', '1_5', '1_6', '1_7']);
    expect(resumed?.messages.slice(0, 4).map((m) => (m as { params: { progress: number } }).params.progress)).toEqual([3, 4, 5, 6]);
    expect(a.resumedOutcome).toEqual({ result: { content: [{ type: 'text', text: 'completed 6 steps, 6 progress notifications' }] } });
    // The SDK gives the replayed response the id of the resuming request.
    expect(a.messagesAfterReconnect.at(-1)).toMatchObject({ id: 0, result: {} });

    // The server closed the stream after 2 notifications; the client resumed it by itself.
    expect(polled?.lastEventId).toBe('2_2');
    expect(a.serverClosedStream.progress).toEqual(expectedProgress(4));
    expect(a.serverClosedStream.outcome).toEqual({ result: { content: [{ type: 'text', text: 'completed 4 steps, 4 progress notifications' }] } });
  });
});

describe('legacy HTTP+SSE server (2024-11-05 transport)', () => {
  let server: McpTestServer;
  let first: ScenarioTranscript;
  let second: ScenarioTranscript;
  beforeAll(async () => {
    server = await startLegacySseServer({ pathPrefix: '/legacy' });
    first = await runLegacySseScenario(server.url(), { progressSteps: PROGRESS_STEPS });
    second = await runLegacySseScenario(server.url(), { progressSteps: PROGRESS_STEPS });
  });
  afterAll(async () => {
    await server.close();
  });

  describeDemoTranscript('legacy SSE', () => ({ server, first, second }));

  it('ends a session when the client closes its stream', async () => {
    expect(first.termination).toEqual({ method: 'close', sessionIdCleared: true });
    await eventually(() => server.openSessions() === 0);
  });

  it('announces the POST endpoint under its prefix, the same in every session bar the id', async () => {
    const bodies = [];
    for (let i = 0; i < 2; i++) {
      const stream = await rawExchange(server.url(), { headers: { accept: 'text/event-stream' } }, { readUntil: (body) => body.includes('\n\n') });
      expect(stream.status).toBe(200);
      expect(stream.headers['content-type']).toBe('text/event-stream');
      const [endpoint] = parseSseEvents(stream.body);
      expect(endpoint?.event).toBe('endpoint');
      const sessionId = new URL(endpoint?.data ?? '', 'http://x').searchParams.get('sessionId') ?? undefined;
      bodies.push(normaliseSessionIds(stream.body, [sessionId]));
    }
    expect(bodies[1]).toBe(bodies[0]);
    expect(bodies[0]).toBe(`event: endpoint\ndata: /legacy/messages?sessionId=${SESSION_ID_PLACEHOLDER}\n\n`);
  });
});

describe('server-everything child process (Streamable HTTP)', () => {
  let server: McpTestServer;
  beforeAll(async () => {
    server = await startEverythingServer();
  });
  afterAll(async () => {
    await server.close();
  });

  it('gives the same transcript on a second run, with its tools, prompts and resources', async () => {
    const first = await runEverythingScenario(server.url());
    const second = await runEverythingScenario(server.url());
    expect(second).toEqual(first);

    expect(server.endpointPath).toBe('/mcp');
    expect(first.initialize.serverInfo).toMatchObject({ name: 'mcp-servers/everything' });
    expect(first.tools.items.map((t) => (t as { name: string }).name)).toEqual(
      expect.arrayContaining(['echo', 'get-sum', 'trigger-long-running-operation', 'trigger-sampling-request']),
    );
    expect(resultText(toolCall(first, 'echo'))).toBe('Echo: hello everything');
    expect(resultText(toolCall(first, 'get-sum'))).toBe('The sum of 19 and 23 is 42.');
    expect(toolCall(first, 'trigger-long-running-operation').progress).toEqual([
      { progress: 1, total: 3 },
      { progress: 2, total: 3 },
      { progress: 3, total: 3 },
    ]);
    expect(toolCall(first, 'trigger-sampling-request').serverRequests[0]).toMatchObject({ method: 'sampling/createMessage' });
    expect(first.prompts.items.length).toBeGreaterThan(0);
    expect(first.resources.items.length).toBeGreaterThan(0);
    expect(first.resourceReads).toHaveLength(2);
    expect(first.completions[0]?.outcome).toEqual({ result: { completion: { values: ['Sales', 'Support'], total: 2, hasMore: false } } });
    expect(first.termination).toEqual({ method: 'DELETE', sessionIdCleared: true });
  });

  it('records what reached it through its proxy', () => {
    expect(server.received.has('tools/call', 'echo')).toBe(true);
    expect(server.received.has('tools/call', 'get-env')).toBe(false);
    expect(server.received.http.some((h) => h.method === 'DELETE' && h.path === '/mcp')).toBe(true);
  });
});

describe('server-everything child process (legacy SSE mode)', () => {
  let server: McpTestServer;
  beforeAll(async () => {
    server = await startEverythingServer({ transport: 'sse' });
  });
  afterAll(async () => {
    await server.close();
  });

  it('gives the same transcript on a second run over /sse and /message', async () => {
    const first = await runEverythingScenario(server.url());
    const second = await runEverythingScenario(server.url());
    expect(second).toEqual(first);
    expect(server.endpointPath).toBe('/sse');
    expect(resultText(toolCall(first, 'echo'))).toBe('Echo: hello everything');
    expect(toolCall(first, 'trigger-sampling-request').serverRequests[0]).toMatchObject({ method: 'sampling/createMessage' });
    expect(first.termination).toEqual({ method: 'close', sessionIdCleared: true });
    expect(server.received.http.some((h) => h.method === 'POST' && h.path === '/message' && h.sessionId !== undefined)).toBe(true);
  });
});

// ---------------------------------------------------------------------------------------------
// Credential checks

/** The resource indicator the guarded server's tokens are issued for (need not be its own URL). */
const GUARDED_AUDIENCE = 'https://downstream.test/mcp';

const INITIALIZE = {
  jsonrpc: '2.0',
  id: 0,
  method: 'initialize',
  params: { protocolVersion: '2025-11-25', capabilities: {}, clientInfo: { name: 'credential-test', version: '1.0.0' } },
};

/** An initialize POST carrying `authorization` (or none). */
function initializeWith(url: string, authorization: string | undefined): Promise<RawExchange> {
  return rawExchange(url, {
    method: 'POST',
    headers: {
      accept: 'application/json, text/event-stream',
      'content-type': 'application/json',
      ...(authorization === undefined ? {} : { authorization }),
    },
    body: JSON.stringify(INITIALIZE),
  });
}

function expectInvalidToken(answer: RawExchange): void {
  expect(answer.status).toBe(401);
  expect(answer.headers['www-authenticate']).toBe('Bearer error="invalid_token"');
  expect(answer.headers['content-type']).toBe('application/json');
  expect(JSON.parse(answer.body.toString('utf8'))).toEqual({ error: 'invalid_token', error_description: expect.any(String) as unknown });
}

const ADD_CALL = { jsonrpc: '2.0', id: 5, method: 'tools/call', params: { name: 'add', arguments: { a: 20, b: 22 } } };

describe('Streamable HTTP server verifying bearer tokens', () => {
  let idp: Idp;
  let server: McpTestServer;

  beforeAll(async () => {
    idp = await startIdp();
    server = await startStreamableJsonServer({
      pathPrefix: '/guarded',
      verifyTokens: { jwksUri: idp.jwksUri, issuer: idp.issuer, audience: GUARDED_AUDIENCE },
    });
  });
  afterAll(async () => {
    await server.close();
    await idp.stop();
  });

  it('serves a request whose token verifies, and records the token with its claims', async () => {
    server.received.clear();
    const token = await idp.userToken({ user: 'alice', client: 'agent-a', resource: GUARDED_AUDIENCE });
    const session = await openRawSession(server.url(), '2025-11-25', { authorization: `Bearer ${token}` });
    const answer = await session.post(ADD_CALL);
    await session.terminate();

    expect(answer.status).toBe(200);
    expect(messagesOf(answer)).toEqual([{ jsonrpc: '2.0', id: 5, result: { content: [{ type: 'text', text: '20 + 22 = 42' }], structuredContent: { sum: 42 } } }]);
    expect(server.received.has('tools/call', 'add')).toBe(true);
    // initialize, notifications/initialized, tools/call, DELETE
    expect(server.received.http).toHaveLength(4);
    for (const record of server.received.http) {
      expect(record.authorization).toBe(`Bearer ${token}`);
      expect(record.token).toEqual({ valid: true, claims: expect.objectContaining({ sub: 'alice', aud: GUARDED_AUDIENCE, client_id: 'agent-a' }) as unknown });
      expect(record).not.toHaveProperty('rejected');
    }
  });

  it("accepts a token the gateway obtained by exchange, and records who acted for the user", async () => {
    server.received.clear();
    const subject = await idp.userToken({ user: 'bob', client: 'agent-b', resource: 'https://gateway.test/mcp' });
    const exchange = await idp.tokenRequest('gateway', {
      grant_type: TOKEN_EXCHANGE_GRANT,
      subject_token: subject,
      subject_token_type: ACCESS_TOKEN_TYPE,
      resource: GUARDED_AUDIENCE,
    });
    const token = String(exchange.body.access_token);
    // The agent's own token is for the gateway, not for this server.
    expectInvalidToken(await initializeWith(server.url(), `Bearer ${subject}`));

    const answer = await initializeWith(server.url(), `Bearer ${token}`);
    expect(answer.status).toBe(200);
    expect(server.received.http.at(-1)?.token).toEqual({
      valid: true,
      claims: expect.objectContaining({ sub: 'bob', client_id: 'gateway', act: { sub: 'agent-b' } }) as unknown,
    });
    expect(server.received.requests('initialize')).toHaveLength(1);
  });

  it('answers 401 invalid_token to a token for another audience, a forged, expired or missing one, never reaching the MCP layer', async () => {
    server.received.clear();
    const sessionsBefore = server.openSessions();
    const elsewhere = await idp.userToken({ user: 'alice', client: 'agent-a', resource: 'https://other.test/mcp' });
    const refused: [string | undefined, RegExp][] = [
      [`Bearer ${elsewhere}`, /"aud" claim/],
      [`Bearer ${await forgeToken({ iss: idp.issuer, sub: 'alice', aud: GUARDED_AUDIENCE, exp: Math.floor(Date.now() / 1000) + 60 })}`, /ERR_JWKS_NO_MATCHING_KEY/],
      [`Bearer ${await idp.expiredToken({ user: 'alice', client: 'agent-a', resource: GUARDED_AUDIENCE })}`, /ERR_JWT_EXPIRED/],
      ['Bearer not-a-jwt', /ERR_JWS_INVALID/],
      [`Basic ${Buffer.from('alice:secret').toString('base64')}`, /^not a bearer token$/],
      [undefined, /^missing bearer token$/],
    ];
    for (const [authorization] of refused) expectInvalidToken(await initializeWith(server.url(), authorization));

    expect(server.received.messages).toEqual([]);
    expect(server.openSessions()).toBe(sessionsBefore);
    expect(server.received.http).toHaveLength(refused.length);
    refused.forEach(([authorization, error], i) => {
      const record = server.received.http[i];
      expect(record?.authorization).toBe(authorization);
      expect(record?.token).toEqual({ valid: false, error: expect.stringMatching(error) as unknown });
      expect(record?.rejected).toEqual(expect.any(String));
    });
  });

  it('refuses every request while rejectAllTokens is on, mid-session too, and serves again once it is off', async () => {
    const token = await idp.userToken({ user: 'alice', client: 'agent-a', resource: GUARDED_AUDIENCE });
    const session = await openRawSession(server.url(), '2025-11-25', { authorization: `Bearer ${token}` });
    server.received.clear();
    try {
      server.rejectAllTokens(true);
      expectInvalidToken(await session.post(ADD_CALL));
      expectInvalidToken(await initializeWith(server.url(), `Bearer ${token}`));
      expect(server.received.messages).toEqual([]);
      // The token itself was fine: the server refused it anyway.
      expect(server.received.http[0]).toMatchObject({
        token: { valid: true },
        rejected: expect.stringContaining('rejectAllTokens') as unknown,
      });
    } finally {
      server.rejectAllTokens(false);
    }
    const again = await session.post(ADD_CALL);
    expect(again.status).toBe(200);
    expect(server.received.toolCalls()).toEqual(['add']);
    await session.terminate();
  });
});

describe('Streamable HTTP server requiring a static bearer secret', () => {
  let server: McpTestServer;

  beforeAll(async () => {
    server = await startStreamableSseServer({ pathPrefix: '/static', requireBearer: 'Bearer downstream-s3cret' });
  });
  afterAll(async () => {
    await server.close();
  });

  it('serves requests carrying exactly the expected Authorization header', async () => {
    server.received.clear();
    const session = await openRawSession(server.url(), '2025-11-25', { authorization: 'Bearer downstream-s3cret' });
    const answer = await session.post(ADD_CALL);
    await session.terminate();
    expect(answer.status).toBe(200);
    expect(messagesOf(answer).at(-1)).toMatchObject({ id: 5, result: { structuredContent: { sum: 42 } } });
    expect(server.received.http.every((h) => h.authorization === 'Bearer downstream-s3cret')).toBe(true);
    // No token verification configured: nothing recorded about tokens.
    expect(server.received.http[0]).not.toHaveProperty('token');
  });

  it('answers 401 to any other value, recording what arrived, without reaching the MCP layer', async () => {
    server.received.clear();
    const refused = ['Bearer wrong', 'bearer downstream-s3cret', 'Bearer downstream-s3cret2', undefined];
    for (const authorization of refused) expectInvalidToken(await initializeWith(server.url(), authorization));
    expect(server.received.http.map((h) => h.authorization)).toEqual(refused);
    expect(server.received.http.map((h) => h.rejected)).toEqual([
      'unexpected Authorization header',
      'unexpected Authorization header',
      'unexpected Authorization header',
      'missing Authorization header',
    ]);
    expect(server.received.messages).toEqual([]);
  });
});

describe('rejectAllTokens on a server without credential checks', () => {
  it('refuses the legacy SSE stream with 401 while on', async () => {
    const server = await startLegacySseServer({ pathPrefix: '/legacy-revoked' });
    try {
      server.rejectAllTokens(true);
      expectInvalidToken(await rawExchange(server.url(), { headers: { accept: 'text/event-stream', authorization: 'Bearer anything' } }));
      expect(server.openSessions()).toBe(0);
      expect(server.received.http).toEqual([
        expect.objectContaining({ method: 'GET', authorization: 'Bearer anything', rejected: expect.any(String) as unknown }),
      ]);
      server.rejectAllTokens(false);
      const stream = await rawExchange(server.url(), { headers: { accept: 'text/event-stream' } }, { readUntil: (body) => body.includes('\n\n') });
      expect(stream.status).toBe(200);
    } finally {
      await server.close();
    }
  });
});
