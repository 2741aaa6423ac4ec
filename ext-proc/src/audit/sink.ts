// Where audit lines go: stdout (default) or a size-rotated JSON-lines file. One line per record, exactly
// JSON.stringify(format(record)) + "\n" — no logger envelope (level, pid, hostname).
//
// Never on the response path's clock: write() formats, serializes and hands the line to SonicBoom (pino's
// asynchronous destination, `sync: false`), which writes with fs.write off the event loop and coalesces
// lines while a write is in flight. Memory is bounded: when more than `maxPendingBytes` are waiting for
// the destination (a stalled pipe, a slow disk), new records are dropped and counted — reported through
// `onDrop` (the caller turns that into a metric and a warning), never silently.
//
// Counting, so that attempted = written + dropped + pendingRecords at any moment:
//   written   records the OS accepted (fs.write returned for their last byte);
//   dropped   records refused (buffer full, sink closed, unserializable) or lost (I/O error at close,
//             close timeout);
//   pending   records accepted by write() and not yet in one of the two above.
//
// Rotation (file sink) without blocking and without losing order: when a record would take the file
// past maxBytes, new records queue (counted as pending) while path.N-1 → path.N … path → path.1 are
// renamed asynchronously; the old destination keeps its file descriptor, so whatever it still buffers
// lands in path.1 where it belongs. Then a fresh file is opened at path and the queue drains into it.
//
// Why SonicBoom directly and not a pino logger: pino would wrap each record in its own envelope and
// re-serialize it; and pino.destination() turns EPIPE into a silent no-op, which would hide drops.

import { statSync } from 'node:fs';
import { rename } from 'node:fs/promises';
import sonicBoom from 'sonic-boom';
import { formatterFor } from './formats.ts';
import type { AuditEvent, AuditFormat, SinkSection } from './record.ts';

// sonic-boom is CommonJS; its default export is the constructor, which carries itself as `.SonicBoom`.
const { SonicBoom } = sonicBoom;
type Boom = InstanceType<typeof SonicBoom>;

export const DEFAULT_MAX_FILE_BYTES = 100 * 1024 * 1024;
export const DEFAULT_MAX_FILES = 10;
export const DEFAULT_MAX_PENDING_BYTES = 16 * 1024 * 1024;
export const DEFAULT_TIMEOUT_MS = 5000;
/** onError is called at most this often; a failing disk would otherwise report once per record. */
const ERROR_REPORT_INTERVAL_MS = 1000;
/** After a file fails to open, the sink tries again this much later (records meanwhile are dropped). */
const REOPEN_DELAY_MS = 5000;

export interface AuditSinkOptions {
  readonly format: AuditFormat;
  /** The governance document's audit.sink; file maxBytes / maxFiles default to 100 MiB / 10. */
  readonly sink: SinkSection;
  /** Records dropped since the last call (count ≥ 1). Called right after the write() that dropped, never inside it. */
  readonly onDrop: (count: number) => void;
  /** Once per record the OS has accepted. */
  readonly onWrite?: () => void;
  /** I/O errors (open, write, rename, close), at most one per second. */
  readonly onError?: (err: Error) => void;
  /** Bytes that may wait for the destination before records are dropped (default 16 MiB). */
  readonly maxPendingBytes?: number;
  /** How long flush() and close() wait for a stuck destination (default 5000 ms). */
  readonly timeoutMs?: number;
}

export interface AuditSinkStats {
  readonly written: number;
  readonly dropped: number;
  readonly pendingBytes: number;
  readonly pendingRecords: number;
}

export interface AuditSink {
  /** Formats and queues one record. Synchronous, never awaits I/O, never throws. */
  write(e: AuditEvent): void;
  /**
   * Resolves once everything written so far has reached the OS — or an I/O error was reported, or
   * timeoutMs passed (the records stay pending).
   */
  flush(): Promise<void>;
  /**
   * Stops accepting records (later ones count as dropped), writes out everything accepted, closes the
   * destination. Resolves within timeoutMs; whatever could not be written by then counts as dropped.
   * Idempotent. Never rejects.
   */
  close(): Promise<void>;
  stats(): AuditSinkStats;
}

