// npm run bench: what mcp-ext-proc costs per MCP request, next to what any ext_proc server costs.
//
// One run, one machine, three setups side by side for each workload (tools/call answered as JSON, and
// as SSE), all through a real Envoy (--concurrency 1) and a real MCP server from the SDK:
//   direct        Envoy without the ext_proc filter
//   no-op         Envoy + bench/noop-ext-proc.ts (grpc-js, same protos, same message flow, no work)
//   mcp-ext-proc  Envoy + the real processor (ext-proc/src/cli.ts), anonymous pass-through document
// and the governed workloads (tools/list of 100 tools filtered to 40, and an allowed tools/call, both as
// JSON, with the same user token on every request) on three setups of their own:
//   direct, no-op as above (the token simply reaches the upstream)
//   governed      Envoy + the real processor with bench/governed.ts's document: JWT identity from a test
//                 IdP started here (test/support/idp.ts), a policy of about 50 rules
//   governed-swap the governed setup plus an RFC 8693 token exchange for the governed server: measured
//                 against governed on the governed call, pair by pair, for what the credential step costs
// Load comes from vegeta (open loop). The processors, the upstream and each Envoy are separate processes;
// CPU per request is read from /proc before and after each measured attack.
//
// Steps: preflight (one request per setup and workload) → warm-up → find the highest rate mcp-ext-proc
// sustains per anonymous workload → measure all setups at half of it, then at a low fixed rate,
// interleaved over several rounds (medians reported) → the governed workloads at the JSON workload's
// rate (the list lower if the governed setup does not sustain twice that) and the low rate, fewer rounds
// → table on stdout, JSON in bench/results/latest.json.
//
// Environment: BENCH_SECONDS (per measured attack, default 6), BENCH_ROUNDS (default 5), BENCH_RATE
// (skip the search and measure at this rate), BENCH_LOW_RATE (default 100, 0 = skip), BENCH_LOW_SECONDS
// (default 3), BENCH_LOW_ROUNDS (default 3), BENCH_GOV_SECONDS (default 4), BENCH_GOV_ROUNDS (default 3,
// 0 = skip the governed workloads), BENCH_SWAP_SECONDS (default 4), BENCH_SWAP_ROUNDS (default 6, 0 = skip
// the token swap comparison), BENCH_KEEP_LOGS=1 (keep the scratch directory: process logs, vegeta
// results, the governed document).

import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { startEnvoy } from '../test/support/envoy.ts';
import type { EnvoyInstance, EnvoyUpstream } from '../test/support/envoy.ts';
import { startIdp } from '../test/support/idp.ts';
import type { Idp } from '../test/support/idp.ts';
import { envoyBinary } from '../test/support/tools.ts';
import { attack, ensureVegeta, percentile } from './load.ts';
import type { AttackResult, Target } from './load.ts';
import { GOV_CALL, GOV_CLIENT, GOV_RESOURCE, GOV_RULES, GOV_SCOPE, GOV_SERVER, GOV_USER, GOV_USERS, GOV_VISIBLE_TO_ALICE, governedDocument } from './governed.ts';
import { GOV_PATH, GOV_PREFIX, GOV_TOOLS, JSON_PATH, JSON_PREFIX, SSE_PATH, SSE_PREFIX, TOOL_NAME } from './mcp-upstream.ts';
import { jsonExchange, measureProcessorPair, type ProcessorPairResult } from './processor-pair.ts';
import { cpuMicros, findPid, portLine, startProcess, waitForLine } from './procs.ts';
import type { BenchProcess } from './procs.ts';

const repoRoot = fileURLToPath(new URL('../', import.meta.url));
const resultsPath = path.join(repoRoot, 'bench', 'results', 'latest.json');

// ---------------------------------------------------------------------------------------------
// Settings

function envNumber(name: string, fallback: number, min: number): number {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback;
  const n = Number(text);
  if (!Number.isFinite(n) || n < min) throw new Error(`${name}="${text}" must be a number ≥ ${min}`);
  return n;
}

const settings = {
  seconds: envNumber('BENCH_SECONDS', 6, 1),
  rounds: Math.round(envNumber('BENCH_ROUNDS', 5, 1)),
  fixedRate: process.env['BENCH_RATE'] ? envNumber('BENCH_RATE', 0, 1) : undefined,
  lowRate: envNumber('BENCH_LOW_RATE', 100, 0),
  lowSeconds: envNumber('BENCH_LOW_SECONDS', 3, 1),
  lowRounds: Math.round(envNumber('BENCH_LOW_ROUNDS', 3, 1)),
  govSeconds: envNumber('BENCH_GOV_SECONDS', 4, 1),
  govRounds: Math.round(envNumber('BENCH_GOV_ROUNDS', 3, 0)),
  swapSeconds: envNumber('BENCH_SWAP_SECONDS', 4, 1),
  swapRounds: Math.round(envNumber('BENCH_SWAP_ROUNDS', 6, 0)),
  pairExchanges: 3000,
  warmupSeconds: 2,
  warmupRate: 300,
  governedWarmupRate: 100,
  search: { startRate: 200, factor: 1.35, maxRate: 12_000, seconds: 3, maxP99Ms: 100, minSuccess: 0.99, minSentRatio: 0.95 },
  envoyConcurrency: 1,
  protocolVersion: '2025-11-25',
};

const TARGETS = { cpuRatio: 1.3, governedCpuRatio: 2.0, addedP99Ms: 2, tokenSwapCpuRatio: 1.05 };

// ---------------------------------------------------------------------------------------------
// Setups and workloads

type SetupId = 'direct' | 'noop' | 'mcp-ext-proc' | 'governed' | 'governed-swap';
type WorkloadId = 'json' | 'sse' | 'gov-list' | 'gov-call';

interface Setup {
  readonly id: SetupId;
  readonly label: string;
  readonly envoy: EnvoyInstance;
  readonly envoyPid: number;
  readonly processor: BenchProcess | undefined;
}

interface Workload {
  readonly id: WorkloadId;
  readonly label: string;
  readonly path: string;
  readonly body: string;
  /** Governed: the same bearer token on every request, and the governed processor instead of mcp-ext-proc. */
  readonly governed: boolean;
  /** The real processor's setup this workload measures, next to direct and no-op. */
  readonly processor: 'mcp-ext-proc' | 'governed';
  readonly contentType: 'application/json' | 'text/event-stream';
}

const REQUEST_BODY = JSON.stringify({
  jsonrpc: '2.0',
  id: 1,
  method: 'tools/call',
  params: { name: TOOL_NAME, arguments: { text: 'hello from the benchmark' } },
});

const GOV_LIST_BODY = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list', params: {} });
const GOV_CALL_BODY = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: GOV_CALL });

const WORKLOADS: readonly Workload[] = [
  { id: 'json', label: 'tools/call, response application/json', path: JSON_PATH, body: REQUEST_BODY, governed: false, processor: 'mcp-ext-proc', contentType: 'application/json' },
  { id: 'sse', label: 'tools/call, response text/event-stream', path: SSE_PATH, body: REQUEST_BODY, governed: false, processor: 'mcp-ext-proc', contentType: 'text/event-stream' },
  {
    id: 'gov-list',
    label: `governed tools/list, ${GOV_TOOLS.length} tools filtered to ${GOV_VISIBLE_TO_ALICE.length}, response application/json`,
    path: GOV_PATH,
    body: GOV_LIST_BODY,
    governed: true,
    processor: 'governed',
    contentType: 'application/json',
  },
  {
    id: 'gov-call',
    label: `governed tools/call ${GOV_CALL.name} (allowed by rule ${GOV_RULES.findIndex((r) => r.id === 'gov-analysts-read') + 1} of ${GOV_RULES.length}), response application/json`,
    path: GOV_PATH,
    body: GOV_CALL_BODY,
    governed: true,
    processor: 'governed',
    contentType: 'application/json',
  },
];

/** The user's access token every governed request carries (set once the IdP has issued it). */
let bearerToken = '';

function targetFor(setup: Setup, workload: Workload): Target {
  return {
    method: 'POST',
    url: setup.envoy.url(workload.path),
    // What an SDK client sends on a Streamable HTTP POST after initialization.
    headers: {
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      'mcp-protocol-version': settings.protocolVersion,
      ...(workload.governed ? { authorization: `Bearer ${bearerToken}` } : {}),
    },
    body: workload.body,
  };
}

