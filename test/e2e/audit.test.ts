// The audit trail end to end: one record per MCP message on every path (allowed, denied, refused,
// failed, cancelled mid-stream), secrets never written, Envoy's access log and /metrics telling the
// same story, and nothing lost when the service is stopped with SIGTERM under load.

import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEnvoy, type EnvoyInstance } from '../support/envoy.ts';
import { startIdp, type Idp } from '../support/idp.ts';
import { startStreamableJsonServer, startStreamableSseServer, type McpTestServer } from '../support/mcp-servers.ts';
import { openRawSession, rawExchange } from '../support/mcp-scenarios.ts';
import { startTestProcessor, type TestProcessor } from '../support/processor.ts';
import { repoRoot } from '../support/tools.ts';
import { freePort } from '../support/valkey.ts';

const RESOURCE = (name: string): string => `https://gateway.test/${name}/mcp`;
const TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736';

const governance = (issuer: string): string => `
apiVersion: mcp-ext-proc/v1
identity:
  issuers: [{ name: test-idp, issuer: "${issuer}" }]
servers:
  - { name: json, resource: "${RESOURCE('json')}" }
  - { name: stream, resource: "${RESOURCE('stream')}" }
policy:
  rules:
    - { id: echo-for-all, effect: allow, match: { names: [echo, fail, slow_progress] } }
`;

let idp: Idp;
let proc: TestProcessor;
let envoy: EnvoyInstance;
let json: McpTestServer;
let stream: McpTestServer;
let token: string;
let streamToken: string;

beforeAll(async () => {
  [idp, json, stream] = await Promise.all([startIdp(), startStreamableJsonServer({ pathPrefix: '/json' }), startStreamableSseServer({ pathPrefix: '/stream' })]);
  proc = await startTestProcessor(governance(idp.issuer));
  envoy = await startEnvoy({
    processor: { port: proc.grpcPort },
    upstreams: [
      { name: 'json', port: json.port, prefixes: ['/json/'] },
      { name: 'stream', port: stream.port, prefixes: ['/stream/'] },
    ],
  });
  token = await idp.userToken({ user: 'alice', client: 'agent-a', resource: RESOURCE('json') });
  streamToken = await idp.userToken({ user: 'alice', client: 'agent-a', resource: RESOURCE('stream') });
}, 120_000);

afterAll(async () => {
  await envoy.stop();
  await Promise.all([json.close(), stream.close(), idp.stop()]);
  await proc.stop();
});

type AuditLine = Record<string, unknown>;

