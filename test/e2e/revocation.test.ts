// Revocation across replicas: two processors share one real Valkey, each behind its own real Envoy.
// A revocation made through one replica's admin API is enforced by the other within a second.

import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { EnvoyInstance } from '../support/envoy.ts';
import { startIdp, type Idp } from '../support/idp.ts';
import { startStreamableJsonServer, type McpTestServer } from '../support/mcp-servers.ts';
import { rawExchange } from '../support/mcp-scenarios.ts';
import { startReplicas, type Replica, type Replicas } from '../support/replicas.ts';
import { repoRoot } from '../support/tools.ts';
import { startValkey, type ValkeyInstance } from '../support/valkey.ts';

const run = promisify(execFile);
const RESOURCE = 'https://gateway.test/json/mcp';
const ADMIN = 'https://gateway.test/admin';

const governance = (issuer: string): string => `
apiVersion: mcp-ext-proc/v1
identity:
  issuers: [{ name: test-idp, issuer: "${issuer}" }]
  adminGroups: [mcp-admins]
  adminAudience: ${ADMIN}
servers:
  - { name: json, resource: "${RESOURCE}" }
policy:
  rules:
    - { id: everyone-echo, effect: allow, match: { names: [echo] } }
`;

let valkey: ValkeyInstance;
let idp: Idp;
let json: McpTestServer;
let replicas: Replicas;

beforeAll(async () => {
  [valkey, idp, json] = await Promise.all([startValkey(), startIdp(), startStreamableJsonServer({ pathPrefix: '/json' })]);
  replicas = await startReplicas(2, governance(idp.issuer), { redisUrl: valkey.url }, [{ name: 'json', port: json.port, prefixes: ['/json/'] }]);
}, 120_000);

afterAll(async () => {
  await replicas.stop();
  await Promise.all([json.close(), idp.stop(), valkey.stop()]);
});

const replica = (i: number): Replica => replicas.at(i);

async function initialize(envoy: EnvoyInstance, token: string): Promise<{ status: number; code: string | undefined }> {
  const res = await rawExchange(envoy.url('/json/mcp'), {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', authorization: `Bearer ${token}` },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-11-25', capabilities: {}, clientInfo: { name: 'r', version: '1' } } }),
  });
  const body = res.status === 200 ? undefined : (JSON.parse(res.body.toString()) as { error?: { data?: { code?: string } } });
  return { status: res.status, code: body?.error?.data?.code };
}

async function admin(i: number, path: string, token: string | undefined, body?: unknown): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`http://127.0.0.1:${replica(i).proc.adminPort}${path}`, {
    method: body === undefined ? 'GET' : 'POST',
    headers: { ...(token === undefined ? {} : { authorization: `Bearer ${token}` }), 'content-type': 'application/json' },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

describe('revocation', () => {
  it('is made through one replica and enforced by the other within a second', async () => {
    const alice = await idp.userToken({ user: 'alice', client: 'agent-a', resource: RESOURCE });
    // Both replicas have served alice, so both hold a cached "not revoked" answer.
    expect((await initialize(replica(0).envoy, alice)).status).toBe(200);
    expect((await initialize(replica(1).envoy, alice)).status).toBe(200);

    const adminToken = await idp.userToken({ user: 'admin', client: 'agent-a', resource: ADMIN });
    const revoked = await admin(0, '/revocations', adminToken, { kind: 'subject', issuer: idp.issuer, subject: 'alice' });
    expect(revoked.status).toBe(201);
    const started = Date.now();
    let answer = await initialize(replica(1).envoy, alice);
    while (answer.status === 200 && Date.now() - started < 5_000) {
      await new Promise((r) => setTimeout(r, 20));
      answer = await initialize(replica(1).envoy, alice);
    }
    const elapsed = Date.now() - started;
    expect(answer).toEqual({ status: 401, code: 'ERR_IDENTITY_REVOKED' });
    expect(elapsed).toBeLessThan(1_000);
    expect(await initialize(replica(0).envoy, alice)).toEqual({ status: 401, code: 'ERR_IDENTITY_REVOKED' });
  });

  it('revokes an agent from the command line', async () => {
    const bob = await idp.userToken({ user: 'bob', client: 'agent-b', resource: RESOURCE });
    expect((await initialize(replica(1).envoy, bob)).status).toBe(200);
    const adminToken = await idp.userToken({ user: 'admin', client: 'agent-a', resource: ADMIN });
    const { stdout } = await run(process.execPath, [
      `${repoRoot}ext-proc/src/cli.ts`,
      'revoke',
      '--admin-url',
      `http://127.0.0.1:${replica(0).proc.adminPort}`,
      '--token',
      adminToken,
      '--agent',
      'agent-b',
    ]);
    expect(JSON.parse(stdout)).toMatchObject({ revoked: { kind: 'agent', agentId: 'agent-b' } });
    await new Promise((r) => setTimeout(r, 200));
    expect(await initialize(replica(1).envoy, bob)).toEqual({ status: 401, code: 'ERR_IDENTITY_REVOKED' });
    const list = await admin(1, '/revocations', adminToken);
    expect(JSON.stringify(list.body)).toContain('agent-b');
  });

  it('keeps the admin API for admins', async () => {
    const carol = await idp.userToken({ user: 'bob', client: 'agent-a', resource: ADMIN });
    expect((await admin(0, '/revocations', undefined, { kind: 'agent', agentId: 'x' })).status).toBe(401);
    expect((await admin(0, '/revocations', carol, { kind: 'agent', agentId: 'x' })).status).toBe(403);
    const wrongAudience = await idp.userToken({ user: 'admin', client: 'agent-a', resource: RESOURCE });
    expect((await admin(0, '/revocations', wrongAudience, { kind: 'agent', agentId: 'x' })).status).toBe(401);
  });

  it('explains a decision on the admin API', async () => {
    const adminToken = await idp.userToken({ user: 'admin', client: 'agent-a', resource: ADMIN });
    const res = await admin(0, '/explain', adminToken, { server: 'json', name: 'add', user: { subject: 'dave' }, agent: { id: 'agent-a' } });
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ decision: { effect: 'deny' } });
    const allowed = await admin(0, '/explain', adminToken, { server: 'json', name: 'echo', user: { subject: 'dave' } });
    expect(allowed.body).toMatchObject({ decision: { effect: 'allow', ruleId: 'everyone-echo' } });
  });

  it('fails closed with 503 when Redis cannot be reached for a revocation check', async () => {
    const token = await idp.userToken({ user: 'admin', client: 'agent-a', resource: RESOURCE });
    await valkey.stop();
    const answer = await initialize(replica(1).envoy, token);
    expect(answer).toEqual({ status: 503, code: 'ERR_STATE_UNAVAILABLE' });
    const ready = await fetch(`http://127.0.0.1:${replica(1).proc.adminPort}/readyz`);
    expect(ready.status).toBe(503);
  });
});