/** The setups a workload runs on: direct, no-op and its real processor. */
function setupsFor(setups: readonly Setup[], workload: Workload): Setup[] {
  return setups.filter((s) => s.id === 'direct' || s.id === 'noop' || s.id === workload.processor);
}

// ---------------------------------------------------------------------------------------------
// Measurements

interface Sample {
  readonly attack: AttackResult;
  /** CPU µs per request of the processor (undefined for the direct setup), Envoy and the upstream. */
  readonly processorCpuUs: number | undefined;
  readonly envoyCpuUs: number;
  readonly upstreamCpuUs: number;
  /** Wall-clock window of the attack (ms since the epoch), to find its requests in Envoy's access log. */
  readonly window: readonly [number, number];
}

interface Cell {
  readonly workload: WorkloadId;
  readonly setup: SetupId;
  readonly rate: number;
  readonly samples: Sample[];
}

interface Summary {
  readonly workload: WorkloadId;
  readonly setup: SetupId;
  readonly rate: number;
  readonly rounds: number;
  readonly requests: number;
  /** Over all rounds: ok / requests. */
  readonly success: number;
  /** Medians over rounds. */
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly p999Ms: number;
  readonly maxMs: number;
  readonly processorCpuUsPerRequest: number | undefined;
  readonly envoyCpuUsPerRequest: number;
  readonly upstreamCpuUsPerRequest: number;
  readonly failures: Record<string, number>;
  readonly errors: string[];
}

function median(values: readonly number[]): number {
  const sorted = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return Number.NaN;
  const mid = Math.floor(sorted.length / 2);
  const hi = sorted[mid] ?? Number.NaN;
  const lo = sorted[mid - 1] ?? hi;
  return sorted.length % 2 === 1 ? hi : (lo + hi) / 2;
}

let upstream: BenchProcess | undefined;
let idp: Idp | undefined;
let scratch = '';

async function measure(setup: Setup, workload: Workload, rate: number, seconds: number, opts: { maxWorkers?: number; timeoutSeconds?: number } = {}): Promise<Sample> {
  const upstreamPid = upstream?.pid ?? 0;
  const before = { proc: setup.processor ? cpuMicros(setup.processor.pid) : 0, envoy: cpuMicros(setup.envoyPid), up: cpuMicros(upstreamPid) };
  const after = { proc: 0, envoy: 0, up: 0 };
  const startedAt = Date.now();
  let endedAt = startedAt;
  const result = await attack({
    target: targetFor(setup, workload),
    rate,
    seconds,
    dir: scratch,
    expectBody: '"result"',
    ...opts,
    afterAttack: () => {
      after.proc = setup.processor ? cpuMicros(setup.processor.pid) : 0;
      after.envoy = cpuMicros(setup.envoyPid);
      after.up = cpuMicros(upstreamPid);
      endedAt = Date.now();
    },
  });
  const perRequest = (delta: number): number => (result.requests === 0 ? Number.NaN : delta / result.requests);
  return {
    attack: result,
    processorCpuUs: setup.processor ? perRequest(after.proc - before.proc) : undefined,
    envoyCpuUs: perRequest(after.envoy - before.envoy),
    upstreamCpuUs: perRequest(after.up - before.up),
    window: [startedAt, endedAt],
  };
}

function summarise(cell: Cell): Summary {
  const attacks = cell.samples.map((s) => s.attack);
  const requests = attacks.reduce((n, a) => n + a.requests, 0);
  const ok = attacks.reduce((n, a) => n + a.ok, 0);
  const failures: Record<string, number> = {};
  const errors = new Set<string>();
  for (const a of attacks) {
    for (const [k, v] of Object.entries(a.failures)) failures[k] = (failures[k] ?? 0) + v;
    for (const e of a.errors) if (errors.size < 5) errors.add(e);
  }
  const proc = cell.samples.map((s) => s.processorCpuUs);
  return {
    workload: cell.workload,
    setup: cell.setup,
    rate: cell.rate,
    rounds: cell.samples.length,
    requests,
    success: requests === 0 ? 0 : ok / requests,
    p50Ms: median(attacks.map((a) => a.p50Ms)),
    p99Ms: median(attacks.map((a) => a.p99Ms)),
    p999Ms: median(attacks.map((a) => a.p999Ms)),
    maxMs: Math.max(...attacks.map((a) => a.maxMs)),
    processorCpuUsPerRequest: proc.every((p) => p === undefined) ? undefined : median(proc.map((p) => p ?? Number.NaN)),
    envoyCpuUsPerRequest: median(cell.samples.map((s) => s.envoyCpuUs)),
    upstreamCpuUsPerRequest: median(cell.samples.map((s) => s.upstreamCpuUs)),
    failures,
    errors: [...errors],
  };
}

// ---------------------------------------------------------------------------------------------
// Output

const fmt = {
  ms: (v: number): string => (Number.isFinite(v) ? v.toFixed(v < 10 ? 2 : 1) : 'n/a'),
  us: (v: number | undefined): string => (v === undefined ? '—' : Number.isFinite(v) ? v.toFixed(0) : 'n/a'),
  pct: (v: number): string => `${(v * 100).toFixed(2)}%`,
};

