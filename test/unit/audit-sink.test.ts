import { spawn } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { formatEcs, formatNative, formatOcsf } from '../../ext-proc/src/audit/formats.ts';
import type { AuditEvent } from '../../ext-proc/src/audit/record.ts';
import { createAuditSink, type AuditSinkOptions } from '../../ext-proc/src/audit/sink.ts';

const SINK_MODULE = fileURLToPath(new URL('../../ext-proc/src/audit/sink.ts', import.meta.url));

function event(i: number, extra: Partial<AuditEvent> = {}): AuditEvent {
  return {
    time: new Date(Date.UTC(2026, 2, 1, 12, 0, 0, i % 1000)).toISOString(),
    id: `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`,
    requestId: `req-${i}`,
    traceId: '4bf92f3577b34da6a3ce929d0e0e4736',
    spanId: '00f067aa0ba902b7',
    server: 'github',
    sessionHash: '0123456789abcdef0123456789abcdef',
    protocolVersion: '2025-06-18',
    transport: 'streamable_http',
    method: 'tools/call',
    rpcId: String(i),
    name: 'create_issue',
    // Multi-byte text, quotes and a newline: byte counting and escaping must hold.
    arguments: { repo: 'acme/app', title: `issue ${i} — "ünïcode"\nsecond line` },
    user: { subject: 'alice', issuer: 'https://idp.example.com', email: 'alice@example.com', groups: ['eng'] },
    agent: { id: 'claude-desktop', clientId: 'claude-desktop' },
    decision: { effect: 'allow', ruleId: 'eng', reason: 'rule eng allows tools/call create_issue' },
    outcome: 'ok',
    errorCode: undefined,
    rpcErrorCode: undefined,
    httpStatus: 200,
    durationMs: 5,
    upstreamMs: 3,
    requestBytes: 100,
    responseBytes: 200,
    ...extra,
  };
}

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'audit-sink-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function lines(file: string): Promise<string[]> {
  const text = await readFile(file, 'utf8');
  expect(text === '' || text.endsWith('\n')).toBe(true);
  return text.split('\n').slice(0, -1);
}

function fileSink(file: string, extra: Partial<AuditSinkOptions> = {}) {
  const drops: number[] = [];
  const errors: Error[] = [];
  const sink = createAuditSink({
    format: 'native',
    sink: { type: 'file', path: file, maxBytes: 1 << 30, maxFiles: 3 },
    onDrop: (n) => drops.push(n),
    onError: (e) => errors.push(e),
    ...extra,
  });
  return { sink, drops, errors };
}