// ---------------------------------------------------------------------------------------------------

interface LaneHooks {
  delivered(lines: number, bytes: number): void;
  lost(lines: number, bytes: number): void;
  error(err: Error): void;
}

/** One SonicBoom and the byte lengths of the lines it holds, to count records as their bytes land. */
class Lane {
  readonly #boom: Boom;
  readonly #hooks: LaneHooks;
  readonly #ready: Promise<void>;
  #lens: number[] = [];
  #head = 0;
  #partial = 0;
  #bytes = 0;
  #opened = false;
  #failed = false;
  #done = false;

  constructor(dest: string | number, hooks: LaneHooks) {
    this.#hooks = hooks;
    this.#boom = new SonicBoom({ dest, sync: false, append: true, mkdir: typeof dest === 'string', minLength: 0 });
    this.#ready = new Promise<void>((resolve) => {
      this.#boom.once('ready', () => {
        this.#opened = true;
        resolve();
      });
      this.#boom.once('error', () => {
        resolve();
      });
    });
    this.#boom.on('write', (n: number) => {
      this.#landed(n);
    });
    this.#boom.on('error', (err: Error) => {
      if (this.#done) return;
      if (!this.#opened) {
        // The file could not be opened: nothing this lane holds will ever be written.
        this.#failed = true;
        this.abandon();
      }
      hooks.error(err);
    });
  }

  /** The destination could not be opened; records must go elsewhere (or be dropped). */
  get failed(): boolean {
    return this.#failed;
  }

  get pendingRecords(): number {
    return this.#lens.length - this.#head;
  }

  /** Resolves once the file is open (or failed to open). */
  ready(): Promise<void> {
    return this.#ready;
  }

  push(line: string, bytes: number): void {
    this.#lens.push(bytes);
    this.#bytes += bytes;
    try {
      this.#boom.write(line);
    } catch (err) {
      // Only a destroyed SonicBoom throws; the lane is then gone.
      this.abandon();
      this.#hooks.error(err as Error);
    }
  }

  #landed(n: number): void {
    if (this.#done) return;
    let left = this.#partial + n;
    let lines = 0;
    let bytes = 0;
    for (;;) {
      const len = this.#lens[this.#head];
      if (len === undefined || len > left) break;
      left -= len;
      bytes += len;
      lines++;
      this.#head++;
    }
    this.#partial = left;
    if (this.#head > 4096 && this.#head * 2 > this.#lens.length) {
      this.#lens = this.#lens.slice(this.#head);
      this.#head = 0;
    }
    this.#bytes -= bytes;
    if (lines > 0) this.#hooks.delivered(lines, bytes);
  }

  /** Writes out what the lane holds and closes it; on an I/O error gives up and counts the rest as lost. */
  end(): Promise<void> {
    if (this.#done) return Promise.resolve();
    if (this.#failed) {
      this.abandon();
      return Promise.resolve();
    }
    return new Promise<void>((resolve) => {
      const settle = (): void => {
        this.abandon(); // counts nothing when everything landed
        resolve();
      };
      this.#boom.once('close', settle);
      this.#boom.once('error', settle);
      try {
        this.#boom.end();
      } catch {
        settle();
      }
    });
  }

  /** Stops now: what was not written counts as lost. */
  abandon(): void {
    if (this.#done) return;
    this.#done = true;
    const lines = this.pendingRecords;
    const bytes = this.#bytes;
    this.#lens = [];
    this.#head = 0;
    this.#bytes = 0;
    if (lines > 0) this.#hooks.lost(lines, bytes);
    try {
      this.#boom.destroy();
    } catch {
      // Already closing or closed.
    }
  }
}

interface Output {
  write(line: string, bytes: number): boolean;
  /** Nothing queued outside the lanes (no rotation in progress). */
  idle(): boolean;
  end(): Promise<void>;
  abandon(): void;
}

function stdoutOutput(hooks: LaneHooks): Output {
  const lane = new Lane(1, hooks);
  return {
    write(line, bytes) {
      lane.push(line, bytes);
      return true;
    },
    idle: () => true,
    end: () => lane.end(),
    abandon: () => {
      lane.abandon();
    },
  };
}

function isMissing(err: unknown): boolean {
  return (err as NodeJS.ErrnoException).code === 'ENOENT';
}

async function renameIfPresent(from: string, to: string): Promise<void> {
  try {
    await rename(from, to);
  } catch (err) {
    if (!isMissing(err)) throw err;
  }
}

function fileOutput(path: string, maxBytes: number, maxFiles: number, hooks: LaneHooks): Output {
  let size = 0;
  try {
    size = statSync(path).size; // appending to what an earlier run left
  } catch {
    // No file yet.
  }
  let current = new Lane(path, hooks);
  let failedAt: number | undefined;
  let rotating = false;
  let queue: { line: string; bytes: number }[] = [];
  let head = 0;
  let abandoned = false;
  const closing = new Set<Lane>();

  const needsRotation = (bytes: number): boolean => size > 0 && size + bytes > maxBytes;

  async function rotate(): Promise<void> {
    rotating = true;
    const old = current;
    // The rename must not overtake the old file's open, or the old lane would create a new file at path.
    await old.ready();
    try {
      for (let i = maxFiles - 1; i >= 1; i--) await renameIfPresent(`${path}.${i}`, `${path}.${i + 1}`);
      await renameIfPresent(path, `${path}.1`);
    } catch (err) {
      // Keep writing (to the same file) rather than lose records; try again after another maxBytes.
      hooks.error(err as Error);
    }
    if (abandoned) return; // close() gave up meanwhile; opening another file would leak it
    closing.add(old);
    void old.end().then(() => closing.delete(old));
    current = new Lane(path, hooks);
    size = 0;
    rotating = false;
    drain();
  }

  function drain(): void {
    while (head < queue.length) {
      const item = queue[head];
      if (item === undefined) break;
      if (needsRotation(item.bytes)) {
        void rotate();
        return;
      }
      head++;
      current.push(item.line, item.bytes);
      size += item.bytes;
    }
    queue = [];
    head = 0;
  }

  return {
    write(line, bytes) {
      if (current.failed) {
        // Retry opening now and then; until it works, records are dropped (and counted by the caller).
        const now = Date.now();
        failedAt ??= now;
        if (now - failedAt < REOPEN_DELAY_MS) return false;
        failedAt = undefined;
        current = new Lane(path, hooks);
        size = 0;
      }
      if (rotating || head < queue.length) {
        queue.push({ line, bytes });
        return true;
      }
      if (needsRotation(bytes)) {
        queue.push({ line, bytes });
        void rotate();
        return true;
      }
      current.push(line, bytes);
      size += bytes;
      return true;
    },
    idle: () => !rotating && head >= queue.length,
    async end() {
      while (rotating) await new Promise((resolve) => setImmediate(resolve));
      await Promise.all([current.end(), ...[...closing].map((l) => l.end())]);
    },
    abandon() {
      abandoned = true;
      rotating = false;
      const lost = queue.slice(head);
      queue = [];
      head = 0;
      if (lost.length > 0) hooks.lost(lost.length, lost.reduce((n, q) => n + q.bytes, 0));
      current.abandon();
      for (const l of closing) l.abandon();
    },
  };
}

// ---------------------------------------------------------------------------------------------------

function positiveInteger(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value < 1) throw new Error(`audit sink: ${name} must be a positive integer, got ${String(value)}`);
  return value;
}