async function recordsFor(predicate: (r: AuditLine) => boolean, count = 1): Promise<AuditLine[]> {
  const deadline = Date.now() + 5_000;
  for (;;) {
    const found = (await proc.auditRecords()).filter(predicate);
    if (found.length >= count || Date.now() > deadline) return found;
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('one audit record per MCP message', () => {
  it('records an allowed tool call with who, what, the decision, the trace and the timings', async () => {
    const session = await openRawSession(envoy.url('/json/mcp'), '2025-11-25', {
      authorization: `Bearer ${token}`,
      traceparent: `00-${TRACE_ID}-00f067aa0ba902b7-01`,
    });
    const res = await session.post({ jsonrpc: '2.0', id: 'audit-1', method: 'tools/call', params: { name: 'echo', arguments: { text: 'hello' } } });
    expect(res.status).toBe(200);
    const [r] = await recordsFor((x) => x['jsonrpc.request.id'] === 'audit-1');
    expect(r).toMatchObject({
      'mcp.method.name': 'tools/call',
      'gen_ai.tool.name': 'echo',
      'gen_ai.operation.name': 'execute_tool',
      'gen_ai.tool.call.arguments': { text: 'hello' },
      'user.id': 'alice',
      'user.email': 'alice@example.com',
      'mcp_ext_proc.agent.id': 'agent-a',
      'mcp_ext_proc.server': 'json',
      'mcp_ext_proc.decision.effect': 'allow',
      'mcp_ext_proc.decision.rule_id': 'echo-for-all',
      'mcp_ext_proc.outcome': 'ok',
      'http.response.status_code': 200,
      trace_id: TRACE_ID,
    });
    expect(typeof r?.['mcp_ext_proc.duration_ms']).toBe('number');
    expect(typeof r?.['mcp_ext_proc.request_id']).toBe('string');
    // The session appears only as a hash.
    expect(JSON.stringify(r)).not.toContain(session.sessionId);
    expect(typeof r?.['mcp.session.id']).toBe('string');
    await session.terminate();
  });

  it('records a denied call with the rule, and a tool error as such', async () => {
    const session = await openRawSession(envoy.url('/json/mcp'), '2025-11-25', { authorization: `Bearer ${token}` });
    await session.post({ jsonrpc: '2.0', id: 'audit-denied', method: 'tools/call', params: { name: 'add', arguments: { a: 1, b: 2 } } });
    await session.post({ jsonrpc: '2.0', id: 'audit-fail', method: 'tools/call', params: { name: 'fail', arguments: {} } });
    const [denied] = await recordsFor((x) => x['jsonrpc.request.id'] === 'audit-denied');
    expect(denied).toMatchObject({ 'mcp_ext_proc.outcome': 'denied', 'mcp_ext_proc.decision.effect': 'deny', 'mcp_ext_proc.error.code': 'ERR_POLICY_DENIED', 'gen_ai.tool.name': 'add' });
    const [failed] = await recordsFor((x) => x['jsonrpc.request.id'] === 'audit-fail');
    expect(failed).toMatchObject({ 'mcp_ext_proc.outcome': 'tool_error', 'error.type': 'tool_error' });
    await session.terminate();
  });

  it('records a request refused before it was read (no token)', async () => {
    await rawExchange(envoy.url('/json/mcp'), { method: 'POST', headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: '{"jsonrpc":"2.0","id":1,"method":"ping"}' });
    const found = await recordsFor((x) => x['mcp_ext_proc.error.code'] === 'ERR_IDENTITY_MISSING');
    expect(found[0]).toMatchObject({ 'mcp_ext_proc.outcome': 'rejected', 'http.response.status_code': 401 });
  });

  it('records a call whose client went away in the middle of an SSE response as cancelled', async () => {
    const session = await openRawSession(envoy.url('/stream/mcp'), '2025-11-25', { authorization: `Bearer ${streamToken}` });
    const abort = new AbortController();
    const res = await fetch(envoy.url('/stream/mcp'), {
      method: 'POST',
      headers: session.headers(),
      body: JSON.stringify({ jsonrpc: '2.0', id: 'audit-cancel', method: 'tools/call', params: { name: 'slow_progress', arguments: { steps: 30, delayMs: 50 }, _meta: { progressToken: 1 } } }),
      signal: abort.signal,
    });
    await res.body?.getReader().read();
    abort.abort();
    const [r] = await recordsFor((x) => x['jsonrpc.request.id'] === 'audit-cancel');
    expect(r).toMatchObject({ 'mcp_ext_proc.outcome': 'cancelled', 'gen_ai.tool.name': 'slow_progress' });
  });

  it('never writes tokens, API keys or passwords found in arguments', async () => {
    const session = await openRawSession(envoy.url('/json/mcp'), '2025-11-25', { authorization: `Bearer ${token}` });
    const secrets = { jwt: token, apiKey: 'sk-live-0123456789abcdef', password: 'hunter2-correct-horse' };
    await session.post({
      jsonrpc: '2.0',
      id: 'audit-secrets',
      method: 'tools/call',
      params: { name: 'echo', arguments: { text: `Bearer ${secrets.jwt}`, api_key: secrets.apiKey, password: secrets.password, note: 'fine' } },
    });
    const [r] = await recordsFor((x) => x['jsonrpc.request.id'] === 'audit-secrets');
    const text = JSON.stringify(r);
    for (const secret of Object.values(secrets)) expect(text).not.toContain(secret);
    expect(text).toContain('fine');
    // The whole file, not just this record.
    const all = JSON.stringify(await proc.auditRecords());
    expect(all).not.toContain(token);
    await session.terminate();
  });
});

describe('the same facts where operators look', () => {
  it('puts tool, decision and user in Envoy access log lines', async () => {
    const log = await envoy.accessLog();
    expect(log.some((l) => l['mcp_tool'] === 'echo' && l['mcp_decision'] === 'allow' && l['mcp_user'] === 'alice' && l['mcp_rule'] === 'echo-for-all')).toBe(true);
    expect(log.some((l) => l['mcp_tool'] === 'add' && l['mcp_decision'] === 'deny')).toBe(true);
  });

  it('counts calls, denials and verifications in /metrics', async () => {
    const text = await (await fetch(`http://127.0.0.1:${proc.adminPort}/metrics`)).text();
    expect(text).toMatch(/mcp_ext_proc_mcp_requests_total\{server="json",method="tools\/call",tool="[^"]*",decision="allow",outcome="ok"\} [1-9]/);
    expect(text).toMatch(/mcp_ext_proc_denials_total\{server="json",rule="\(default\)"\} [1-9]/);
    expect(text).toMatch(/mcp_ext_proc_token_verifications_total\{result="cache_hit"\} [1-9]/);
    expect(text).toMatch(/mcp_ext_proc_audit_records_total\{format="native"\} [1-9]/);
    expect(text).toMatch(/mcp_ext_proc_processing_duration_seconds_count\{phase="request_body"\} [1-9]/);
    expect(text).toMatch(/mcp_ext_proc_request_duration_seconds_count\{server="json",method="tools\/call"\} [1-9]/);
  });
});

describe('graceful shutdown', () => {
  it('loses no audit record when SIGTERM arrives under load', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'mcp-ext-proc-sigterm-'));
    const config = path.join(dir, 'governance.yaml');
    writeFileSync(config, 'apiVersion: mcp-ext-proc/v1\nservers: [{ name: json }]\n');
    const grpcPort = await freePort();
    const adminPort = await freePort();
    const child = spawn(process.execPath, [`${repoRoot}ext-proc/src/cli.ts`, '--config', config, '--grpc-port', String(grpcPort), '--admin-port', String(adminPort), '--listen-address', '127.0.0.1', '--log-level', 'warn', '--shutdown-grace-seconds', '5'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => stdout.push(c));
    child.stderr.on('data', (c: Buffer) => stderr.push(c));
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    const own = await startEnvoy({ processor: { port: grpcPort }, upstreams: [{ name: 'json', port: json.port, prefixes: ['/json/'] }] });
    try {
      const deadline = Date.now() + 15_000;
      while ((await fetch(`http://127.0.0.1:${adminPort}/readyz`).then((r) => r.status, () => 0)) !== 200) {
        if (Date.now() > deadline) throw new Error(`the processor did not become ready: ${Buffer.concat(stderr).toString()}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      // Requests that reached the processor (it answered Envoy's first message) must each have a record.
      let answered = 0;
      const send = async (i: number): Promise<void> => {
        const res = await rawExchange(own.url('/json/mcp'), {
          method: 'POST',
          headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'x-request-id': `sigterm-${i}` },
          body: JSON.stringify({ jsonrpc: '2.0', id: i, method: 'initialize', params: { protocolVersion: '2025-11-25', capabilities: {}, clientInfo: { name: 'load', version: '1' } } }),
        }).catch(() => undefined);
        if (res?.status === 200) answered++;
      };
      const load = Array.from({ length: 150 }, (_, i) => new Promise<void>((r) => setTimeout(() => void send(i).then(r), i * 5)));
      await new Promise((r) => setTimeout(r, 300));
      child.kill('SIGTERM');
      await Promise.all(load);
      expect(await exited, Buffer.concat(stderr).toString()).toBe(0);
      const records = Buffer.concat(stdout).toString('utf8').split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as AuditLine);
      const ids = new Set(records.map((r) => r['mcp_ext_proc.request_id']));
      const log = await own.accessLog({ count: 150 });
      const reached = log.filter((l) => (l['ext_proc'] as { request_body_call_count?: number } | null)?.request_body_call_count === 1 && l['response_code'] === 200);
      expect(answered).toBeGreaterThan(10);
      expect(reached.length).toBe(answered);
      for (const l of reached) expect(ids.has(l['request_id']), String(l['request_id'])).toBe(true);
    } finally {
      child.kill('SIGKILL');
      await own.stop();
    }
  }, 60_000);
});

