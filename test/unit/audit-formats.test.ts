import { describe, expect, it } from 'vitest';
import {
  ECS_VERSION,
  OCSF_VERSION,
  formatEcs,
  formatNative,
  formatOcsf,
  formatterFor,
  ocsfActivity,
} from '../../ext-proc/src/audit/formats.ts';
import { auditUser, hashSession, type AuditEvent } from '../../ext-proc/src/audit/record.ts';
import { compileRedaction } from '../../ext-proc/src/audit/redact.ts';
import type { Principal } from '../../ext-proc/src/identity/principal.ts';

const RAW_SESSION = 'c0ffee00-1234-4abc-9def-0123456789ab';
const SALT = 'per-deployment-salt';
const GITHUB_TOKEN = 'ghp_0123456789abcdefghijABCDEFGHIJ012345';

const redactor = compileRedaction(undefined);

/** An allowed tools/call that succeeded; the other cases are variations of it. */
const allowed: AuditEvent = {
  time: '2026-03-01T12:00:00.000Z',
  id: '6f1c2d3e-4b5a-4c6d-8e7f-901234567890',
  requestId: 'req-1',
  traceId: '4bf92f3577b34da6a3ce929d0e0e4736',
  spanId: '00f067aa0ba902b7',
  server: 'github',
  sessionHash: hashSession(RAW_SESSION, SALT),
  protocolVersion: '2025-06-18',
  transport: 'streamable_http',
  method: 'tools/call',
  rpcId: '7',
  name: 'create_issue',
  arguments: redactor.redact('github', 'create_issue', { repo: 'acme/app', title: 'Bug', token: GITHUB_TOKEN }),
  user: { subject: 'alice', issuer: 'https://idp.example.com', email: 'alice@example.com', groups: ['eng', 'oncall'] },
  agent: { id: 'spiffe://example.org/agent/claude', clientId: 'claude-desktop', spiffeId: 'spiffe://example.org/agent/claude' },
  decision: { effect: 'allow', ruleId: 'eng-can-file-issues', reason: 'rule eng-can-file-issues allows tools/call create_issue' },
  outcome: 'ok',
  errorCode: undefined,
  rpcErrorCode: undefined,
  httpStatus: 200,
  durationMs: 12.5,
  upstreamMs: 9,
  requestBytes: 180,
  responseBytes: 512,
};

const denied: AuditEvent = {
  ...allowed,
  id: '6f1c2d3e-4b5a-4c6d-8e7f-901234567891',
  rpcId: '"call-8"',
  name: 'delete_repo',
  arguments: redactor.redact('github', 'delete_repo', { repo: 'acme/app' }),
  decision: { effect: 'deny', ruleId: 'no-deletes', reason: 'rule no-deletes denies tools/call delete_repo' },
  outcome: 'denied',
  errorCode: 'ERR_POLICY_DENIED',
  rpcErrorCode: -32001,
  httpStatus: 200,
  upstreamMs: undefined,
  responseBytes: 140,
};

const toolError: AuditEvent = { ...allowed, id: '6f1c2d3e-4b5a-4c6d-8e7f-901234567892', outcome: 'tool_error' };

const cancelled: AuditEvent = {
  ...allowed,
  id: '6f1c2d3e-4b5a-4c6d-8e7f-901234567893',
  outcome: 'cancelled',
  httpStatus: undefined,
  durationMs: 3000,
  upstreamMs: undefined,
  responseBytes: undefined,
};

const listed: AuditEvent = {
  ...allowed,
  method: 'tools/list',
  name: undefined,
  arguments: undefined,
  decision: { effect: 'allow', ruleId: undefined, reason: 'listing' },
};

const serialized = (o: unknown): string => JSON.stringify(o);