export function createAuditSink(options: AuditSinkOptions): AuditSink {
  if (options.sink.type === 'none') {
    // Nothing is written, so nothing is pending, written or dropped.
    return { write: () => undefined, flush: () => Promise.resolve(), close: () => Promise.resolve(), stats: () => ({ written: 0, dropped: 0, pendingBytes: 0, pendingRecords: 0 }) };
  }
  const format = formatterFor(options.format);
  const maxPending = positiveInteger(options.maxPendingBytes, DEFAULT_MAX_PENDING_BYTES, 'maxPendingBytes');
  const timeoutMs = positiveInteger(options.timeoutMs, DEFAULT_TIMEOUT_MS, 'timeoutMs');

  let written = 0;
  let dropped = 0;
  let pendingBytes = 0;
  let pendingRecords = 0;
  let unreported = 0;
  let reportScheduled = false;
  let lastErrorAt = -Infinity;
  let closing: Promise<void> | undefined;
  const waiters = new Set<() => void>();

  function reportDrops(): void {
    reportScheduled = false;
    const n = unreported;
    unreported = 0;
    if (n === 0) return;
    try {
      options.onDrop(n);
    } catch {
      // The caller's reporting must not break the caller's write path.
    }
  }

  function drop(n: number): void {
    dropped += n;
    unreported += n;
    if (!reportScheduled) {
      reportScheduled = true;
      queueMicrotask(reportDrops);
    }
  }

  function wake(): void {
    for (const w of waiters) w();
    waiters.clear();
  }

  const hooks: LaneHooks = {
    delivered(lines, bytes) {
      written += lines;
      pendingRecords -= lines;
      pendingBytes -= bytes;
      if (options.onWrite !== undefined) {
        for (let i = 0; i < lines; i++) {
          try {
            options.onWrite();
          } catch {
            // As for onDrop.
          }
        }
      }
      if (pendingRecords === 0 && output.idle()) wake();
    },
    lost(lines, bytes) {
      pendingRecords -= lines;
      pendingBytes -= bytes;
      drop(lines);
      if (pendingRecords === 0 && output.idle()) wake();
    },
    error(err) {
      const now = Date.now();
      if (now - lastErrorAt >= ERROR_REPORT_INTERVAL_MS) {
        lastErrorAt = now;
        try {
          options.onError?.(err);
        } catch {
          // As for onDrop.
        }
      }
      wake(); // flush() resolves: the error is the caller's news
    },
  };

  const sink = options.sink;
  const output: Output =
    sink.type === 'stdout'
      ? stdoutOutput(hooks)
      : fileOutput(
          sink.path,
          positiveInteger(sink.maxBytes, DEFAULT_MAX_FILE_BYTES, 'sink.maxBytes'),
          positiveInteger(sink.maxFiles, DEFAULT_MAX_FILES, 'sink.maxFiles'),
          hooks,
        );

  function waitIdle(): Promise<void> {
    if (pendingRecords === 0 && output.idle()) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(done, timeoutMs);
      function done(): void {
        clearTimeout(timer);
        waiters.delete(done);
        resolve();
      }
      waiters.add(done);
    });
  }

  return {
    write(e) {
      if (closing !== undefined) {
        drop(1);
        return;
      }
      let line: string;
      try {
        line = `${JSON.stringify(format(e))}\n`;
      } catch (err) {
        // A record that cannot be serialized (a BigInt or a cycle that escaped redaction) is a bug upstream.
        hooks.error(err as Error);
        drop(1);
        return;
      }
      const bytes = Buffer.byteLength(line, 'utf8');
      if (pendingBytes + bytes > maxPending) {
        drop(1);
        return;
      }
      pendingBytes += bytes;
      pendingRecords++;
      if (!output.write(line, bytes)) {
        pendingBytes -= bytes;
        pendingRecords--;
        drop(1);
      }
    },

    flush: waitIdle,

    close() {
      closing ??= (async () => {
        let timer: NodeJS.Timeout | undefined;
        const timedOut = new Promise<'timeout'>((resolve) => {
          timer = setTimeout(() => {
            resolve('timeout');
          }, timeoutMs);
        });
        const result = await Promise.race([output.end(), timedOut]);
        clearTimeout(timer);
        if (result === 'timeout') output.abandon();
        reportDrops();
        wake();
      })();
      return closing;
    },

    stats: () => ({ written, dropped, pendingBytes, pendingRecords }),
  };
}