describe('file sink', () => {
  it.each([
    ['native', formatNative],
    ['ecs', formatEcs],
    ['ocsf', formatOcsf],
  ] as const)('writes one %s record per line that parses back to the formatted record', async (format, formatter) => {
    const file = path.join(dir, 'nested', 'audit.jsonl');
    let writes = 0;
    const { sink, drops } = fileSink(file, { format, onWrite: () => writes++ });
    const events = Array.from({ length: 50 }, (_, i) => event(i, i % 7 === 0 ? { outcome: 'denied', errorCode: 'ERR_POLICY_DENIED' } : {}));
    for (const e of events) sink.write(e);
    await sink.close();
    const got = (await lines(file)).map((l) => JSON.parse(l) as unknown);
    expect(got).toEqual(events.map((e) => formatter(e)));
    expect(sink.stats()).toEqual({ written: 50, dropped: 0, pendingBytes: 0, pendingRecords: 0 });
    expect(writes).toBe(50);
    expect(drops).toEqual([]);
  });

  it('appends to the file an earlier run left', async () => {
    const file = path.join(dir, 'audit.jsonl');
    await writeFile(file, '{"earlier":true}\n');
    const { sink } = fileSink(file);
    sink.write(event(1));
    await sink.close();
    const got = await lines(file);
    expect(got).toHaveLength(2);
    expect(got[0]).toBe('{"earlier":true}');
  });

  it('flushes everything on close: 10k records written, 10k lines on disk', async () => {
    const file = path.join(dir, 'audit.jsonl');
    const { sink, drops } = fileSink(file);
    for (let i = 0; i < 10_000; i++) sink.write(event(i));
    expect(sink.stats().pendingRecords).toBeGreaterThan(0); // nothing waited for the disk inside write()
    await sink.close();
    const got = await lines(file);
    expect(got).toHaveLength(10_000);
    expect((JSON.parse(got[9_999] ?? '{}') as Record<string, unknown>)['jsonrpc.request.id']).toBe('9999');
    expect(sink.stats()).toMatchObject({ written: 10_000, dropped: 0, pendingBytes: 0 });
    expect(drops).toEqual([]);
  });

  it('flush() resolves once every record so far is on disk', async () => {
    const file = path.join(dir, 'audit.jsonl');
    const { sink } = fileSink(file);
    for (let i = 0; i < 500; i++) sink.write(event(i));
    await sink.flush();
    expect(await lines(file)).toHaveLength(500);
    expect(sink.stats().pendingRecords).toBe(0);
    await sink.close();
  });

  it('rotates before a file would pass maxBytes and keeps maxFiles rotated files', async () => {
    const file = path.join(dir, 'audit.jsonl');
    const maxBytes = 8192;
    const { sink, drops } = fileSink(file, { sink: { type: 'file', path: file, maxBytes, maxFiles: 3 } });
    const lineBytes = Buffer.byteLength(`${JSON.stringify(formatNative(event(100)))}\n`);
    const total = 300; // ~ 300 × 900 B: many more rotations than files kept
    // Write in bursts across ticks, as traffic does, so rotations overlap with writes in flight.
    for (let i = 0; i < total; i++) {
      sink.write(event(i));
      if (i % 25 === 0) await new Promise((r) => setImmediate(r));
    }
    await sink.close();

    expect((await readdir(dir)).sort()).toEqual(['audit.jsonl', 'audit.jsonl.1', 'audit.jsonl.2', 'audit.jsonl.3']);
    const files = [`${file}.3`, `${file}.2`, `${file}.1`, file];
    const ids: number[] = [];
    for (const f of files) {
      expect((await stat(f)).size).toBeLessThanOrEqual(maxBytes);
      for (const l of await lines(f)) ids.push(Number((JSON.parse(l) as Record<string, unknown>)['jsonrpc.request.id']));
    }
    // Oldest to newest, the kept files hold the most recent records, in order, without a gap.
    expect(ids.at(-1)).toBe(total - 1);
    expect(ids).toEqual(Array.from({ length: ids.length }, (_, k) => total - ids.length + k));
    // Every rotated file was filled to within one record of maxBytes.
    for (const f of files.slice(0, 3)) expect((await stat(f)).size).toBeGreaterThan(maxBytes - lineBytes * 2);
    expect(drops).toEqual([]);
    expect(sink.stats()).toMatchObject({ written: total, dropped: 0 });
  });

  it('drops and reports records beyond the pending bound instead of blocking or growing', async () => {
    const file = path.join(dir, 'audit.jsonl');
    const maxPendingBytes = 32 * 1024;
    const { sink, drops } = fileSink(file, { maxPendingBytes });
    const started = performance.now();
    for (let i = 0; i < 5000; i++) sink.write(event(i));
    const elapsed = performance.now() - started;
    const after = sink.stats();
    expect(after.pendingBytes).toBeLessThanOrEqual(maxPendingBytes);
    expect(after.dropped).toBeGreaterThan(4000);
    expect(after.dropped + after.pendingRecords + after.written).toBe(5000);
    expect(elapsed).toBeLessThan(2000);
    // Reported right after the burst (not inside write()), as one count per burst.
    expect(drops).toEqual([]);
    await Promise.resolve();
    expect(drops).toEqual([after.dropped]);

    await sink.close();
    const final = sink.stats();
    expect(final.written + final.dropped).toBe(5000);
    expect(await lines(file)).toHaveLength(final.written);
  });

  it('counts records written after close as dropped', async () => {
    const file = path.join(dir, 'audit.jsonl');
    const { sink, drops } = fileSink(file);
    sink.write(event(1));
    await sink.close();
    sink.write(event(2));
    await Promise.resolve();
    expect(drops).toEqual([1]);
    expect(sink.stats()).toMatchObject({ written: 1, dropped: 1 });
    expect(await lines(file)).toHaveLength(1);
  });

  it('reports a file it cannot open and counts what it could not write, without throwing', async () => {
    const blocker = path.join(dir, 'not-a-dir');
    await writeFile(blocker, 'x');
    const { sink, drops, errors } = fileSink(path.join(blocker, 'audit.jsonl'));
    expect(() => {
      sink.write(event(1));
    }).not.toThrow();
    await sink.flush();
    for (let i = 2; i <= 3; i++) sink.write(event(i));
    await sink.close();
    expect(errors.length).toBeGreaterThan(0);
    expect(sink.stats()).toMatchObject({ written: 0, dropped: 3, pendingRecords: 0 });
    expect(drops.reduce((a, b) => a + b, 0)).toBe(3);
  });
});