function table(header: readonly string[], rows: readonly (readonly string[])[], indent = ''): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    indent + cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ');
  return [line(header), indent + widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

const SETUP_LABEL: Record<SetupId, string> = {
  direct: 'envoy direct (no ext_proc)',
  noop: 'envoy + no-op ext_proc',
  'mcp-ext-proc': 'envoy + mcp-ext-proc',
  governed: 'envoy + mcp-ext-proc governed',
  'governed-swap': 'envoy + mcp-ext-proc governed + token exchange',
};

interface Comparison {
  readonly workload: WorkloadId;
  readonly rate: number;
  /** The real processor's setup: mcp-ext-proc or governed. */
  readonly processor: SetupId;
  /** Median over rounds of (processor CPU/request ÷ no-op CPU/request), paired by round. */
  readonly cpuRatio: number;
  /** Median over rounds of (p99 processor − p99 direct), paired by round. */
  readonly addedP99Ms: number;
  readonly addedP99OverNoopMs: number;
  readonly addedP50Ms: number;
}

function compare(cells: readonly Cell[], workload: Workload, rate: number): Comparison | undefined {
  const find = (setup: SetupId): Cell | undefined => cells.find((c) => c.workload === workload.id && c.setup === setup && c.rate === rate);
  const direct = find('direct');
  const noop = find('noop');
  const real = find(workload.processor);
  if (direct === undefined || noop === undefined || real === undefined) return undefined;
  const paired = (f: (i: number) => number): number => median(real.samples.map((_, i) => f(i)));
  return {
    workload: workload.id,
    rate,
    processor: workload.processor,
    cpuRatio: paired((i) => (real.samples[i]?.processorCpuUs ?? Number.NaN) / (noop.samples[i]?.processorCpuUs ?? Number.NaN)),
    addedP99Ms: paired((i) => (real.samples[i]?.attack.p99Ms ?? Number.NaN) - (direct.samples[i]?.attack.p99Ms ?? Number.NaN)),
    addedP99OverNoopMs: paired((i) => (real.samples[i]?.attack.p99Ms ?? Number.NaN) - (noop.samples[i]?.attack.p99Ms ?? Number.NaN)),
    addedP50Ms: paired((i) => (real.samples[i]?.attack.p50Ms ?? Number.NaN) - (direct.samples[i]?.attack.p50Ms ?? Number.NaN)),
  };
}

function report(title: string, summaries: readonly Summary[], comparison: Comparison | undefined): string {
  const rows = summaries.map((s) => [
    SETUP_LABEL[s.setup],
    String(s.rate),
    fmt.pct(s.success),
    fmt.ms(s.p50Ms),
    fmt.ms(s.p99Ms),
    fmt.ms(s.p999Ms),
    fmt.us(s.processorCpuUsPerRequest),
    fmt.us(s.envoyCpuUsPerRequest),
    fmt.us(s.upstreamCpuUsPerRequest),
  ]);
  const out = [title, table(['setup', 'rps', 'success', 'p50 ms', 'p99 ms', 'p99.9 ms', 'proc CPU µs/req', 'envoy CPU µs/req', 'upstream CPU µs/req'], rows)];
  for (const s of summaries) {
    if (Object.keys(s.failures).length > 0) out.push(`  ${SETUP_LABEL[s.setup]} failures: ${JSON.stringify(s.failures)} e.g. ${s.errors.join(' | ')}`);
  }
  if (comparison !== undefined) {
    const mark = (ok: boolean): string => (ok ? 'ok' : 'OVER TARGET');
    const name = comparison.processor === 'governed' ? 'mcp-ext-proc governed' : 'mcp-ext-proc';
    const cpuTarget = comparison.processor === 'governed' ? TARGETS.governedCpuRatio : TARGETS.cpuRatio;
    out.push(
      `  processor CPU/request, ${name} ÷ no-op: ${comparison.cpuRatio.toFixed(2)}  (target ≤ ${cpuTarget}: ${mark(comparison.cpuRatio <= cpuTarget)})`,
      `  added p99, ${name} − direct: ${comparison.addedP99Ms.toFixed(2)} ms  (target ≤ ${TARGETS.addedP99Ms} ms: ${mark(comparison.addedP99Ms <= TARGETS.addedP99Ms)});` +
        ` over no-op: ${comparison.addedP99OverNoopMs.toFixed(2)} ms; added p50 over direct: ${comparison.addedP50Ms.toFixed(2)} ms`,
    );
  }
  return out.join('\n');
}

function log(message: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${message}\n`);
}

// ---------------------------------------------------------------------------------------------
// Start-up

async function startUpstream(): Promise<{ proc: BenchProcess; port: number }> {
  const proc = startProcess('upstream', process.execPath, [path.join(repoRoot, 'bench', 'mcp-upstream.ts')], scratch);
  return { proc, port: await waitForLine(proc, proc.stdoutPath, portLine) };
}

async function startNoop(): Promise<{ proc: BenchProcess; port: number }> {
  const proc = startProcess('noop-ext-proc', process.execPath, [path.join(repoRoot, 'bench', 'noop-ext-proc.ts')], scratch);
  return { proc, port: await waitForLine(proc, proc.stdoutPath, portLine) };
}

async function startRealProcessor(name: string, configPath: string): Promise<{ proc: BenchProcess; port: number; adminPort: number }> {
  const args = [
    path.join(repoRoot, 'ext-proc', 'src', 'cli.ts'),
    '--config', configPath,
    '--grpc-port', '0',
    '--admin-port', '0',
    '--listen-address', '127.0.0.1',
  ];
  const proc = startProcess(name, process.execPath, args, scratch);
  // Its operational log (stderr, pino JSON) announces the bound ports.
  const ports = await waitForLine(proc, proc.stderrPath, (line) => {
    if (!line.includes('mcp-ext-proc ready')) return undefined;
    const parsed: unknown = JSON.parse(line);
    const get = (key: string): unknown => (typeof parsed === 'object' && parsed !== null ? Reflect.get(parsed, key) : undefined);
    const grpc = get('grpcPort');
    const admin = get('adminPort');
    return typeof grpc === 'number' && typeof admin === 'number' ? { grpc, admin } : undefined;
  });
  return { proc, port: ports.grpc, adminPort: ports.admin };
}

/** Validates a governance document with the CLI's own check-config; throws with its message if it fails. */
function checkConfig(file: string): void {
  try {
    execFileSync(process.execPath, [path.join(repoRoot, 'ext-proc', 'src', 'cli.ts'), 'check-config', file], { encoding: 'utf8', stdio: 'pipe' });
  } catch (err) {
    const out = typeof err === 'object' && err !== null ? `${String(Reflect.get(err, 'stdout'))}${String(Reflect.get(err, 'stderr'))}` : String(err);
    throw new Error(`check-config ${file} failed:\n${out}`, { cause: err });
  }
}

async function startSetup(id: SetupId, upstreams: EnvoyUpstream[], processor: { proc: BenchProcess; port: number } | undefined): Promise<Setup> {
  const envoy = await startEnvoy({
    upstreams,
    processor: processor === undefined ? null : { port: processor.port },
    concurrency: settings.envoyConcurrency,
    logLevel: 'warning',
  });
  const envoyPid = findPid(envoy.configPath);
  if (envoyPid === undefined) throw new Error(`could not find the Envoy process for ${envoy.configPath}`);
  return { id, label: SETUP_LABEL[id], envoy, envoyPid, processor: processor?.proc };
}

/** CPU each process burns with no traffic (timers, GC, health checks), in µs per second, over 2 s. */
async function idleCpu(setups: readonly Setup[]): Promise<Record<string, number>> {
  await sleep(1000);
  const pids: Record<string, number> = { upstream: upstream?.pid ?? 0 };
  for (const s of setups) {
    pids[`envoy (${s.id})`] = s.envoyPid;
    if (s.processor) pids[s.id] = s.processor.pid;
  }
  const before = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, cpuMicros(pid)]));
  const seconds = 2;
  await sleep(seconds * 1000);
  return Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, Math.round((cpuMicros(pid) - (before[k] ?? 0)) / seconds)]));
}

async function preflight(setup: Setup, workload: Workload): Promise<void> {
  const target = targetFor(setup, workload);
  const res = await fetch(target.url, { method: 'POST', headers: target.headers, body: target.body, signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  const fail = (why: string): Error => new Error(`preflight ${setup.id}/${workload.id}: ${why}: ${res.status} ${text.slice(0, 500)}\n${setup.processor?.tail() ?? ''}`);
  if (res.status !== 200 || !text.includes('"result"')) throw fail('no result');
  const type = res.headers.get('content-type') ?? '';
  if (!type.startsWith(workload.contentType)) throw new Error(`preflight ${setup.id}/${workload.id}: content-type ${type}, expected ${workload.contentType}`);
  if (workload.governed) checkGoverned(setup, workload, text, fail);
}

/**
 * The governed workloads must do what they claim: the list holds all 100 tools without the policy and
 * exactly alice's 40 through the governed processor; the call's result is the tool's, not an error.
 */
function checkGoverned(setup: Setup, workload: Workload, text: string, fail: (why: string) => Error): void {
  const parsed: unknown = JSON.parse(text);
  const result: unknown = typeof parsed === 'object' && parsed !== null ? Reflect.get(parsed, 'result') : undefined;
  if (typeof result !== 'object' || result === null) throw fail('no result object');
  if (workload.id === 'gov-list') {
    const tools: unknown = Reflect.get(result, 'tools');
    if (!Array.isArray(tools)) throw fail('no tools array');
    const names = tools.map((t: unknown) => (typeof t === 'object' && t !== null ? String(Reflect.get(t, 'name')) : '?')).sort();
    const want = (setup.id === 'governed' ? [...GOV_VISIBLE_TO_ALICE] : GOV_TOOLS.map((t) => t.name)).sort();
    if (names.join(',') !== want.join(',')) {
      throw fail(`tools/list returned ${names.length} tools, expected ${want.length}; unexpected: ${names.filter((n) => !want.includes(n)).join(' ') || '-'}; missing: ${want.filter((n) => !names.includes(n)).join(' ') || '-'}`);
    }
    log(`  preflight ${setup.id}/${workload.id}: ${names.length} of ${GOV_TOOLS.length} tools listed`);
  } else {
    const content: unknown = Reflect.get(result, 'content');
    const first: unknown = Array.isArray(content) ? content[0] : undefined;
    const body: unknown = typeof first === 'object' && first !== null ? Reflect.get(first, 'text') : undefined;
    if (Reflect.get(result, 'isError') === true || typeof body !== 'string' || !body.includes(`"tool":"${GOV_CALL.name}"`)) throw fail('the call did not return the tool\'s answer');
  }
}

// ---------------------------------------------------------------------------------------------
// The run

interface SearchStep {
  rate: number;
  pass: boolean;
  /** Why it did not pass. */
  why: string[];
  success: number;
  sentRate: number;
  p50Ms: number;
  p99Ms: number;
  p999Ms: number;
}

interface SearchResult {
  workload: WorkloadId;
  steps: SearchStep[];
  /** The highest rate that passed. */
  sustainedRate: number;
  /** The first rate that did not, if any. */
  failedRate: number | undefined;
}

async function search(setup: Setup, workload: Workload): Promise<SearchResult> {
  const s = settings.search;
  const steps: SearchStep[] = [];
  let sustained = 0;
  let failed: number | undefined;
  let retried = false;
  for (let rate = s.startRate; rate <= s.maxRate; ) {
    const sample = await measure(setup, workload, rate, s.seconds, { maxWorkers: 2000, timeoutSeconds: 5 });
    const a = sample.attack;
    const why: string[] = [];
    if (a.success < s.minSuccess) why.push(`success ${fmt.pct(a.success)}`);
    if (a.p99Ms > s.maxP99Ms) why.push(`p99 ${fmt.ms(a.p99Ms)} ms`);
    if (a.sentRate < s.minSentRatio * rate) why.push(`vegeta sent only ${a.sentRate.toFixed(0)} rps`);
    const pass = why.length === 0;
    steps.push({ rate, pass, why, success: a.success, sentRate: a.sentRate, p50Ms: a.p50Ms, p99Ms: a.p99Ms, p999Ms: a.p999Ms });
    log(
      `  ${workload.id} @ ${rate} rps: success ${fmt.pct(a.success)}, sent ${a.sentRate.toFixed(0)} rps, p50 ${fmt.ms(a.p50Ms)} ms, ` +
        `p99 ${fmt.ms(a.p99Ms)} ms → ${pass ? 'ok' : `failed (${why.join(', ')})${retried ? '' : ', trying once more'}`}`,
    );
    await sleep(pass ? 500 : 2000);
    if (!pass) {
      // One failed step may be a neighbour's burst on this shared machine (or a dropped processor
      // connection): a rate counts as saturating only when it fails twice in a row.
      if (!retried) {
        retried = true;
        continue;
      }
      failed = rate;
      break;
    }
    retried = false;
    sustained = rate;
    rate = Math.round(rate * s.factor);
  }
  return { workload: workload.id, steps, sustainedRate: sustained, failedRate: failed };
}

/**
 * The governed list's rate (the heaviest workload: 100 tools from the upstream, ~55 kB, filtered): like
 * the anonymous workloads, at most half of what the governed setup sustains. Starting from the JSON
 * workload's rate, a short probe at twice the candidate must pass the search's criteria (a marginal
 * failure counts when it repeats); else the candidate steps down by the search's factor, not below
 * `floor`. Overloaded steps fail requests on purpose (Envoy's message timeout, 504): their windows are
 * returned so that the report can tell those 5xx apart.
 */
async function governedRate(
  setup: Setup,
  workload: Workload,
  start: number,
  floor: number,
): Promise<{ rate: number; probes: SearchStep[]; windows: (readonly [number, number])[] }> {
  const s = settings.search;
  const probes: SearchStep[] = [];
  const windows: (readonly [number, number])[] = [];
  let retried = false;
  for (let rate = start; ; ) {
    const probeRate = 2 * rate;
    const sample = await measure(setup, workload, probeRate, s.seconds, { maxWorkers: 2000, timeoutSeconds: 5 });
    const a = sample.attack;
    windows.push(sample.window);
    const why: string[] = [];
    if (a.success < s.minSuccess) why.push(`success ${fmt.pct(a.success)}`);
    if (a.p99Ms > s.maxP99Ms) why.push(`p99 ${fmt.ms(a.p99Ms)} ms`);
    if (a.sentRate < s.minSentRatio * probeRate) why.push(`vegeta sent only ${a.sentRate.toFixed(0)} rps`);
    const pass = why.length === 0;
    probes.push({ rate: probeRate, pass, why, success: a.success, sentRate: a.sentRate, p50Ms: a.p50Ms, p99Ms: a.p99Ms, p999Ms: a.p999Ms });
    // Clearly overloaded (p99 over twice the limit, or failures): no second try, step down at once.
    const marginal = a.success >= s.minSuccess && a.p99Ms <= 2 * s.maxP99Ms;
    log(
      `  probe ${workload.id} ${setup.id} @ ${probeRate} rps (for ${rate}): success ${fmt.pct(a.success)}, p50 ${fmt.ms(a.p50Ms)} ms, ` +
        `p99 ${fmt.ms(a.p99Ms)} ms → ${pass ? 'ok' : `failed (${why.join(', ')})`}`,
    );
    await sleep(pass ? 500 : 2000);
    if (pass) return { rate, probes, windows };
    if (!retried && marginal) {
      retried = true;
      continue;
    }
    retried = false;
    const next = Math.max(1, Math.round(rate / s.factor));
    if (next <= floor || next === rate) return { rate: Math.max(1, floor, next), probes, windows };
    rate = next;
  }
}

function rotate<T>(items: readonly T[], by: number): T[] {
  const k = by % items.length;
  return [...items.slice(k), ...items.slice(0, k)];
}

async function measureAll(setups: readonly Setup[], workloads: readonly Workload[], rates: Partial<Record<WorkloadId, number>>, seconds: number, rounds: number, cells: Cell[]): Promise<void> {
  for (let round = 0; round < rounds; round++) {
    // Interleaved: every round runs every setup, in a rotated order, so slow drifts of a shared, noisy
    // machine hit all setups alike; medians over rounds drop the outliers.
    for (const workload of rotate(workloads, round)) {
      for (const setup of rotate(setupsFor(setups, workload), round)) {
        const rate = rates[workload.id];
        if (rate === undefined) continue;
        let cell = cells.find((c) => c.workload === workload.id && c.setup === setup.id && c.rate === rate);
        if (cell === undefined) {
          cell = { workload: workload.id, setup: setup.id, rate, samples: [] };
          cells.push(cell);
        }
        const sample = await measure(setup, workload, rate, seconds);
        cell.samples.push(sample);
        const a = sample.attack;
        log(
          `  round ${round + 1}/${rounds} ${workload.id} ${setup.id} @ ${rate} rps: success ${fmt.pct(a.success)}, ` +
            `p50 ${fmt.ms(a.p50Ms)} p99 ${fmt.ms(a.p99Ms)} p99.9 ${fmt.ms(a.p999Ms)} ms, proc CPU ${fmt.us(sample.processorCpuUs)} µs/req`,
        );
        await sleep(300);
      }
    }
  }
}

/** One workload on a pair of setups, alternating which goes first, so drift hits both alike. */
async function measurePair(pair: readonly [Setup, Setup], workload: Workload, rate: number, seconds: number, rounds: number, cells: Cell[]): Promise<void> {
  // Not recorded: both processors reach a steady state at this rate first (JIT, heap), whatever ran before.
  for (const setup of pair) await measure(setup, workload, rate, seconds);
  for (let round = 0; round < rounds; round++) {
    for (const setup of rotate(pair, round)) {
      let cell = cells.find((c) => c.setup === setup.id && c.rate === rate);
      if (cell === undefined) {
        cell = { workload: workload.id, setup: setup.id, rate, samples: [] };
        cells.push(cell);
      }
      const sample = await measure(setup, workload, rate, seconds);
      cell.samples.push(sample);
      log(`  round ${round + 1}/${rounds} ${setup.id} @ ${rate} rps: success ${fmt.pct(sample.attack.success)}, p50 ${fmt.ms(sample.attack.p50Ms)} p99 ${fmt.ms(sample.attack.p99Ms)} ms, proc CPU ${fmt.us(sample.processorCpuUs)} µs/req`);
      await sleep(300);
    }
  }
}

interface TokenSwapComparison {
  readonly rate: number;
  /** Median over rounds of (CPU/request with token exchange ÷ without), paired by round. */
  readonly cpuRatio: number;
  readonly cpuUsWithout: number;
  readonly cpuUsWith: number;
  /** Median over rounds of (p50 with − p50 without). */
  readonly addedP50Ms: number;
}

function tokenSwapComparison(cells: readonly Cell[], rate: number): TokenSwapComparison | undefined {
  const without = cells.find((c) => c.setup === 'governed' && c.rate === rate);
  const withSwap = cells.find((c) => c.setup === 'governed-swap' && c.rate === rate);
  if (without === undefined || withSwap === undefined) return undefined;
  const paired = (f: (i: number) => number): number => median(withSwap.samples.map((_, i) => f(i)));
  return {
    rate,
    cpuRatio: paired((i) => (withSwap.samples[i]?.processorCpuUs ?? Number.NaN) / (without.samples[i]?.processorCpuUs ?? Number.NaN)),
    cpuUsWithout: median(without.samples.map((x) => x.processorCpuUs ?? Number.NaN)),
    cpuUsWith: median(withSwap.samples.map((x) => x.processorCpuUs ?? Number.NaN)),
    addedP50Ms: paired((i) => (withSwap.samples[i]?.attack.p50Ms ?? Number.NaN) - (without.samples[i]?.attack.p50Ms ?? Number.NaN)),
  };
}

/** The token-swap processor's credential lookups by source, and its token endpoint requests, from /metrics. */
async function credentialMetrics(adminPort: number): Promise<Record<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const lookup = /^mcp_ext_proc_credential_lookups_total\{[^}]*source="([a-z0-9]+)"[^}]*\} (\S+)$/.exec(line);
    if (lookup?.[1] !== undefined) out[lookup[1]] = (out[lookup[1]] ?? 0) + Number(lookup[2]);
    const fetched = /^mcp_ext_proc_credential_exchange_duration_seconds_count\{[^}]*\} (\S+)$/.exec(line);
    if (fetched?.[1] !== undefined) out['tokenEndpointRequests'] = (out['tokenEndpointRequests'] ?? 0) + Number(fetched[1]);
  }
  return out;
}

function tokenSwapReport(summaries: readonly Summary[], comparisons: readonly TokenSwapComparison[], lookups: Record<string, number> | undefined, alone: ProcessorPairResult | undefined): string {
  const out = ['\nTOKEN SWAP: governed tools/call with and without RFC 8693 token exchange (credential cached after the first request)'];
  if (alone !== undefined) {
    const ratio = median(alone.ratios);
    out.push(
      `  processors alone (the call's ext_proc messages from a gRPC client, ${alone.ratios.length} rounds × ${alone.exchangesPerRound} exchanges to each, interleaved): ` +
        `${fmt.us(median(alone.a))} → ${fmt.us(median(alone.b))} µs/exchange, credential step ×${ratio.toFixed(3)} ` +
        `(rounds ${alone.ratios.map((r) => r.toFixed(3)).join(', ')}; ${ratio <= TARGETS.tokenSwapCpuRatio ? 'within' : 'OVER'} the ≤ ×${TARGETS.tokenSwapCpuRatio} target)`,
    );
    out.push('  through Envoy (vegeta, one setup at a time, alternating; noisier: Envoy, the upstream and vegeta share the machine):');
  }
  for (const c of comparisons) {
    const rows = summaries
      .filter((x) => x.rate === c.rate)
      .map((x) => [SETUP_LABEL[x.setup], String(x.rate), fmt.pct(x.success), fmt.ms(x.p50Ms), fmt.ms(x.p99Ms), fmt.us(x.processorCpuUsPerRequest)]);
    out.push(`  at ${c.rate} rps, ${rows.length > 0 ? summaries.find((x) => x.rate === c.rate)?.rounds ?? 0 : 0} rounds, medians`);
    out.push(table(['setup', 'rps', 'success', 'p50 ms', 'p99 ms', 'proc CPU µs/req'], rows, '  '));
    const verdict = c.cpuRatio <= TARGETS.tokenSwapCpuRatio ? 'within' : 'OVER';
    out.push(`  credential step: processor CPU ×${c.cpuRatio.toFixed(3)} (${fmt.us(c.cpuUsWithout)} → ${fmt.us(c.cpuUsWith)} µs/req; ${verdict} the ≤ ×${TARGETS.tokenSwapCpuRatio} target), p50 ${c.addedP50Ms >= 0 ? '+' : ''}${fmt.ms(c.addedP50Ms)} ms`);
  }
  if (lookups !== undefined) {
    const total = Object.entries(lookups).filter(([k]) => k !== 'tokenEndpointRequests').reduce((n, [, v]) => n + v, 0);
    const hits = (lookups['l1'] ?? 0) + (lookups['l2'] ?? 0);
    out.push(
      `  credential lookups of the token-exchange processor over both comparisons: ${total} (l1 ${lookups['l1'] ?? 0}, l2 ${lookups['l2'] ?? 0}, exchanged ${lookups['exchanged'] ?? 0}, coalesced ${lookups['coalesced'] ?? 0}); ` +
        `hit rate ${total === 0 ? 'n/a' : fmt.pct(hits / total)}; token endpoint requests ${lookups['tokenEndpointRequests'] ?? 0}`,
    );
  }
  return out.join('\n');
}

