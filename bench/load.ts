// The load generator: vegeta (Go, open loop: requests leave on schedule whether or not earlier ones have
// been answered), pinned and built into .tools/go/bin by scripts/install-bench-tools.sh. This module runs
// one attack, turns vegeta's per-request results into latency percentiles and a success ratio, and
// checks every response body for a tools/call result.

import { execFile, spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const repoRoot = fileURLToPath(new URL('../', import.meta.url));
const installScript = path.join(repoRoot, 'scripts', 'install-bench-tools.sh');
export const vegetaBinary = path.join(repoRoot, '.tools', 'go', 'bin', 'vegeta');

function run(file: string, args: readonly string[], inherit: boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: inherit ? 'inherit' : ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr?.on('data', (chunk: Buffer) => {
      stderr += chunk.toString('utf8');
    });
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      if (code === 0) resolve();
      else reject(new Error(`${path.basename(file)} ${args.join(' ')} failed (${code ?? signal ?? '?'})${stderr === '' ? '' : `:\n${stderr}`}`));
    });
  });
}

/** Builds vegeta if it is missing (the install script is idempotent and says what to do without Go). */
export async function ensureVegeta(): Promise<void> {
  await run('bash', [installScript], true);
}

export interface Target {
  method: 'POST';
  url: string;
  headers: Record<string, string>;
  body: string;
}

export interface AttackOptions {
  target: Target;
  /** Requests per second. */
  rate: number;
  seconds: number;
  /** Scratch directory for the targets and results files. */
  dir: string;
  /** Caps vegeta's workers (in-flight requests); beyond it the attack can no longer keep its rate. */
  maxWorkers?: number;
  timeoutSeconds?: number;
  /** Response bodies must contain this to count as a success (besides a 2xx status). */
  expectBody?: string;
  /** Called as soon as the attack is over (every response in), before the results are decoded. */
  afterAttack?: () => void;
}

export interface AttackResult {
  rate: number;
  seconds: number;
  requests: number;
  ok: number;
  /** ok / requests. */
  success: number;
  /** Requests per second actually sent (vegeta falls behind when the machine is saturated). */
  sentRate: number;
  p50Ms: number;
  p99Ms: number;
  p999Ms: number;
  maxMs: number;
  /** Status codes (and "error" for transport errors) of the failed requests, with counts. */
  failures: Record<string, number>;
  /** A few distinct error texts, for the report. */
  errors: string[];
}

/** Nearest-rank percentile of sorted values. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil(p * sorted.length)));
  return sorted[rank - 1] ?? Number.NaN;
}

interface VegetaResult {
  code: number;
  timestamp: string;
  latency: number;
  error: string;
  body: string | null;
}

function isVegetaResult(value: unknown): value is VegetaResult {
  if (typeof value !== 'object' || value === null) return false;
  const v = value as Record<string, unknown>;
  return typeof v['code'] === 'number' && typeof v['latency'] === 'number' && typeof v['timestamp'] === 'string';
}

let attackCounter = 0;

/** Runs one vegeta attack and summarises it. */
export async function attack(opts: AttackOptions): Promise<AttackResult> {
  const id = ++attackCounter;
  const targetsPath = path.join(opts.dir, `targets-${id}.json`);
  const binPath = path.join(opts.dir, `results-${id}.bin`);
  const jsonPath = path.join(opts.dir, `results-${id}.jsonl`);
  const header: Record<string, string[]> = {};
  for (const [k, v] of Object.entries(opts.target.headers)) header[k] = [v];
  const target = { method: opts.target.method, url: opts.target.url, header, body: Buffer.from(opts.target.body).toString('base64') };
  await writeFile(targetsPath, `${JSON.stringify(target)}\n`);

  const args = [
    'attack',
    `-targets=${targetsPath}`,
    '-format=json',
    `-rate=${Math.round(opts.rate)}/1s`,
    `-duration=${opts.seconds}s`,
    `-timeout=${opts.timeoutSeconds ?? 10}s`,
    `-max-workers=${opts.maxWorkers ?? 2000}`,
    '-keepalive=true',
    '-http2=false',
    `-output=${binPath}`,
  ];
  await run(vegetaBinary, args, false);
  opts.afterAttack?.();
  // Encoding after the attack keeps its CPU out of the measured window.
  await new Promise<void>((resolve, reject) => {
    execFile(vegetaBinary, ['encode', '-to=json', `-output=${jsonPath}`, binPath], (err) => {
      if (err !== null) reject(new Error(`vegeta encode failed: ${err.message}`));
      else resolve();
    });
  });
  return summarise(jsonPath, opts);
}

async function summarise(jsonPath: string, opts: AttackOptions): Promise<AttackResult> {
  const latencies: number[] = [];
  const failures: Record<string, number> = {};
  const errors = new Set<string>();
  let ok = 0;
  let first = Number.POSITIVE_INFINITY;
  let last = Number.NEGATIVE_INFINITY;
  const lines = createInterface({ input: createReadStream(jsonPath), crlfDelay: Infinity });
  for await (const line of lines) {
    if (line === '') continue;
    const parsed: unknown = JSON.parse(line);
    if (!isVegetaResult(parsed)) throw new Error(`unexpected vegeta result: ${line.slice(0, 200)}`);
    latencies.push(parsed.latency / 1e6);
    const at = Date.parse(parsed.timestamp);
    if (at < first) first = at;
    if (at > last) last = at;
    const body = parsed.body === null ? '' : Buffer.from(parsed.body, 'base64').toString('utf8');
    const good = parsed.error === '' && parsed.code >= 200 && parsed.code < 300 && (opts.expectBody === undefined || body.includes(opts.expectBody));
    if (good) {
      ok++;
      continue;
    }
    const key = parsed.code === 0 ? 'error' : String(parsed.code);
    failures[key] = (failures[key] ?? 0) + 1;
    if (errors.size < 5) errors.add(parsed.error !== '' ? `${key}: ${parsed.error}` : `${key}: unexpected body ${JSON.stringify(body.slice(0, 200))}`);
  }
  latencies.sort((a, b) => a - b);
  const n = latencies.length;
  const spanSeconds = n > 1 ? (last - first) / 1000 : opts.seconds;
  return {
    rate: opts.rate,
    seconds: opts.seconds,
    requests: n,
    ok,
    success: n === 0 ? 0 : ok / n,
    sentRate: spanSeconds > 0 ? (n - 1) / spanSeconds : 0,
    p50Ms: percentile(latencies, 0.5),
    p99Ms: percentile(latencies, 0.99),
    p999Ms: percentile(latencies, 0.999),
    maxMs: latencies[n - 1] ?? Number.NaN,
    failures,
    errors: [...errors],
  };
}
