// The Envoy configs in envoy/ are accepted by the pinned Envoy, and the test harness (startEnvoy,
// startValkey) really runs them.
import { readdirSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { renderEnvoyConfig, startEnvoy, validateEnvoyConfig } from '../support/envoy.ts';
import type { EnvoyInstance, EnvoyOptions } from '../support/envoy.ts';
import { repoRoot } from '../support/tools.ts';
import { freePort, startValkey } from '../support/valkey.ts';
import type { ValkeyInstance } from '../support/valkey.ts';

const envoyDir = path.join(repoRoot, 'envoy');
const configFiles = readdirSync(envoyDir).filter((f) => f.endsWith('.yaml')).sort();

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function echoUpstream(): Promise<number> {
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      res.writeHead(201, { 'content-type': 'application/json', 'x-upstream': 'echo' });
      res.end(JSON.stringify({ method: req.method, url: req.url, body: Buffer.concat(chunks).toString('utf8') }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => new Promise((resolve) => {
    server.closeAllConnections();
    server.close(() => { resolve(); });
  }));
  return (server.address() as AddressInfo).port;
}

async function envoy(opts: EnvoyOptions): Promise<EnvoyInstance> {
  const instance = await startEnvoy(opts);
  cleanups.push(() => instance.stop());
  return instance;
}

async function post(url: string, body: string): Promise<{ status: number; body: string }> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
  return { status: res.status, body: await res.text() };
}

/** RESP-encoded PING over a raw socket; resolves with the raw reply. */
function respPing(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port }, () => socket.write('*1\r\n$4\r\nPING\r\n'));
    socket.setTimeout(2000, () => {
      socket.destroy();
      reject(new Error('no reply to PING'));
    });
    socket.once('error', reject);
    socket.once('data', (chunk) => {
      socket.destroy();
      resolve(chunk.toString('latin1'));
    });
  });
}

describe('Envoy configs in envoy/', () => {
  it('has configs to check', () => {
    expect(configFiles).toContain('local.yaml');
  });

  for (const file of configFiles) {
    it(`envoy --mode validate accepts envoy/${file} without warnings`, async () => {
      const result = await validateEnvoyConfig(path.join(envoyDir, file));
      expect(result.ok, result.output).toBe(true);
      // Deprecated fields and unsafe defaults show up as [warning] lines.
      expect(result.output).not.toMatch(/\]\[(warning|error|critical)\]/);
    });
  }

  it('envoy --mode validate accepts configs rendered by startEnvoy, with and without the processor', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'mcp-ext-proc-render-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const upstreams = [
      { name: 'alpha', port: 8101, prefixes: ['/alpha/', '/alpha-legacy/'] },
      { name: 'beta', port: 8102, prefixes: ['/beta/'], extProcPerRoute: { overrides: { grpc_initial_metadata: [{ key: 'x-mcp-ext-proc-server', value: 'beta' }] } } },
    ];
    const variants: Record<string, EnvoyOptions> = {
      processor: { upstreams, processor: { port: 50999 }, extProc: { failure_mode_allow: true, processing_mode: { response_body_mode: 'STREAMED' } } },
      direct: { upstreams, processor: null },
    };
    for (const [name, opts] of Object.entries(variants)) {
      const file = path.join(dir, `${name}.yaml`);
      await writeFile(file, renderEnvoyConfig(opts, path.join(dir, 'access.log')));
      const result = await validateEnvoyConfig(file);
      expect(result.ok, `${name}: ${result.output}`).toBe(true);
    }
  });
});

describe('startEnvoy', () => {
  it('proxies to the upstream unchanged when there is no processor (Envoy direct)', async () => {
    const upstreamPort = await echoUpstream();
    const proxy = await envoy({ upstreams: [{ name: 'demo', port: upstreamPort, prefixes: ['/demo/'] }], processor: null });

    const body = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list' });
    const direct = await post(`http://127.0.0.1:${upstreamPort}/demo/mcp?x=1`, body);
    const viaEnvoy = await post(proxy.url('/demo/mcp?x=1'), body);
    expect(viaEnvoy).toEqual(direct);
    expect(direct.status).toBe(201);

    const [entry] = await proxy.accessLog({ count: 1 });
    expect(entry).toMatchObject({ method: 'POST', path: '/demo/mcp?x=1', response_code: 201, upstream_cluster: 'demo', response_code_details: 'via_upstream' });
    expect(entry).toHaveProperty('mcp_tool');
    expect(entry).toHaveProperty('request_id');
    const stats = await proxy.stats('cluster.demo.');
    expect(stats['cluster.demo.upstream_rq_completed']).toBe(1);
  });

  it('fails closed with a 500 when the processor cannot be reached', async () => {
    const upstreamPort = await echoUpstream();
    const nobodyListens = await freePort();
    const proxy = await envoy({ upstreams: [{ name: 'demo', port: upstreamPort, prefixes: ['/demo/'] }], processor: { port: nobodyListens } });

    const res = await post(proxy.url('/demo/mcp'), '{}');
    expect(res.status).toBe(500);
    const [entry] = await proxy.accessLog({ count: 1 });
    expect(entry?.['response_code_details']).toMatch(/^ext_proc_error_gRPC_error_14/);
    // The ext_proc filter state is logged (accepted by 1.40 as %FILTER_STATE(envoy.filters.http.ext_proc:TYPED)%).
    expect(entry?.['ext_proc']).toMatchObject({ failed_open: false });
    expect((await proxy.stats('http.mcp.ext_proc.'))['http.mcp.ext_proc.streams_failed']).toBe(1);
  });

  it("puts Envoy's own complaint in the error when Envoy rejects the config", async () => {
    const start = startEnvoy({ upstreams: [{ name: 'demo', port: 8081, prefixes: ['/demo/'] }], processor: { port: 50051 }, extProc: { no_such_field: true } });
    await expect(start).rejects.toThrow(/Envoy did not start[\s\S]*envoy output[\s\S]*no_such_field/);
  });
});

describe('startValkey', () => {
  it('starts a server that answers PING', async () => {
    const valkey: ValkeyInstance = await startValkey();
    cleanups.push(() => valkey.stop());
    expect(valkey.url).toBe(`redis://127.0.0.1:${valkey.port}`);
    expect(await respPing(valkey.port)).toBe('+PONG\r\n');
  });
});