describe('native format', () => {
  it('uses the OpenTelemetry MCP attribute names for an allowed tool call', () => {
    const r = formatNative(allowed);
    expect(r).toMatchObject({
      time: allowed.time,
      'mcp.method.name': 'tools/call',
      'gen_ai.tool.name': 'create_issue',
      'gen_ai.operation.name': 'execute_tool',
      'jsonrpc.request.id': '7',
      'mcp.session.id': allowed.sessionHash,
      'mcp.protocol.version': '2025-06-18',
      trace_id: allowed.traceId,
      span_id: allowed.spanId,
      'user.id': 'alice',
      'user.email': 'alice@example.com',
      'user.roles': ['eng', 'oncall'],
      'mcp_ext_proc.server': 'github',
      'mcp_ext_proc.decision.effect': 'allow',
      'mcp_ext_proc.decision.rule_id': 'eng-can-file-issues',
      'mcp_ext_proc.outcome': 'ok',
      'mcp_ext_proc.agent.client_id': 'claude-desktop',
      'http.response.status_code': 200,
      'mcp_ext_proc.duration_ms': 12.5,
    });
    expect(r['gen_ai.tool.call.arguments']).toEqual({ repo: 'acme/app', title: 'Bug', token: '[REDACTED]' });
    expect(r).not.toHaveProperty('error.type');
    expect(r).not.toHaveProperty('rpc.response.status_code');
  });

  it('names the failure in error.type: the ERR_ code for a denial, tool_error, or the outcome', () => {
    expect(formatNative(denied)).toMatchObject({
      'error.type': 'ERR_POLICY_DENIED',
      'rpc.response.status_code': '-32001',
      'jsonrpc.request.id': 'call-8',
      'mcp_ext_proc.decision.effect': 'deny',
      'mcp_ext_proc.outcome': 'denied',
    });
    expect(formatNative(toolError)['error.type']).toBe('tool_error');
    expect(formatNative(cancelled)['error.type']).toBe('cancelled');
    expect(formatNative({ ...allowed, outcome: 'jsonrpc_error', rpcErrorCode: -32602 })['error.type']).toBe('-32602');
    expect(formatNative({ ...allowed, outcome: 'upstream_error', httpStatus: 502 })['error.type']).toBe('502');
  });

  it('puts a prompt name and a resource URI under their own attributes, and execute_tool only on tools/call', () => {
    const prompt = formatNative({ ...allowed, method: 'prompts/get', name: 'summarize' });
    expect(prompt['gen_ai.prompt.name']).toBe('summarize');
    expect(prompt).not.toHaveProperty('gen_ai.tool.name');
    expect(prompt).not.toHaveProperty('gen_ai.operation.name');
    expect(prompt['mcp_ext_proc.arguments']).toEqual(allowed.arguments);
    expect(formatNative({ ...allowed, method: 'resources/read', name: 'file:///a' })['mcp.resource.uri']).toBe('file:///a');
  });

  it('writes no undefined values (the object is exactly what its JSON line says)', () => {
    for (const e of [allowed, denied, toolError, cancelled, listed]) {
      for (const format of ['native', 'ecs', 'ocsf'] as const) {
        const r = formatterFor(format)(e);
        expect(JSON.parse(JSON.stringify(r))).toStrictEqual(r);
      }
    }
  });
});

describe('ECS format', () => {
  it.each([
    ['an allowed call', allowed, 'success', ['access', 'allowed']],
    ['a denied call', denied, 'failure', ['access', 'denied']],
    ['a tool error', toolError, 'failure', ['access', 'allowed']],
    ['a cancelled call', cancelled, 'unknown', ['access', 'allowed']],
  ] as const)('maps %s to event.outcome %s and the decision to event.type', (_what, e, outcome, types) => {
    const r = formatEcs(e);
    const event = r['event'] as Record<string, unknown>;
    expect(event['outcome']).toBe(outcome);
    expect(event['type']).toEqual(types);
    expect(event['kind']).toBe('event');
    expect(event['category']).toEqual(['api']);
    expect(event['action']).toBe('tools/call');
    expect(event['id']).toBe(e.id);
  });

  it('carries timestamps, durations in nanoseconds, trace ids, the user and the rule', () => {
    const r = formatEcs(allowed);
    expect(r).toMatchObject({
      '@timestamp': allowed.time,
      ecs: { version: ECS_VERSION },
      event: { duration: 12_500_000, reason: allowed.decision?.reason },
      service: { name: 'mcp-ext-proc', target: { name: 'github' } },
      trace: { id: allowed.traceId },
      span: { id: allowed.spanId },
      user: { id: 'alice', email: 'alice@example.com', roles: ['eng', 'oncall'], domain: 'https://idp.example.com' },
      rule: { id: 'eng-can-file-issues' },
      http: { request: { id: 'req-1', body: { bytes: 180 } }, response: { status_code: 200 } },
      mcp: {
        method: { name: 'tools/call' },
        tool: { name: 'create_issue' },
        session: { id: allowed.sessionHash },
        jsonrpc: { request: { id: '7' } },
        decision: { effect: 'allow', rule_id: 'eng-can-file-issues' },
        upstream: { duration: 9_000_000 },
      },
    });
    // Arguments as a JSON string: one keyword field, not one mapped field per argument name.
    expect(JSON.parse((r['mcp'] as Record<string, unknown>)['arguments'] as string)).toEqual(allowed.arguments);
  });

  it('reports the error code and type of a denial', () => {
    expect(formatEcs(denied)['error']).toEqual({ code: 'ERR_POLICY_DENIED', type: 'ERR_POLICY_DENIED' });
    expect(formatEcs(toolError)['error']).toEqual({ type: 'tool_error' });
  });
});