const EXT_PROC_COUNTERS = [
  'streams_started',
  'stream_msgs_sent',
  'stream_msgs_received',
  'streams_failed',
  'failure_mode_allowed',
  'message_timeouts',
  'spurious_msgs_received',
  'rejected_header_mutations',
  'override_message_timeout_received',
  'clear_route_cache_ignored',
];

const PROCESSOR_CLUSTER_COUNTERS = [
  'upstream_cx_total',
  'upstream_cx_destroy_remote_with_active_rq',
  'upstream_rq_total',
  'upstream_rq_tx_reset',
  'upstream_rq_rx_reset',
  'http2.rx_reset',
  'http2.tx_reset',
];

async function envoyCounters(setup: Setup): Promise<Record<string, number>> {
  const stats = await setup.envoy.stats('http.mcp.');
  const out: Record<string, number> = {};
  for (const name of EXT_PROC_COUNTERS) {
    const v = stats[`http.mcp.ext_proc.${name}`];
    if (v !== undefined) out[`ext_proc.${name}`] = v;
  }
  for (const name of ['downstream_rq_total', 'downstream_rq_2xx', 'downstream_rq_4xx', 'downstream_rq_5xx']) {
    out[name] = stats[`http.mcp.${name}`] ?? 0;
  }
  if (setup.processor !== undefined) {
    // The gRPC connection(s) to the processor: a new connection or a remote close with streams in
    // flight means the processor's HTTP/2 server dropped the connection (each in-flight request fails).
    const cluster = await setup.envoy.stats('cluster.mcp_ext_proc.');
    for (const name of PROCESSOR_CLUSTER_COUNTERS) out[`processor_cluster.${name}`] = cluster[`cluster.mcp_ext_proc.${name}`] ?? 0;
  }
  return out;
}