// ---------------------------------------------------------------------------------------------------

interface ChildResult {
  stdout: string;
  stderr: string;
}

/** Runs a TypeScript snippet in a fresh Node process (type stripping) with the sink module at hand. */
async function runChild(body: string, opts: { readStdout: boolean; untilStderr?: RegExp; timeoutMs: number }): Promise<ChildResult> {
  const script = path.join(dir, 'child.ts');
  await writeFile(
    script,
    `import { createAuditSink } from ${JSON.stringify(SINK_MODULE)};\n` +
      `const event = ${event.toString()};\n` +
      body,
  );
  const child = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  if (opts.readStdout) child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
  else child.stdout.pause(); // nobody reads: the pipe fills and stays full
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`child did not finish in ${opts.timeoutMs} ms; stderr: ${stderr}`));
    }, opts.timeoutMs);
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString('utf8');
      if (opts.untilStderr?.test(stderr) === true) {
        clearTimeout(timer);
        child.kill('SIGKILL');
        resolve({ stdout, stderr });
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      if (opts.untilStderr !== undefined && !opts.untilStderr.test(stderr)) reject(new Error(`child exited (${code}) early: ${stderr}`));
      else if (code !== 0 && opts.untilStderr === undefined) reject(new Error(`child exited with ${code}: ${stderr}`));
      else resolve({ stdout, stderr });
    });
  });
}

describe('stdout sink', () => {
  it('writes exactly one formatted record per line to stdout, nothing else', async () => {
    const { stdout, stderr } = await runChild(
      `const sink = createAuditSink({ format: 'ecs', sink: { type: 'stdout' }, onDrop: (n) => process.stderr.write('dropped ' + n + '\\n') });
       for (let i = 0; i < 2000; i++) sink.write(event(i));
       await sink.close();
       process.stderr.write(JSON.stringify(sink.stats()) + '\\n');`,
      { readStdout: true, timeoutMs: 20_000 },
    );
    const got = stdout.split('\n');
    expect(got.pop()).toBe('');
    expect(got).toHaveLength(2000);
    expect(got.map((l) => JSON.parse(l) as unknown)).toEqual(Array.from({ length: 2000 }, (_, i) => formatEcs(event(i))));
    expect(stderr).toContain('"written":2000,"dropped":0');
  });

  it('drops and reports records when nobody reads stdout, and keeps answering', async () => {
    const { stderr } = await runChild(
      `let reported = 0;
       const sink = createAuditSink({ format: 'native', sink: { type: 'stdout' }, maxPendingBytes: 256 * 1024, onDrop: (n) => { reported += n; } });
       const started = performance.now();
       let i = 0;
       // 20k records (~18 MB) over many event-loop turns, far more than a pipe and the bound hold.
       await new Promise((done) => {
         const burst = () => {
           for (let k = 0; k < 500; k++) sink.write(event(i++));
           if (i < 20000) setImmediate(burst); else done(undefined);
         };
         burst();
       });
       await new Promise((r) => setImmediate(r));
       const s = sink.stats();
       process.stderr.write('RESULT ' + JSON.stringify({ ...s, reported, ms: performance.now() - started }) + '\\n');`,
      { readStdout: false, untilStderr: /RESULT .*\n/, timeoutMs: 30_000 },
    );
    const result = JSON.parse(/RESULT (.*)\n/.exec(stderr)?.[1] ?? '{}') as {
      written: number;
      dropped: number;
      pendingBytes: number;
      pendingRecords: number;
      reported: number;
      ms: number;
    };
    expect(result.dropped).toBeGreaterThan(15_000);
    expect(result.reported).toBe(result.dropped);
    expect(result.pendingBytes).toBeLessThanOrEqual(256 * 1024);
    expect(result.written + result.dropped + result.pendingRecords).toBe(20_000);
    expect(result.ms).toBeLessThan(10_000);
  });
});
