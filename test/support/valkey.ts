// Runs a throwaway Valkey (Redis-compatible) server for tests: no persistence, loopback only.
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { spawnManaged, valkeyServerBinary } from './tools.ts';

export interface ValkeyInstance {
  readonly port: number;
  /** redis://127.0.0.1:<port> */
  readonly url: string;
  stop(): Promise<void>;
  /** Tail of the server's output, for debugging. */
  logs(): string;
}

/** A port that was free a moment ago: bind 127.0.0.1:0, note the port, close. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => {
        if (port > 0) resolve(port);
        else reject(new Error('could not get a free port'));
      });
    });
  });
}

/** Sends an inline PING and resolves with the first reply line (e.g. "+PONG"); rejects on error or timeout. */
export function ping(port: number, timeoutMs = 500): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    let reply = '';
    const finish = (err: Error | undefined): void => {
      socket.destroy();
      if (err) reject(err);
      else resolve(reply.slice(0, reply.indexOf('\r\n')));
    };
    socket.setTimeout(timeoutMs, () => {
      finish(new Error(`no PING reply within ${timeoutMs} ms`));
    });
    socket.once('error', finish);
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.on('data', (chunk) => {
      reply += chunk.toString('latin1');
      if (reply.includes('\r\n')) finish(undefined);
    });
  });
}

const attempts = 5;

/** Starts valkey-server on a free loopback port and waits until it answers PING. */
export async function startValkey(): Promise<ValkeyInstance> {
  const dir = await mkdtemp(path.join(tmpdir(), 'mcp-ext-proc-valkey-'));
  let lastOutput = '';
  // Valkey needs a concrete port (0 disables TCP), so one picked by freePort() can be taken by a parallel
  // test between our probe and Valkey's bind: retry with a new port when that happens.
  for (let attempt = 1; attempt <= attempts; attempt++) {
    const port = await freePort();
    const proc = spawnManaged(valkeyServerBinary(), [
      '--port', String(port),
      '--bind', '127.0.0.1',
      '--dir', dir,
      // Test data is disposable: no RDB snapshots, no AOF.
      '--save', '',
      '--appendonly', 'no',
      '--daemonize', 'no',
    ]);
    const deadline = Date.now() + 10_000;
    while (!proc.hasExited() && Date.now() < deadline) {
      const reply = await ping(port).catch(() => undefined);
      if (reply === '+PONG') {
        return {
          port,
          url: `redis://127.0.0.1:${port}`,
          async stop(): Promise<void> {
            await proc.stop();
            await rm(dir, { recursive: true, force: true });
          },
          logs: () => proc.output(),
        };
      }
      await sleep(25);
    }
    await proc.stop(1000);
    lastOutput = proc.output();
    if (!/address already in use/i.test(lastOutput)) break;
  }
  await rm(dir, { recursive: true, force: true });
  throw new Error(`Valkey did not start (valkey-server ${valkeyServerBinary()}):\n--- valkey output (tail) ---\n${lastOutput.slice(-4000)}`);
}
