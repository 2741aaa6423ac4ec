// npm run demo: Envoy (envoy/local.yaml) + mcp-ext-proc + the MCP reference server "everything", all on
// localhost, with in-memory state. Needs nothing outside this repository: Envoy comes from the project's
// own tool install (scripts/install-tools.sh), the sample server from node_modules.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseSettings } from '../src/config/settings.ts';
import { startService } from '../src/main.ts';

const root = fileURLToPath(new URL('../../', import.meta.url));
const require = createRequire(import.meta.url);
const children: ChildProcess[] = [];

function start(name: string, command: string, args: string[], env: NodeJS.ProcessEnv = {}): ChildProcess {
  const child = spawn(command, args, { cwd: root, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const prefix = (line: string): string => `[${name}] ${line}`;
  const relay = (chunk: Buffer): void => {
    for (const line of chunk.toString().split('\n')) if (line.trim() !== '') process.stderr.write(`${prefix(line)}\n`);
  };
  child.stdout.on('data', relay);
  child.stderr.on('data', relay);
  child.on('exit', (code, signal) => {
    if (!stopping) {
      process.stderr.write(prefix(`exited (${signal ?? String(code)}); stopping the demo\n`));
      void stop(1);
    }
  });
  children.push(child);
  return child;
}

let stopping = false;
let service: Awaited<ReturnType<typeof startService>> | undefined;

async function stop(code: number): Promise<void> {
  if (stopping) return;
  stopping = true;
  for (const c of children) c.kill('SIGTERM');
  await service?.stop();
  process.exit(code);
}

async function waitFor(url: string, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const res = await fetch(url);
      if (res.status < 500) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`${what} did not come up at ${url}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function main(): Promise<void> {
  const install = spawnSync('bash', [path.join(root, 'scripts/install-tools.sh')], { stdio: 'inherit' });
  if (install.status !== 0) throw new Error('could not install Envoy (scripts/install-tools.sh failed; see above)');

  // The sample MCP server, on the port envoy/local.yaml routes /mcp to.
  const everything = require.resolve('@modelcontextprotocol/server-everything/dist/index.js');
  start('everything', process.execPath, [everything, 'streamableHttp'], { PORT: '8081' });

  service = await startService(
    parseSettings(['--config', path.join(root, 'ext-proc/examples/governance.yaml'), '--listen-address', '127.0.0.1'], process.env),
  );

  start('envoy', path.join(root, '.tools/venv/bin/envoy'), ['-c', path.join(root, 'envoy/local.yaml'), '--concurrency', '1', '--use-dynamic-base-id', '--log-level', 'warn']);
  await waitFor('http://127.0.0.1:9901/ready', 'Envoy');
  await waitFor('http://127.0.0.1:8081/mcp', 'the sample MCP server');

  process.stdout.write(`
mcp-ext-proc demo is running.

  MCP endpoint (through Envoy + mcp-ext-proc):  http://127.0.0.1:10000/mcp
  processor health and metrics:                 http://127.0.0.1:${service.adminPort}/readyz  /metrics
  Envoy admin (ext_proc stats):                 http://127.0.0.1:9901/stats?filter=ext_proc

Connect any MCP client with the Streamable HTTP transport to the endpoint above, for example:
  npx @modelcontextprotocol/inspector      (transport "Streamable HTTP", URL http://127.0.0.1:10000/mcp)
or by hand:
  curl -si http://127.0.0.1:10000/mcp -H 'content-type: application/json' \\
       -H 'accept: application/json, text/event-stream' \\
       -d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}'

The audit trail (one JSON record per MCP message) is written to stdout; Envoy's access log (one line per
request, with the processor's dynamic metadata) appears on stderr, prefixed [envoy].
Ctrl-C stops everything.
`);
}

process.on('SIGINT', () => void stop(0));
process.on('SIGTERM', () => void stop(0));
main().catch((err: unknown) => {
  process.stderr.write(`demo: ${err instanceof Error ? err.message : String(err)}\n`);
  void stop(1);
});
