// Differential end-to-end tests: real MCP SDK clients talk to real MCP servers directly and through a
// real Envoy with mcp-ext-proc on the path. What the client sees must be the same either way, for every
// transport; Envoy's own ext_proc stats and the processor's events show the processor was really there.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEnvoy, type EnvoyInstance } from '../support/envoy.ts';
import {
  startEverythingServer,
  startLegacySseServer,
  startStreamableJsonServer,
  startStreamableSseServer,
  type McpTestServer,
} from '../support/mcp-servers.ts';
import {
  normaliseSessionIds,
  openRawSession,
  runEverythingScenario,
  runLegacySseScenario,
  runResumptionScenario,
  runStreamableHttpScenario,
} from '../support/mcp-scenarios.ts';
import { startTestProcessor, type TestProcessor } from '../support/processor.ts';

const GOVERNANCE = `
apiVersion: mcp-ext-proc/v1
servers:
  - name: json
  - name: stream
  - name: legacy
  - name: everything
  - name: everything-sse
`;

let proc: TestProcessor;
let envoy: EnvoyInstance;
let json: McpTestServer;
let stream: McpTestServer;
let legacy: McpTestServer;
let everything: McpTestServer;
let everythingSse: McpTestServer;

/** The same path on Envoy's listener as on the server itself (routes do not rewrite paths). */
const viaEnvoy = (server: McpTestServer, path = server.endpointPath): string => envoy.url(path);

beforeAll(async () => {
  [proc, json, stream, legacy, everything, everythingSse] = await Promise.all([
    startTestProcessor(GOVERNANCE),
    startStreamableJsonServer({ pathPrefix: '/json' }),
    startStreamableSseServer({ pathPrefix: '/stream' }),
    startLegacySseServer({ pathPrefix: '/legacy' }),
    startEverythingServer({ transport: 'streamableHttp' }),
    startEverythingServer({ transport: 'sse' }),
  ]);
  envoy = await startEnvoy({
    processor: { port: proc.grpcPort },
    upstreams: [
      { name: 'json', port: json.port, prefixes: ['/json/'] },
      { name: 'stream', port: stream.port, prefixes: ['/stream/'] },
      { name: 'legacy', port: legacy.port, prefixes: ['/legacy/'] },
      { name: 'everything', port: everything.port, prefixes: ['/mcp'] },
      { name: 'everything-sse', port: everythingSse.port, prefixes: ['/sse', '/message'] },
    ],
  });
}, 120_000);

afterAll(async () => {
  await envoy.stop();
  await Promise.all([json, stream, legacy, everything, everythingSse].map((s) => s.close()));
  await proc.stop();
});