/** Envoy's own account of the 5xx it returned: response_code_details (e.g. ext_proc_error_gRPC_error_13). */
async function envoy5xx(
  setup: Setup,
  probeWindows: readonly (readonly [number, number])[],
): Promise<{ count: number; inProbes: number; byDetails: Record<string, number>; examples: Record<string, unknown>[] }> {
  const entries = await setup.envoy.accessLog();
  const byDetails: Record<string, number> = {};
  const examples: Record<string, unknown>[] = [];
  let count = 0;
  let inProbes = 0;
  for (const e of entries) {
    const code = Number(e['response_code']);
    if (!(code >= 500)) continue;
    count++;
    const at = Date.parse(String(e['start_time']));
    if (probeWindows.some(([from, to]) => at >= from && at <= to)) inProbes++;
    const details = `${code} ${String(e['response_code_details'])}`;
    byDetails[details] = (byDetails[details] ?? 0) + 1;
    if (examples.length < 3) examples.push(e);
  }
  return { count, inProbes, byDetails, examples };
}

const PHASES = [
  ['request headers', 'request_header_latency_us'],
  ['request body', 'request_body_total_latency_us'],
  ['response headers', 'response_header_latency_us'],
  ['response body (all chunks)', 'response_body_total_latency_us'],
] as const;

interface PhaseLatency {
  readonly workload: WorkloadId;
  readonly setup: SetupId;
  readonly rate: number;
  readonly requests: number;
  /** Per phase: [p50, p99] in ms of the time Envoy waited for the processor's answer. */
  readonly phases: Record<string, readonly [number, number]>;
}

/**
 * How long Envoy waited for the processor in each phase (its ext_proc filter state, in the access log),
 * for the requests of each measured cell, all rounds pooled: where the processor's added latency is.
 */
async function phaseLatencies(setup: Setup, cells: readonly Cell[]): Promise<PhaseLatency[]> {
  const entries = await setup.envoy.accessLog();
  const out: PhaseLatency[] = [];
  for (const cell of cells) {
    if (cell.setup !== setup.id) continue;
    const workload = WORKLOADS.find((w) => w.id === cell.workload);
    const values: Record<string, number[]> = {};
    let requests = 0;
    for (const e of entries) {
      const at = Date.parse(String(e['start_time']));
      if (workload === undefined || e['path'] !== workload.path || !cell.samples.some((s) => at >= s.window[0] && at <= s.window[1])) continue;
      const state = e['ext_proc'];
      if (typeof state !== 'object' || state === null) continue;
      requests++;
      for (const [name, field] of PHASES) {
        const v: unknown = Reflect.get(state, field);
        if (typeof v === 'number') (values[name] ??= []).push(v / 1000);
      }
    }
    const phases: Record<string, readonly [number, number]> = {};
    for (const [name] of PHASES) {
      const sorted = (values[name] ?? []).sort((a, b) => a - b);
      phases[name] = [percentile(sorted, 0.5), percentile(sorted, 0.99)];
    }
    out.push({ workload: cell.workload, setup: cell.setup, rate: cell.rate, requests, phases });
  }
  return out;
}

