// vitest globalSetup: make sure the pinned Envoy and Valkey are installed before any test file runs.
// scripts/install-tools.sh is idempotent and returns at once when they are already there. A missing tool
// is a failed run with the installer's message, never a skipped test.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { envoyBinary, repoRoot, valkeyServerBinary } from './tools.ts';

function runInstaller(script: string): Promise<{ code: number | string; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(script, [], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const forward = (chunk: Buffer): void => {
      output += chunk.toString('utf8');
      // An install downloads ~100 MB of wheels; show progress rather than a silent pause.
      process.stderr.write(chunk);
    };
    child.stdout.on('data', forward);
    child.stderr.on('data', forward);
    child.once('error', (err) => {
      resolve({ code: -1, output: `${output}\ncould not run ${script}: ${err.message}` });
    });
    child.once('exit', (code, signal) => {
      resolve({ code: code ?? signal ?? -1, output });
    });
  });
}

export default async function setup(): Promise<void> {
  const script = path.join(repoRoot, 'scripts', 'install-tools.sh');
  const { code, output } = await runInstaller(script);
  if (code !== 0) {
    throw new Error(
      `scripts/install-tools.sh failed (exit ${String(code)}); the end-to-end tests need the Envoy and Valkey it installs.\n${output.trim()}`,
    );
  }
  // Resolve both now so a broken install fails once, here, with the install hint.
  envoyBinary();
  valkeyServerBinary();
}
