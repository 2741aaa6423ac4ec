// Hot reload of the governance document, seen from Envoy's side of the gRPC stream.

import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, envoy, type ExtProcClient } from '../support/ext-proc-client.ts';
import { startTestProcessor, type TestProcessor } from '../support/processor.ts';

const doc = (servers: string): string => `apiVersion: mcp-ext-proc/v1\nservers:\n${servers}`;

let proc: TestProcessor;
let client: ExtProcClient;

beforeAll(async () => {
  proc = await startTestProcessor(doc('  - { name: a, pathPrefixes: [/a/] }\n'), { settings: { configPollSeconds: 1 } });
  client = connect(proc.grpcPort);
});
afterAll(async () => {
  client.close();
  await proc.stop();
});

async function statusFor(path: string): Promise<number | undefined> {
  const s = client.open();
  const res = await s.exchange(envoy.requestHeaders({ ':method': 'GET', ':path': path }, { endOfStream: true }));
  s.cancel();
  return res.immediate_response?.status.code;
}

async function eventually(check: () => Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('not in time');
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function reloads(result: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${proc.adminPort}/metrics`)).text();
  const m = new RegExp(`mcp_ext_proc_config_reloads_total\\{result="${result}"\\} (\\d+)`).exec(text);
  return Number(m?.[1] ?? 0);
}

describe('hot reload', () => {
  it('applies a changed document without a restart', async () => {
    expect(await statusFor('/b/mcp')).toBe(404);
    writeFileSync(proc.configFile, doc('  - { name: a, pathPrefixes: [/a/] }\n  - { name: b, pathPrefixes: [/b/] }\n'));
    await eventually(async () => (await statusFor('/b/mcp')) === undefined);
    expect(await reloads('applied')).toBe(1);
  });

  it('keeps the document in force when the new one does not compile', async () => {
    writeFileSync(proc.configFile, doc('  - { name: a, pathPrefixes: [/a/], colour: blue }\n'));
    await eventually(async () => (await reloads('rejected')) === 1);
    // b (only in the document in force) is still served.
    expect(await statusFor('/b/mcp')).toBeUndefined();
    expect(await statusFor('/a/mcp')).toBeUndefined();
  });
});