function phaseReport(rows: readonly PhaseLatency[]): string {
  if (rows.length === 0) return '';
  return table(
    ['Envoy waiting for the processor, ms p50 / p99', ...PHASES.map(([name]) => name)],
    rows.map((r) => [
      `${SETUP_LABEL[r.setup]} (${r.requests} requests)`,
      ...PHASES.map(([name]) => {
        const [p50, p99] = r.phases[name] ?? [Number.NaN, Number.NaN];
        return Number.isFinite(p50) ? `${fmt.ms(p50)} / ${fmt.ms(p99)}` : '—';
      }),
    ]),
    '  ',
  );
}

async function processorLogProblems(proc: BenchProcess): Promise<{ errors: number; warnings: number; examples: string[] }> {
  const text = await readFile(proc.stderrPath, 'utf8').catch(() => '');
  let errors = 0;
  let warnings = 0;
  const examples: string[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    let level: number;
    try {
      const parsed: unknown = JSON.parse(line);
      const l: unknown = typeof parsed === 'object' && parsed !== null ? Reflect.get(parsed, 'level') : undefined;
      level = typeof l === 'number' ? l : 0;
    } catch {
      level = 50; // not a pino line: a crash trace or a runtime warning
    }
    if (level >= 50) errors++;
    else if (level >= 40) warnings++;
    if (level >= 40 && examples.length < 5) examples.push(line.slice(0, 300));
  }
  return { errors, warnings, examples };
}

