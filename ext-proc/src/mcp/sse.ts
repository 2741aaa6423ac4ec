/**
 * Incremental Server-Sent Events parser for MCP response streams.
 *
 * Envoy delivers the body in arbitrary chunks; the parser cuts the stream into
 * segments whose raw bytes, concatenated, are exactly the input, and parses each
 * complete event per the WHATWG EventSource rules.
 */

export interface SseEvent {
  /** Last valid `id` field of the event (a value containing NUL is ignored). */
  id: string | undefined;
  /** Last `event` field of the event. */
  event: string | undefined;
  /** `data` values joined with "\n"; undefined if the event had no data field. */
  data: string | undefined;
  /** Last `retry` field whose value is all ASCII digits. */
  retry: number | undefined;
  /** Comment lines, without the leading ':' (any following space is kept). */
  comments: string[];
}

export interface SseSegment {
  /** The exact bytes of this piece of the stream (may share memory with the pushed chunk). */
  raw: Buffer;
  /** The event these bytes complete, or undefined for bytes that form no event. */
  event: SseEvent | undefined;
}

const LF = 0x0a;
const CR = 0x0d;

function emptyEvent(): SseEvent {
  return { id: undefined, event: undefined, data: undefined, retry: undefined, comments: [] };
}

export class SseParser {
  /** Unemitted bytes from earlier chunks, copied. */
  #held: Buffer[] = [];
  #heldLen = 0;
  /** The part of #held that belongs to the line still being read. */
  #lineParts: Buffer[] = [];
  #event: SseEvent = emptyEvent();
  #dataLines: string[] | undefined = undefined;
  #sawLine = false;
  #firstLine = true;
  /** The previous chunk ended in a CR terminator, so a leading LF is the rest of a CRLF. */
  #afterCr = false;

  get pendingBytes(): number {
    return this.#heldLen;
  }

  push(chunk: Buffer): SseSegment[] {
    const out: SseSegment[] = [];
    const len = chunk.length;
    if (len === 0) return out;

    let pos = 0;
    let segStart = 0;
    if (this.#afterCr) {
      this.#afterCr = false;
      if (chunk[0] === LF) {
        pos = 1;
        if (this.#heldLen === 0) {
          // The CR ended an event that was already emitted; pass its LF straight through.
          out.push({ raw: chunk.subarray(0, 1), event: undefined });
          segStart = 1;
        }
      }
    }

    // Next CR / LF positions at or after `pos` (-1: none left), cached so each byte is scanned once.
    let nextCr = -2;
    let nextLf = -2;
    while (pos < len) {
      if (nextCr !== -1 && nextCr < pos) nextCr = chunk.indexOf(CR, pos);
      if (nextLf !== -1 && nextLf < pos) nextLf = chunk.indexOf(LF, pos);
      let eol: number;
      if (nextCr === -1) eol = nextLf;
      else if (nextLf === -1) eol = nextCr;
      else eol = Math.min(nextCr, nextLf);
      if (eol === -1) break;

      let next = eol + 1;
      if (chunk[eol] === CR) {
        if (next === len) this.#afterCr = true;
        else if (chunk[next] === LF) next++;
      }

      const blank = this.#endLine(chunk.subarray(pos, eol));
      pos = next;
      if (blank) {
        const tail = chunk.subarray(segStart, pos);
        const raw = this.#heldLen === 0 ? tail : Buffer.concat([...this.#held, tail]);
        out.push({ raw, event: this.#takeEvent() });
        this.#held = [];
        this.#heldLen = 0;
        segStart = pos;
      }
    }

    if (segStart < len) {
      // Copy rather than keep a view: the caller's chunk may be a slice of a large pooled buffer.
      const kept = Buffer.from(chunk.subarray(segStart));
      this.#held.push(kept);
      this.#heldLen += kept.length;
      if (pos < len) this.#lineParts.push(kept.subarray(pos - segStart));
    }
    return out;
  }

  end(): SseSegment[] {
    const raw = Buffer.concat(this.#held);
    this.#held = [];
    this.#heldLen = 0;
    this.#lineParts = [];
    this.#takeEvent();
    this.#afterCr = false;
    return raw.length === 0 ? [] : [{ raw, event: undefined }];
  }

  /** Processes one complete line (without terminator); returns true if it was blank. */
  #endLine(rest: Buffer): boolean {
    let line = rest;
    if (this.#lineParts.length > 0) {
      line = Buffer.concat([...this.#lineParts, rest]);
      this.#lineParts = [];
    }
    if (this.#firstLine) {
      this.#firstLine = false;
      if (line[0] === 0xef && line[1] === 0xbb && line[2] === 0xbf) line = line.subarray(3);
    }
    if (line.length === 0) return true;

    this.#sawLine = true;
    const text = line.toString('utf8');
    const colon = text.indexOf(':');
    if (colon === 0) {
      this.#event.comments.push(text.slice(1));
      return false;
    }
    const name = colon === -1 ? text : text.slice(0, colon);
    let value = colon === -1 ? '' : text.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);

    switch (name) {
      case 'data':
        (this.#dataLines ??= []).push(value);
        break;
      case 'event':
        this.#event.event = value;
        break;
      case 'id':
        if (!value.includes('\0')) this.#event.id = value;
        break;
      case 'retry':
        // Also require a safe integer so the value survives re-serialisation.
        if (/^[0-9]+$/.test(value) && Number.isSafeInteger(Number(value))) this.#event.retry = Number(value);
        break;
    }
    return false;
  }

  /** Returns the event built from the lines read so far (undefined if none) and resets it. */
  #takeEvent(): SseEvent | undefined {
    const event = this.#sawLine ? this.#event : undefined;
    if (event) event.data = this.#dataLines?.join('\n');
    this.#event = emptyEvent();
    this.#dataLines = undefined;
    this.#sawLine = false;
    return event;
  }
}

function checkLineValue(kind: string, value: string): string {
  if (/[\r\n]/.test(value)) throw new Error(`SSE ${kind} must not contain a line break`);
  return value;
}

function field(name: string, value: string): string {
  return value === '' ? `${name}:\n` : `${name}: ${value}\n`;
}

/** Serialises an event in canonical form: comments, event, id, retry, then one `data:` line per data line. */
export function serializeSseEvent(e: SseEvent): Buffer {
  let text = '';
  for (const c of e.comments) text += `:${checkLineValue('comment', c)}\n`;
  if (e.event !== undefined) text += field('event', checkLineValue('event', e.event));
  if (e.id !== undefined) {
    if (e.id.includes('\0')) throw new Error('SSE id must not contain NUL');
    text += field('id', checkLineValue('id', e.id));
  }
  if (e.retry !== undefined) {
    if (!Number.isSafeInteger(e.retry) || e.retry < 0) throw new Error('SSE retry must be a non-negative integer');
    text += field('retry', String(e.retry));
  }
  if (e.data !== undefined) {
    for (const line of e.data.split(/\r\n|\r|\n/)) text += field('data', line);
  }
  return Buffer.from(text + '\n', 'utf8');
}
