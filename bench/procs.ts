// Child processes for the benchmark (the MCP upstream, the processors), with their output going straight
// to files (no pipe through this process, whose CPU would otherwise depend on how much they log), and
// CPU accounting from /proc.

import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { closeSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export interface BenchProcess {
  readonly name: string;
  readonly pid: number;
  readonly stdoutPath: string;
  readonly stderrPath: string;
  hasExited(): boolean;
  /** The last `bytes` of stderr (and stdout), for error messages. */
  tail(bytes?: number): string;
  stop(graceMs?: number): Promise<void>;
}

const live = new Set<ChildProcess>();
let hooked = false;

function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.once('exit', () => {
    for (const child of live) child.kill('SIGKILL');
  });
}

function tailOf(file: string, bytes: number): string {
  try {
    const text = readFileSync(file, 'utf8');
    return text.length > bytes ? text.slice(text.length - bytes) : text;
  } catch {
    return '';
  }
}

/** Starts `file args` with stdout and stderr written to `<dir>/<name>.out` and `<dir>/<name>.err`. */
export function startProcess(name: string, file: string, args: readonly string[], dir: string, env: NodeJS.ProcessEnv = process.env): BenchProcess {
  hookExit();
  const stdoutPath = path.join(dir, `${name}.out`);
  const stderrPath = path.join(dir, `${name}.err`);
  const out = openSync(stdoutPath, 'w');
  const err = openSync(stderrPath, 'w');
  const child = spawn(file, args, { stdio: ['ignore', out, err], env });
  closeSync(out);
  closeSync(err);
  if (child.pid === undefined) throw new Error(`could not start ${name} (${file})`);
  const pid = child.pid;
  live.add(child);
  let done = false;
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => {
      done = true;
      live.delete(child);
      resolve();
    });
  });
  return {
    name,
    pid,
    stdoutPath,
    stderrPath,
    hasExited: () => done,
    tail: (bytes = 4000) => `${tailOf(stderrPath, bytes)}${tailOf(stdoutPath, bytes)}`,
    async stop(graceMs = 3000): Promise<void> {
      if (done) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Polls `file` until a line matches `test`, returning what `test` returned; fails if `proc` exits. */
export async function waitForLine<T>(proc: BenchProcess, file: string, test: (line: string) => T | undefined, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = await readFile(file, 'utf8').catch(() => '');
    for (const line of text.split('\n')) {
      const found = test(line);
      if (found !== undefined) return found;
    }
    if (proc.hasExited()) throw new Error(`${proc.name} exited before it was ready:\n${proc.tail()}`);
    if (Date.now() > deadline) throw new Error(`${proc.name} was not ready after ${timeoutMs} ms:\n${proc.tail()}`);
    await sleep(50);
  }
}

/** For children that print `{"port": N}` on stdout when listening. */
export function portLine(line: string): number | undefined {
  if (!line.startsWith('{')) return undefined;
  try {
    const parsed: unknown = JSON.parse(line);
    const port: unknown = typeof parsed === 'object' && parsed !== null ? Reflect.get(parsed, 'port') : undefined;
    return typeof port === 'number' && port > 0 ? port : undefined;
  } catch {
    return undefined;
  }
}

let clockTicks: number | undefined;

function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

/**
 * CPU time of a process (all its threads), in microseconds: the sum of each thread's on-CPU time from
 * /proc/<pid>/task/<tid>/schedstat (nanoseconds), or, where schedstat is missing, user + system time from
 * /proc/<pid>/stat (10 ms ticks). Threads that exited are not counted by the first; the processes measured
 * here (Node, Envoy) keep their threads for their whole life.
 */
export function cpuMicros(pid: number): number {
  try {
    let nanos = 0;
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const first = readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0];
      nanos += Number(first);
    }
    if (Number.isFinite(nanos) && nanos > 0) return nanos / 1000;
  } catch {
    // No schedstat (kernel without CONFIG_SCHEDSTATS) or a thread went away while we read: use ticks.
  }
  return tickMicros(pid);
}

/** User + system CPU time of a process (all its threads), in microseconds, from /proc/<pid>/stat. */
export function tickMicros(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) is in parentheses and may contain spaces: count fields after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) throw new Error(`unexpected /proc/${pid}/stat: ${stat}`);
  return ((utime + stime) * 1_000_000) / ticksPerSecond();
}

/** The pid of the process whose command line contains `needle` (e.g. a unique config path), if any. */
export function findPid(needle: string): number | undefined {
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      if (cmdline.split('\0').includes(needle)) return Number(entry);
    } catch {
      // The process went away while we looked.
    }
  }
  return undefined;
}