async function main(): Promise<void> {
  const started = Date.now();
  log('checking tools (Envoy: scripts/install-tools.sh, vegeta: scripts/install-bench-tools.sh)');
  execFileSync('bash', [path.join(repoRoot, 'scripts', 'install-tools.sh')], { stdio: 'inherit' });
  await ensureVegeta();

  scratch = mkdtempSync(path.join(tmpdir(), 'mcp-ext-proc-bench-'));
  const setups: Setup[] = [];
  const stopAll = async (): Promise<void> => {
    await Promise.allSettled(setups.map((s) => s.envoy.stop()));
    await Promise.allSettled([upstream?.stop(), idp?.stop(), ...setups.map((s) => s.processor?.stop())]);
  };
  process.once('SIGINT', () => void stopAll().finally(() => process.exit(130)));
  process.once('SIGTERM', () => void stopAll().finally(() => process.exit(143)));

  try {
    const up = await startUpstream();
    upstream = up.proc;
    const governedOn = settings.govRounds > 0;
    const workloads = WORKLOADS.filter((w) => governedOn || !w.governed);
    const anonymous = workloads.filter((w) => !w.governed);
    const governedWorkloads = workloads.filter((w) => w.governed);

    // The governed processor: a document naming the test IdP (in this process; the processor fetches
    // its discovery document and keys once, then verifies the same token from its cache).
    let governed: { proc: BenchProcess; port: number } | undefined;
    const swapOn = governedOn && settings.swapRounds > 0;
    if (governedOn) {
      idp = await startIdp({ users: GOV_USERS, tokenTtlSeconds: 3600, exchangeTokenTtlSeconds: 3600 });
      const docPath = path.join(scratch, 'governance-governed.yaml');
      writeFileSync(docPath, governedDocument(idp.issuer));
      checkConfig(docPath);
      if (swapOn) {
        // The same document, plus a token exchange for the governed server (the gateway's client secret in a file).
        const secretPath = path.join(scratch, 'gateway-secret');
        writeFileSync(secretPath, 'gateway-secret\n');
        writeFileSync(path.join(scratch, 'governance-governed-swap.yaml'), governedDocument(idp.issuer, secretPath));
        checkConfig(path.join(scratch, 'governance-governed-swap.yaml'));
      }
      // One token for the whole run (an hour: longer than the bench), so the verified-token cache is warm.
      bearerToken = await idp.userToken({ user: GOV_USER, client: GOV_CLIENT, resource: GOV_RESOURCE, scope: GOV_SCOPE, ttlSeconds: 3600 });
      log(`test IdP ${idp.issuer}; governed document ${docPath}: ${GOV_RULES.length} rules, check-config ok`);
    }
    const [noop, real] = await Promise.all([startNoop(), startRealProcessor('mcp-ext-proc', path.join(repoRoot, 'bench', 'governance.yaml'))]);
    if (governedOn) governed = await startRealProcessor('mcp-ext-proc-governed', path.join(scratch, 'governance-governed.yaml'));
    const anonUpstreams: EnvoyUpstream[] = [
      { name: 'bench-json', port: up.port, prefixes: [JSON_PREFIX] },
      { name: 'bench-sse', port: up.port, prefixes: [SSE_PREFIX] },
    ];
    const govUpstreams: EnvoyUpstream[] = governedOn ? [{ name: GOV_SERVER, port: up.port, prefixes: [GOV_PREFIX] }] : [];
    setups.push(await startSetup('direct', [...anonUpstreams, ...govUpstreams], undefined));
    setups.push(await startSetup('noop', [...anonUpstreams, ...govUpstreams], noop));
    setups.push(await startSetup('mcp-ext-proc', anonUpstreams, real));
    if (governed !== undefined) setups.push(await startSetup('governed', govUpstreams, governed));
    const realSetup = setups[2];
    if (realSetup === undefined) throw new Error('unreachable');
    log(
      `upstream :${up.port}, no-op ext_proc :${noop.port}, mcp-ext-proc :${real.port}` +
        `${governed === undefined ? '' : `, mcp-ext-proc governed :${governed.port}`}, Envoys ${setups.map((s) => `${s.id} :${s.envoy.port}`).join(', ')}`,
    );

    for (const workload of workloads) for (const setup of setupsFor(setups, workload)) await preflight(setup, workload);
    log(`preflight ok: every setup answers tools/call with a result, as JSON and as SSE${governedOn ? `; the governed list holds alice's ${GOV_VISIBLE_TO_ALICE.length} tools and her call succeeds` : ''}`);

    // The governed list is far heavier (100 tools, ~55 kB, filtered): warming it up at the anonymous
    // workloads' rate overloads the governed processor (Envoy's message timeout, 504), so it warms up slower.
    const govWarmupRate = Math.min(settings.warmupRate, settings.governedWarmupRate);
    const warmupRate = (w: Workload): number => (w.governed ? govWarmupRate : settings.warmupRate);
    log(`warm-up: ${settings.warmupSeconds} s at ${settings.warmupRate} rps per setup and workload${governedOn ? ` (governed workloads: ${govWarmupRate} rps)` : ''}`);
    for (const workload of workloads) for (const setup of setupsFor(setups, workload)) await measure(setup, workload, warmupRate(workload), settings.warmupSeconds);
    const idle = await idleCpu(setups);
    const countersBefore = await Promise.all(setups.map(envoyCounters));

    const searches: SearchResult[] = [];
    let rates: Record<'json' | 'sse', number>;
    if (settings.fixedRate !== undefined) {
      rates = { json: settings.fixedRate, sse: settings.fixedRate };
      log(`BENCH_RATE=${settings.fixedRate}: no saturation search`);
    } else {
      const s = settings.search;
      log(`saturation search on mcp-ext-proc: ${s.seconds} s steps from ${s.startRate} rps ×${s.factor} until success < ${fmt.pct(s.minSuccess)}, p99 > ${s.maxP99Ms} ms or vegeta cannot keep the rate`);
      for (const workload of anonymous) searches.push(await search(realSetup, workload));
      // Nothing sustained, not even the first step: measure at half of that step all the same.
      const half = (w: WorkloadId): number => Math.max(1, Math.round((searches.find((r) => r.workload === w)?.sustainedRate || s.startRate) / 2));
      rates = { json: half('json'), sse: half('sse') };
    }

    const cells: Cell[] = [];
    log(`measuring at ${rates.json} rps (JSON) and ${rates.sse} rps (SSE): ${settings.rounds} rounds × ${settings.seconds} s, setups interleaved`);
    await measureAll(setups, anonymous, rates, settings.seconds, settings.rounds, cells);
    const lowRates = { json: settings.lowRate, sse: settings.lowRate };
    const lowDistinct = settings.lowRate > 0 && settings.lowRate !== rates.json && settings.lowRate !== rates.sse;
    if (lowDistinct) {
      log(`measuring at a low fixed rate, ${settings.lowRate} rps: ${settings.lowRounds} rounds × ${settings.lowSeconds} s`);
      await measureAll(setups, anonymous, lowRates, settings.lowSeconds, settings.lowRounds, cells);
    }
    // Envoy's counters between the anonymous and the governed part, to count ext_proc messages per part.
    const countersMid = await Promise.all(setups.map(envoyCounters));
    // The governed workloads: the call at the JSON workload's measured rate, the list there too unless the
    // governed setup does not sustain twice that (see governedRate); then both at the low rate. No search.
    const govSetup = setups.find((x) => x.id === 'governed');
    const govList = governedWorkloads.find((w) => w.id === 'gov-list');
    const govProbe = govSetup !== undefined && govList !== undefined ? await governedRate(govSetup, govList, rates.json, settings.lowRate) : undefined;
    const govListRate = govProbe?.rate ?? rates.json;
    // After the probe (whose overloaded steps time out streams), for the governed part's messages per stream.
    const countersAfterProbe = await Promise.all(setups.map(envoyCounters));
    const govRates: Partial<Record<WorkloadId, number>> = { 'gov-list': govListRate, 'gov-call': rates.json };
    const govRateName = (w: WorkloadId): string =>
      w === 'gov-list' && govListRate !== rates.json
        ? `stepped down from the JSON workload's ${rates.json} rps: the governed setup does not sustain twice that for this list (probes in the JSON)`
        : 'the JSON workload\'s rate';
    // A workload whose main rate is within 20 % of the low rate is not measured at the low rate again.
    const near = (rate: number | undefined): boolean => rate !== undefined && rate <= settings.lowRate * 1.2 && rate >= settings.lowRate / 1.2;
    const govLowRates: Partial<Record<WorkloadId, number>> = {};
    if (settings.lowRate > 0) for (const w of governedWorkloads) if (!near(govRates[w.id])) govLowRates[w.id] = settings.lowRate;
    if (governedOn) {
      log(`governed workloads: list at ${govListRate} rps, call at ${rates.json} rps: ${settings.govRounds} rounds × ${settings.govSeconds} s, setups interleaved`);
      await measureAll(setups, governedWorkloads, govRates, settings.govSeconds, settings.govRounds, cells);
      if (Object.keys(govLowRates).length > 0) {
        log(`governed workloads (${Object.keys(govLowRates).join(', ')}) at ${settings.lowRate} rps: ${settings.lowRounds} rounds × ${settings.lowSeconds} s`);
        await measureAll(setups, governedWorkloads, govLowRates, settings.lowSeconds, settings.lowRounds, cells);
      }
    }

    // Token swap: the governed call with and without the credential step. Two fresh processors with the
    // same document, one with token exchange for the governed server, each behind its own Envoy: the same
    // history (the main governed processor has served the heavy list, which changes its heap and JIT
    // state), so only the credential step differs. Through Envoy, then the processors alone.
    const swapCells: Cell[] = [];
    const swapRates = [rates.json, ...(settings.lowRate > 0 && settings.lowRate !== rates.json ? [settings.lowRate] : [])];
    const govCall = governedWorkloads.find((w) => w.id === 'gov-call');
    const directSetup = setups.find((x) => x.id === 'direct');
    let processorPair: ProcessorPairResult | undefined;
    let credentialLookups: Record<string, number> | undefined;
    const swapLogs: Record<string, { errors: number; warnings: number; examples: string[] }> = {};
    if (swapOn && govCall !== undefined && directSetup !== undefined) {
      const pairGov = await startRealProcessor('pair-governed', path.join(scratch, 'governance-governed.yaml'));
      const pairSwap = await startRealProcessor('pair-governed-swap', path.join(scratch, 'governance-governed-swap.yaml'));
      const pair = [await startSetup('governed', govUpstreams, pairGov), await startSetup('governed-swap', govUpstreams, pairSwap)] as const;
      try {
        // The first request through the token-exchange processor exchanges the token; every later one finds it cached.
        for (const setup of pair) await preflight(setup, govCall);
        for (const rate of swapRates) {
          log(`token swap: ${govCall.id} at ${rate} rps on a fresh governed and governed + token exchange pair: ${settings.swapRounds} rounds × ${settings.swapSeconds} s`);
          await measurePair(pair, govCall, rate, settings.swapSeconds, settings.swapRounds, swapCells);
        }
        const target = targetFor(directSetup, govCall);
        const upstreamAnswer = await (await fetch(target.url, { method: 'POST', headers: target.headers, body: target.body })).text();
        const messages = jsonExchange(GOV_PATH, target.headers, target.body, upstreamAnswer);
        log(`token swap, processors alone: ${settings.swapRounds} rounds × ${settings.pairExchanges} exchanges to each, interleaved`);
        processorPair = await measureProcessorPair({ grpcPort: pairGov.port, pid: pairGov.proc.pid }, { grpcPort: pairSwap.port, pid: pairSwap.proc.pid }, messages, {
          rounds: settings.swapRounds,
          exchanges: settings.pairExchanges,
          concurrency: 10,
        });
        for (const [i, r] of processorPair.ratios.entries()) log(`  round ${i + 1}: ${fmt.us(processorPair.a[i])} → ${fmt.us(processorPair.b[i])} µs/exchange, ×${r.toFixed(3)}`);
        credentialLookups = await credentialMetrics(pairSwap.adminPort);
        swapLogs['pair: mcp-ext-proc governed'] = await processorLogProblems(pairGov.proc);
        swapLogs['pair: mcp-ext-proc governed + token exchange'] = await processorLogProblems(pairSwap.proc);
      } finally {
        await Promise.allSettled(pair.map((setup) => setup.envoy.stop()));
        await Promise.allSettled([pairGov.proc.stop(), pairSwap.proc.stop()]);
      }
    }

    const countersAfter = await Promise.all(setups.map(envoyCounters));
    const counterDelta = (from: Record<string, number>[], to: Record<string, number>[]): Record<string, Record<string, number>> =>
      Object.fromEntries(
        setups.map((s, i) => {
          const b = from[i] ?? {};
          const a = to[i] ?? {};
          return [s.id, Object.fromEntries(Object.entries(a).map(([k, v]) => [k, v - (b[k] ?? 0)]))];
        }),
      );
    const envoyStats = counterDelta(countersBefore, countersAfter);
    const envoyStatsAnonymous = counterDelta(countersBefore, countersMid);
    const envoyStatsGoverned = counterDelta(countersAfterProbe, countersAfter);
    const phases = (await Promise.all(setups.filter((s) => s.processor !== undefined).map((s) => phaseLatencies(s, cells)))).flat();
    const probeWindows = govProbe?.windows ?? [];
    const envoyErrors = Object.fromEntries(await Promise.all(setups.map(async (s) => [s.id, await envoy5xx(s, s.id === 'governed' ? probeWindows : [])] as const)));
    const procLogs: Record<string, { errors: number; warnings: number; examples: string[] }> = {
      noop: await processorLogProblems(noop.proc),
      'mcp-ext-proc': await processorLogProblems(real.proc),
    };
    const alive: Record<string, boolean> = { upstream: !up.proc.hasExited(), noop: !noop.proc.hasExited(), 'mcp-ext-proc': !real.proc.hasExited() };
    if (governed !== undefined) {
      procLogs['mcp-ext-proc governed'] = await processorLogProblems(governed.proc);
      alive['mcp-ext-proc governed'] = !governed.proc.hasExited();
    }
    Object.assign(procLogs, swapLogs);

    // ------------------------------------------------------------------ report
    const sections: string[] = [];
    const comparisons: Comparison[] = [];
    const summaries: Summary[] = cells.map(summarise);
    const order: SetupId[] = ['direct', 'noop', 'mcp-ext-proc', 'governed'];
    const rateSets: { name: (w: WorkloadId) => string; governed: boolean; rates: Partial<Record<WorkloadId, number>>; seconds: number; rounds: number; main: boolean }[] = [
      { name: () => (settings.fixedRate !== undefined ? 'BENCH_RATE' : 'half of the highest rate mcp-ext-proc sustained'), governed: false, rates, seconds: settings.seconds, rounds: settings.rounds, main: true },
    ];
    if (lowDistinct) rateSets.push({ name: () => 'low fixed rate', governed: false, rates: lowRates, seconds: settings.lowSeconds, rounds: settings.lowRounds, main: false });
    if (governedOn) {
      rateSets.push({ name: govRateName, governed: true, rates: govRates, seconds: settings.govSeconds, rounds: settings.govRounds, main: true });
      rateSets.push({ name: () => 'low fixed rate', governed: true, rates: govLowRates, seconds: settings.lowSeconds, rounds: settings.lowRounds, main: false });
    }
    for (const workload of workloads) {
      const search_ = searches.find((s) => s.workload === workload.id);
      for (const set of rateSets) {
        const rate = set.rates[workload.id];
        if (rate === undefined || set.governed !== workload.governed) continue;
        const rows = order
          .map((id) => summaries.find((s) => s.workload === workload.id && s.setup === id && s.rate === rate))
          .filter((s): s is Summary => s !== undefined);
        const comparison = compare(cells, workload, rate);
        if (comparison !== undefined) comparisons.push(comparison);
        const searchNote =
          search_ !== undefined && set.main
            ? ` (mcp-ext-proc sustained ${search_.sustainedRate} rps${search_.failedRate === undefined ? '' : `, saturated at ${search_.failedRate} rps`})`
            : '';
        const title = `\n${workload.id.toUpperCase()} workload (${workload.label}) at ${rate} rps, ${set.name(workload.id)}${searchNote}; ${set.rounds} rounds × ${set.seconds} s, medians`;
        sections.push(report(title, rows, comparison));
        sections.push(phaseReport(phases.filter((p) => p.workload === workload.id && p.rate === rate)));
      }
    }

    const swapSummaries = swapCells.map(summarise);
    const swapComparisons = swapRates
      .map((rate) => tokenSwapComparison(swapCells, rate))
      .filter((c): c is TokenSwapComparison => c !== undefined);
    if (swapComparisons.length > 0) sections.push(tokenSwapReport(swapSummaries, swapComparisons, credentialLookups, processorPair));

    const problems: string[] = [];
    for (const s of [...summaries, ...swapSummaries]) {
      if (s.success < 1) problems.push(`${s.workload}/${s.setup} @ ${s.rate} rps: ${s.requests - Math.round(s.success * s.requests)} failed of ${s.requests}: ${JSON.stringify(s.failures)}`);
    }
    for (const [id, counters] of Object.entries(envoyStats)) {
      for (const name of ['ext_proc.streams_failed', 'ext_proc.failure_mode_allowed', 'ext_proc.message_timeouts', 'ext_proc.spurious_msgs_received', 'ext_proc.rejected_header_mutations', 'downstream_rq_5xx']) {
        const v = counters[name];
        if (v !== undefined && v > 0) problems.push(`Envoy (${id}) ${name} = ${v} during the search${governedOn ? ', the governed probe' : ''} and measurements`);
      }
      const dropped = counters['processor_cluster.upstream_cx_destroy_remote_with_active_rq'] ?? 0;
      if (dropped > 0) {
        problems.push(
          `Envoy (${id}): the processor closed its HTTP/2 connection with streams in flight ${dropped} times ` +
            `(${counters['processor_cluster.upstream_cx_total'] ?? 0} connections opened after warm-up; Envoy reset ` +
            `${counters['processor_cluster.upstream_rq_tx_reset'] ?? 0} of ${counters['processor_cluster.upstream_rq_total'] ?? 0} ext_proc streams)`,
        );
      }
    }
    for (const [id, e] of Object.entries(envoyErrors)) {
      if (e.count > 0) {
        const probe = e.inProbes > 0 ? ` (${e.inProbes} of them during the governed rate probe's overloaded steps, ${e.count - e.inProbes} elsewhere)` : '';
        problems.push(`Envoy (${id}) access log: ${e.count} responses ≥ 500 over the whole run${probe}: ${JSON.stringify(e.byDetails)}`);
      }
    }
    for (const [id, p] of Object.entries(procLogs)) {
      if (p.errors > 0 || p.warnings > 0) problems.push(`${id} logged ${p.errors} errors and ${p.warnings} warnings, e.g. ${p.examples.join(' | ')}`);
    }
    for (const [id, ok] of Object.entries(alive)) if (!ok) problems.push(`${id} exited during the run`);

    const msgsPerRequest = (id: SetupId, stats: Record<string, Record<string, number>>): string => {
      const c = stats[id];
      const streams = c?.['ext_proc.streams_started'] ?? 0;
      const sent = c?.['ext_proc.stream_msgs_sent'] ?? 0;
      const received = c?.['ext_proc.stream_msgs_received'] ?? 0;
      return streams === 0 ? 'n/a' : `${(sent / streams).toFixed(2)} sent / ${(received / streams).toFixed(2)} received per stream`;
    };

    const machine = {
      cpus: cpus().length,
      cpuModel: cpus()[0]?.model ?? 'unknown',
      node: process.version,
      envoy: execFileSync(envoyBinary(), ['--version'], { encoding: 'utf8' }).trim().split('version: ')[1] ?? 'unknown',
      envoyConcurrency: settings.envoyConcurrency,
    };
    const header = [
      `mcp-ext-proc benchmark: ${machine.cpus} CPUs (${machine.cpuModel}), Node ${machine.node}, Envoy ${machine.envoy} --concurrency ${machine.envoyConcurrency}, vegeta open loop (HTTP/1.1 keep-alive)`,
      'CPU µs/req: on-CPU time of that process (all threads, /proc/<pid>/task/*/schedstat) during the attack ÷ requests sent.',
      `Idle CPU with no traffic (µs per second, counted in the per-request figures): ${Object.entries(idle).map(([k, v]) => `${k} ${v}`).join(', ')}`,
      `ext_proc messages (Envoy's counters): no-op ${msgsPerRequest('noop', envoyStatsAnonymous)}; mcp-ext-proc ${msgsPerRequest('mcp-ext-proc', envoyStatsAnonymous)}` +
        (governedOn ? `; governed workloads: no-op ${msgsPerRequest('noop', envoyStatsGoverned)}, mcp-ext-proc governed ${msgsPerRequest('governed', envoyStatsGoverned)}` : ''),
    ];
    if (governedOn) {
      header.push(
        `Governed: every request carries the same bearer token (${GOV_USER} via ${GOV_CLIENT}, from the test IdP), so the processor verifies it from its cache; ` +
          `policy of ${GOV_RULES.length} rules (bench/governed.ts), ${GOV_VISIBLE_TO_ALICE.length} of ${GOV_TOOLS.length} tools allowed.`,
      );
    }
    const text = [...header, ...sections, '', problems.length === 0 ? 'problems: none seen (no failed requests, no ext_proc errors in Envoy, no processor errors logged)' : `problems:\n  ${problems.join('\n  ')}`].join('\n');
    process.stdout.write(`${text}\n`);

    const json = {
      generatedAt: new Date().toISOString(),
      durationSeconds: Math.round((Date.now() - started) / 1000),
      machine,
      settings,
      targets: TARGETS,
      workloads: workloads.map((w) => ({ ...w, protocolVersion: settings.protocolVersion })),
      governed: governedOn
        ? { rules: GOV_RULES.length, tools: GOV_TOOLS.length, visible: GOV_VISIBLE_TO_ALICE.length, user: GOV_USER, client: GOV_CLIENT, resource: GOV_RESOURCE, call: GOV_CALL }
        : undefined,
      search: searches,
      governedProbes: govProbe?.probes,
      tokenSwap: swapOn ? { results: swapSummaries, comparisons: swapComparisons, processorsAlone: processorPair, credentialLookups, rounds: swapCells } : undefined,
      rates: { measured: rates, low: lowDistinct ? settings.lowRate : undefined, governed: governedOn ? govRates : undefined, governedLow: governedOn ? govLowRates : undefined },
      results: summaries,
      comparisons,
      rounds: cells.map((c) => ({ workload: c.workload, setup: c.setup, rate: c.rate, samples: c.samples })),
      idleCpuMicrosPerSecond: idle,
      processorPhaseLatencies: phases,
      envoyStats,
      envoyErrors,
      processorLogs: procLogs,
      problems,
    };
    await mkdir(path.dirname(resultsPath), { recursive: true });
    await writeFile(resultsPath, `${JSON.stringify(json, null, 2)}\n`);
    log(`done in ${json.durationSeconds} s; results in ${path.relative(repoRoot, resultsPath)}`);
  } finally {
    await stopAll();
    if (process.env['BENCH_KEEP_LOGS'] === '1') log(`kept the processes' logs and vegeta's results in ${scratch}`);
    else rmSync(scratch, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