describe('through Envoy and mcp-ext-proc, a client sees exactly what it sees directly', () => {
  it('over Streamable HTTP answered with JSON', async () => {
    const direct = await runStreamableHttpScenario(json.url());
    const proxied = await runStreamableHttpScenario(viaEnvoy(json));
    expect(proxied).toEqual(direct);
    // The scenario exercised what matters: pagination, progress, sampling, elicitation, DELETE.
    expect(direct.resources.pages.length).toBeGreaterThan(1);
    expect(direct.termination.method).toBe('DELETE');
  });

  it('over Streamable HTTP answered with SSE (progress, sampling, elicitation)', async () => {
    const direct = await runStreamableHttpScenario(stream.url());
    const proxied = await runStreamableHttpScenario(viaEnvoy(stream));
    expect(proxied).toEqual(direct);
    expect(direct.toolCalls.some((c) => c.progress.length > 0)).toBe(true);
    expect(direct.toolCalls.some((c) => c.serverRequests.some((r) => r.method === 'sampling/createMessage'))).toBe(true);
    expect(direct.toolCalls.some((c) => c.serverRequests.some((r) => r.method === 'elicitation/create'))).toBe(true);
  });

  it('over the legacy HTTP+SSE transport', async () => {
    const direct = await runLegacySseScenario(legacy.url());
    const proxied = await runLegacySseScenario(viaEnvoy(legacy));
    expect(proxied).toEqual(direct);
  });

  it('when a stream is resumed with Last-Event-ID', async () => {
    const direct = await runResumptionScenario(stream.url());
    const proxied = await runResumptionScenario(viaEnvoy(stream));
    expect(proxied).toEqual(direct);
  });

  it('with the reference server "everything" over Streamable HTTP and over SSE', async () => {
    expect(await runEverythingScenario(viaEnvoy(everything))).toEqual(await runEverythingScenario(everything.url()));
    expect(await runEverythingScenario(viaEnvoy(everythingSse))).toEqual(await runEverythingScenario(everythingSse.url()));
  });

  it('byte for byte, for a tools/call answered over SSE', async () => {
    const call = { jsonrpc: '2.0', id: 7, method: 'tools/call', params: { name: 'slow_progress', arguments: { steps: 3 }, _meta: { progressToken: 'p' } } };
    const bodies: string[] = [];
    for (const url of [stream.url(), viaEnvoy(stream)]) {
      const session = await openRawSession(url);
      const answer = await session.post(call);
      expect(answer.status).toBe(200);
      bodies.push(normaliseSessionIds(answer.body, [session.sessionId]));
      await session.terminate();
    }
    expect(bodies[1]).toBe(bodies[0]);
    expect(bodies[0]).toContain('notifications/progress');
  });

  it('byte for byte, for a tools/call answered with JSON, and with the same headers', async () => {
    const call = { jsonrpc: '2.0', id: 'j-1', method: 'tools/call', params: { name: 'echo', arguments: { text: 'naïve ☃ 日本' } } };
    const answers = [];
    for (const url of [json.url(), viaEnvoy(json)]) {
      const session = await openRawSession(url);
      const answer = await session.post(call);
      answers.push({ status: answer.status, headers: answer.headers, body: normaliseSessionIds(answer.body, [session.sessionId]) });
      await session.terminate();
    }
    expect(answers[1]).toEqual(answers[0]);
  });
});

describe('the processor was on the path', () => {
  it('shows in Envoy ext_proc stats with no failures, and in what the processor saw', async () => {
    const stats = await envoy.stats('http.mcp.ext_proc.');
    expect(stats['http.mcp.ext_proc.streams_started']).toBeGreaterThan(20);
    expect(stats['http.mcp.ext_proc.streams_failed'] ?? 0).toBe(0);
    expect(stats['http.mcp.ext_proc.failure_mode_allowed'] ?? 0).toBe(0);
    expect(stats['http.mcp.ext_proc.spurious_msgs_received'] ?? 0).toBe(0);
    expect(stats['http.mcp.ext_proc.message_timeouts'] ?? 0).toBe(0);
    const servers = new Set(proc.events.map((e) => e.server));
    expect([...servers].sort()).toEqual(['everything', 'everything-sse', 'json', 'legacy', 'stream']);
  });

  it('matched every response it saw to its request, including those on the legacy GET stream', () => {
    const responses = proc.events.filter((e) => e.direction === 'server_to_client' && (e.message.kind === 'result' || e.message.kind === 'error'));
    expect(responses.length).toBeGreaterThan(50);
    const unmatched = responses.filter((e) => e.answers === undefined);
    expect(unmatched.map((e) => `${e.server} ${e.message.id ?? ''}`)).toEqual([]);
    expect(responses.some((e) => e.server === 'legacy' && e.correlation === 'shared_state')).toBe(true);
  });

  it('puts the MCP method and tool in Envoy access log lines', async () => {
    const log = await envoy.accessLog();
    const call = log.find((l) => l['mcp_method'] === 'tools/call' && l['mcp_server'] === 'json');
    expect(call).toBeDefined();
    expect(typeof call?.['mcp_tool']).toBe('string');
  });
});