describe('OCSF format', () => {
  it.each([
    ['an allowed call', allowed, 1, 'Success', 1, 1, 1],
    ['a denied call', denied, 2, 'Failure', 2, 2, 2],
    ['a tool error', toolError, 2, 'Failure', 1, 1, 1],
    ['a cancelled call', cancelled, 99, 'Cancelled', 1, 1, 1],
  ] as const)('classifies %s as API Activity with status %i and the decision as disposition', (_w, e, statusId, status, actionId, dispositionId, severityId) => {
    const r = formatOcsf(e);
    expect(r).toMatchObject({
      class_uid: 6003,
      category_uid: 6,
      activity_id: 99,
      activity_name: 'tools/call',
      type_uid: 600399,
      status_id: statusId,
      status,
      action_id: actionId,
      disposition_id: dispositionId,
      severity_id: severityId,
      time: Date.parse(e.time),
      metadata: { version: OCSF_VERSION, uid: e.id, product: { name: 'mcp-ext-proc' } },
      api: { operation: 'tools/call', service: { name: 'github' } },
    });
  });

  it('describes the caller, the call and the policy with OCSF objects', () => {
    expect(formatOcsf(denied)).toMatchObject({
      disposition: 'Blocked',
      action: 'Denied',
      status_code: 'ERR_POLICY_DENIED',
      actor: {
        user: { uid: 'alice', email_addr: 'alice@example.com', groups: [{ name: 'eng' }, { name: 'oncall' }] },
        idp: { name: 'https://idp.example.com' },
        app_name: 'claude-desktop',
        app_uid: 'spiffe://example.org/agent/claude',
        session: { uid: denied.sessionHash },
      },
      api: { request: { uid: 'call-8', data: { repo: 'acme/app' } }, response: { code: -32001, error: 'ERR_POLICY_DENIED' } },
      resources: [{ type: 'mcp.tool', name: 'delete_repo' }],
      policy: { uid: 'no-deletes', desc: denied.decision?.reason, is_applied: true },
      http_request: { uid: 'req-1' },
      unmapped: { 'mcp.outcome': 'denied', trace_id: denied.traceId },
    });
  });

  it.each([
    ['tools/call', 99, 'tools/call'],
    ['tools/list', 2, 'Read'],
    ['resources/read', 2, 'Read'],
    ['prompts/get', 2, 'Read'],
    ['initialize', 1, 'Create'],
    ['resources/subscribe', 1, 'Create'],
    ['logging/setLevel', 3, 'Update'],
    ['resources/unsubscribe', 4, 'Delete'],
    ['notifications/cancelled', 99, 'notifications/cancelled'],
    ['toString', 99, 'toString'],
  ])('maps %s to activity %i (%s)', (method, id, name) => {
    expect(ocsfActivity(method)).toEqual({ id, name });
    expect(formatOcsf({ ...listed, method })).toMatchObject({ activity_id: id, type_uid: 600300 + id });
  });
});

describe('what no format writes', () => {
  it('never carries the raw session id or a token that was in the arguments', () => {
    for (const e of [allowed, denied, toolError, cancelled]) {
      for (const format of ['native', 'ecs', 'ocsf'] as const) {
        const line = serialized(formatterFor(format)(e));
        expect(line).not.toContain(RAW_SESSION);
        expect(line).not.toContain(GITHUB_TOKEN);
        expect(line).toContain(hashSession(RAW_SESSION, SALT));
      }
    }
  });

  it('redacts credentials in the client-controlled fields besides the arguments', () => {
    const e: AuditEvent = {
      ...allowed,
      method: 'resources/read',
      name: 'postgres://app:pg-pass-123@db/main',
      rpcId: `"${GITHUB_TOKEN}"`,
      decision: { effect: 'deny', ruleId: 'r', reason: `condition failed for token=${GITHUB_TOKEN}` },
    };
    for (const format of ['native', 'ecs', 'ocsf'] as const) {
      const line = serialized(formatterFor(format)(e));
      expect(line).not.toContain('pg-pass-123');
      expect(line).not.toContain(GITHUB_TOKEN);
      expect(line).toContain('postgres://app:[REDACTED]@db/main');
    }
  });

  it('leaves out email and groups when the document says so', () => {
    const alice: Principal = {
      issuerName: 'corp',
      issuer: 'https://idp.example.com',
      subject: 'alice',
      email: 'alice@example.com',
      groups: ['eng'],
      scopes: [],
      tokenId: undefined,
      issuedAt: undefined,
      expiresAt: 1_900_000_000,
      claims: {},
    };
    const user = auditUser(alice, { includeEmail: false, includeGroups: false });
    expect(user).toEqual({ subject: 'alice', issuer: 'https://idp.example.com' });
    for (const format of ['native', 'ecs', 'ocsf'] as const) {
      const line = serialized(formatterFor(format)({ ...allowed, user }));
      expect(line).not.toContain('alice@example.com');
      expect(line).not.toContain('"eng"');
    }
    expect(auditUser(alice, { includeEmail: true, includeGroups: true })).toEqual({
      subject: 'alice',
      issuer: 'https://idp.example.com',
      email: 'alice@example.com',
      groups: ['eng'],
    });
  });
});

describe('hashSession', () => {
  it('is 32 hex characters, stable for one salt and different across salts', () => {
    const h = hashSession(RAW_SESSION, SALT);
    expect(h).toMatch(/^[0-9a-f]{32}$/);
    expect(hashSession(RAW_SESSION, SALT)).toBe(h);
    expect(hashSession(RAW_SESSION, 'other-salt')).not.toBe(h);
    expect(hashSession(`${RAW_SESSION}x`, SALT)).not.toBe(h);
  });
});
