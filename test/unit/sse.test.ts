import { describe, it, expect } from 'vitest';
import { SseParser, serializeSseEvent } from '../../ext-proc/src/mcp/sse.ts';
import type { SseEvent, SseSegment } from '../../ext-proc/src/mcp/sse.ts';

const b = (s: string): Buffer => Buffer.from(s, 'utf8');

/** Pushes every chunk, then ends the stream; returns all segments in order. */
function feed(chunks: Buffer[]): SseSegment[] {
  const parser = new SseParser();
  const segments: SseSegment[] = [];
  for (const c of chunks) segments.push(...parser.push(c));
  segments.push(...parser.end());
  return segments;
}

function eventsOf(segments: SseSegment[]): SseEvent[] {
  return segments.flatMap((s) => (s.event ? [s.event] : []));
}

function rawOf(segments: SseSegment[]): string {
  return Buffer.concat(segments.map((s) => s.raw)).toString('latin1');
}

function ev(fields: Partial<SseEvent>): SseEvent {
  return { id: undefined, event: undefined, data: undefined, retry: undefined, comments: [], ...fields };
}

/** Parses a whole string pushed as one chunk and returns its events. */
function parse(s: string): SseEvent[] {
  return eventsOf(feed([b(s)]));
}

function splitEvery(buf: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) out.push(buf.subarray(i, i + size));
  return out;
}

/** Small deterministic PRNG (mulberry32) so random chunkings are reproducible. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomChunks(buf: Buffer, next: () => number, maxSize: number): Buffer[] {
  const out: Buffer[] = [];
  let i = 0;
  while (i < buf.length) {
    // Size 0 is allowed on purpose: empty chunks must not disturb the state.
    const size = Math.floor(next() * (maxSize + 1));
    out.push(buf.subarray(i, i + size));
    i += size;
  }
  return out;
}

describe('line endings', () => {
  it('parses LF-terminated events', () => {
    expect(parse('data: a\n\ndata: b\n\n')).toEqual([ev({ data: 'a' }), ev({ data: 'b' })]);
  });

  it('parses CR-only line endings', () => {
    expect(parse('event: x\rdata: a\rdata: b\r\r')).toEqual([ev({ event: 'x', data: 'a\nb' })]);
  });

  it('parses CRLF line endings', () => {
    expect(parse('id: 7\r\ndata: a\r\ndata: b\r\n\r\ndata: c\r\n\r\n')).toEqual([
      ev({ id: '7', data: 'a\nb' }),
      ev({ data: 'c' }),
    ]);
  });

  it('parses mixed line endings within one stream', () => {
    expect(parse('data: 1\rdata: 2\ndata: 3\r\n\ndata: 4\n\r\ndata: 5\r\r')).toEqual([
      ev({ data: '1\n2\n3' }),
      ev({ data: '4' }),
      ev({ data: '5' }),
    ]);
  });

  it('treats a CRLF split between chunks as one line break, not two', () => {
    const segments = feed([b('data: a\r'), b('\ndata: b\r'), b('\n\r'), b('\n')]);
    expect(eventsOf(segments)).toEqual([ev({ data: 'a\nb' })]);
    expect(rawOf(segments)).toBe('data: a\r\ndata: b\r\n\r\n');
  });

  it('emits an event ending in CR at a chunk boundary without waiting for the next chunk', () => {
    const parser = new SseParser();
    const first = parser.push(b('data: a\r\r'));
    expect(first.map((s) => [s.raw.toString(), s.event])).toEqual([['data: a\r\r', ev({ data: 'a' })]]);
    expect(parser.pendingBytes).toBe(0);
    const second = parser.push(b('\ndata: b\n\n'));
    expect(second.map((s) => [s.raw.toString(), s.event])).toEqual([
      ['\n', undefined],
      ['data: b\n\n', ev({ data: 'b' })],
    ]);
  });

  it('keeps a CR-ended state across an empty chunk', () => {
    const segments = feed([b('data: a\r'), b(''), b('\n'), b('\n')]);
    expect(eventsOf(segments)).toEqual([ev({ data: 'a' })]);
    expect(rawOf(segments)).toBe('data: a\r\n\n');
  });

  it('emits stray blank lines as segments without an event', () => {
    const segments = feed([b('\n\r\ndata: a\n\n\n')]);
    expect(segments.map((s) => [s.raw.toString(), s.event])).toEqual([
      ['\n', undefined],
      ['\r\n', undefined],
      ['data: a\n\n', ev({ data: 'a' })],
      ['\n', undefined],
    ]);
  });

  it('returns several events from one chunk in stream order with their exact bytes', () => {
    const parser = new SseParser();
    const segments = parser.push(b('data: 1\n\n: c\n\nevent: e\ndata: 2\r\n\r\ndata: 3'));
    expect(segments.map((s) => [s.raw.toString(), s.event])).toEqual([
      ['data: 1\n\n', ev({ data: '1' })],
      [': c\n\n', ev({ comments: [' c'] })],
      ['event: e\ndata: 2\r\n\r\n', ev({ event: 'e', data: '2' })],
    ]);
    expect(parser.pendingBytes).toBe(7);
  });

  it('holds an incomplete event until its blank line arrives', () => {
    const parser = new SseParser();
    expect(parser.push(b('data: a\n'))).toEqual([]);
    expect(parser.pendingBytes).toBe(8);
    const segments = parser.push(b('\n'));
    expect(segments.map((s) => [s.raw.toString(), s.event])).toEqual([['data: a\n\n', ev({ data: 'a' })]]);
    expect(parser.pendingBytes).toBe(0);
  });
});

describe('byte order mark', () => {
  it('skips a leading BOM for parsing but keeps it in the raw bytes', () => {
    const input = b('\uFEFFdata: x\n\n');
    const segments = feed([input]);
    expect(eventsOf(segments)).toEqual([ev({ data: 'x' })]);
    expect(Buffer.concat(segments.map((s) => s.raw)).equals(input)).toBe(true);
    expect(segments[0]?.raw.subarray(0, 3).toString('hex')).toBe('efbbbf');
  });

  it('skips a leading BOM split across 1-byte chunks', () => {
    const input = b('\uFEFFid: 1\ndata: x\n\n');
    const segments = feed(splitEvery(input, 1));
    expect(eventsOf(segments)).toEqual([ev({ id: '1', data: 'x' })]);
    expect(Buffer.concat(segments.map((s) => s.raw)).equals(input)).toBe(true);
  });

  it('does not skip a BOM that is not at the start of the stream', () => {
    // Mid-stream, the BOM becomes part of the field name, so the field is unknown and ignored.
    expect(parse('data: a\n\n\uFEFFdata: b\n\n')).toEqual([ev({ data: 'a' }), ev({})]);
  });
});

describe('fields', () => {
  it('reads a comments-only keep-alive as an event with comments and no data', () => {
    const segments = feed([b(': keepalive\n\n')]);
    expect(segments.map((s) => [s.raw.toString(), s.event])).toEqual([
      [': keepalive\n\n', ev({ comments: [' keepalive'] })],
    ]);
  });

  it('reads id, event and retry', () => {
    expect(parse('id: 42\nevent: message\nretry: 3000\ndata: x\n\n')).toEqual([
      ev({ id: '42', event: 'message', retry: 3000, data: 'x' }),
    ]);
  });

  it('ignores retry values that are not all ASCII digits', () => {
    expect(parse('retry: 12a\nretry: -1\nretry:\nretry: 1.5\nretry:  5\nretry: ٣\ndata: x\n\n')).toEqual([
      ev({ data: 'x' }),
    ]);
    expect(parse('retry: 0\nretry: 12a\n\n')).toEqual([ev({ retry: 0 })]);
  });

  it('keeps the last id and ignores an id containing NUL', () => {
    expect(parse('id: 1\nid: 2\nid: a\0b\n\n')).toEqual([ev({ id: '2' })]);
    expect(parse('id\n\n')).toEqual([ev({ id: '' })]);
  });

  it('keeps the last event name', () => {
    expect(parse('event: a\nevent: b\n\n')).toEqual([ev({ event: 'b' })]);
  });

  it('joins multi-line data with LF, keeping empty lines and extra spaces', () => {
    expect(parse('data: a\ndata:\ndata:  b\ndata:c\n\n')).toEqual([ev({ data: 'a\n\n b\nc' })]);
  });

  it('treats a field name without a colon as an empty value', () => {
    expect(parse('data\n\n')).toEqual([ev({ data: '' })]);
    expect(parse('data\ndata\n\n')).toEqual([ev({ data: '\n' })]);
  });

  it('splits at the first colon only', () => {
    expect(parse('data: a: b:c\n\n')).toEqual([ev({ data: 'a: b:c' })]);
  });

  it('ignores unknown fields and case-mismatched names', () => {
    expect(parse('foo: bar\nData: no\ndata: x\n\n')).toEqual([ev({ data: 'x' })]);
  });

  it('leaves data undefined when an event has no data field', () => {
    expect(parse('id: 7\n\n')).toEqual([ev({ id: '7' })]);
  });

  it('reads MCP priming events as an id with empty data', () => {
    expect(parse('id: 1\ndata:\n\n')).toEqual([ev({ id: '1', data: '' })]);
    expect(parse('id: 1\ndata: \n\n')).toEqual([ev({ id: '1', data: '' })]);
  });

  it('decodes invalid UTF-8 with replacement characters and keeps the raw bytes', () => {
    const input = Buffer.concat([b('data: a'), Buffer.from([0xff, 0xc3]), b('z\n\n')]);
    const segments = feed([input]);
    expect(eventsOf(segments)).toEqual([ev({ data: 'a\uFFFD\uFFFDz' })]);
    expect(Buffer.concat(segments.map((s) => s.raw)).equals(input)).toBe(true);
  });
});

describe('chunk boundaries', () => {
  const progress =
    '{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t-1","progress":1,"total":2,"message":"halfway"}}';
  const response =
    '{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"naïve ☃ 日本"}],"isError":false}}';
  const stream = b(
    'id: s1_0\ndata:\n\n' +
      `event: message\nid: s1_1\ndata: ${progress}\n\n` +
      ': keepalive\r\n\r\n' +
      `event: message\r\nid: s1_2\r\ndata: ${response}\r\n\r\n`,
  );
  const expected = [
    ev({ id: 's1_0', data: '' }),
    ev({ event: 'message', id: 's1_1', data: progress }),
    ev({ comments: [' keepalive'] }),
    ev({ event: 'message', id: 's1_2', data: response }),
  ];

  it('parses a realistic MCP stream pushed whole', () => {
    const segments = feed([stream]);
    expect(eventsOf(segments)).toEqual(expected);
    expect(JSON.parse(eventsOf(segments)[3]?.data ?? '')).toMatchObject({
      result: { content: [{ text: 'naïve ☃ 日本' }] },
    });
  });

  it('gives the same events and bytes when split into two chunks at every byte offset', () => {
    for (let i = 0; i <= stream.length; i++) {
      const segments = feed([stream.subarray(0, i), stream.subarray(i)]);
      expect(Buffer.concat(segments.map((s) => s.raw)).equals(stream), `split at ${i}`).toBe(true);
      expect(eventsOf(segments), `split at ${i}`).toEqual(expected);
    }
  });

  it('gives the same events and bytes when pushed one byte at a time', () => {
    const segments = feed(splitEvery(stream, 1));
    expect(Buffer.concat(segments.map((s) => s.raw)).equals(stream)).toBe(true);
    expect(eventsOf(segments)).toEqual(expected);
  });

  it('keeps an event split inside a multi-byte character byte-exact', () => {
    const snowman = stream.indexOf(b('☃'));
    const kanji = stream.indexOf(b('日'));
    expect(snowman).toBeGreaterThan(0);
    const chunks = [
      stream.subarray(0, snowman + 1),
      stream.subarray(snowman + 1, snowman + 2),
      stream.subarray(snowman + 2, kanji + 2),
      stream.subarray(kanji + 2),
    ];
    const parser = new SseParser();
    const segments = chunks.flatMap((c) => parser.push(c));
    expect(parser.end()).toEqual([]);
    expect(Buffer.concat(segments.map((s) => s.raw)).equals(stream)).toBe(true);
    expect(eventsOf(segments)[3]?.data).toBe(response);
  });

  it('returns each complete event as soon as its chunk arrives', () => {
    const parser = new SseParser();
    const firstEnd = stream.indexOf(b('\n\n')) + 2;
    expect(eventsOf(parser.push(stream.subarray(0, firstEnd - 1)))).toEqual([]);
    expect(eventsOf(parser.push(stream.subarray(firstEnd - 1, firstEnd)))).toEqual([expected[0]]);
  });

  it('gives the same events and bytes for seeded random chunkings', () => {
    const next = rng(0x5eed);
    for (let round = 0; round < 300; round++) {
      const chunks = randomChunks(stream, next, 1 + (round % 40));
      const segments = feed(chunks);
      expect(Buffer.concat(segments.map((s) => s.raw)).equals(stream), `round ${round}`).toBe(true);
      expect(eventsOf(segments), `round ${round}`).toEqual(expected);
    }
  });
});

describe('generated streams', () => {
  const pieces = ['a', 'Z', ' ', ':', '{"k":1}', 'é', '☃', '日本', '😀', '\t'];
  const endings = ['\n', '\r', '\r\n'];

  /** Builds a random stream from a model of its events, and the events the model says it holds. */
  function generate(next: () => number): { input: Buffer; events: SseEvent[] } {
    const pick = <T>(xs: T[]): T => xs[Math.floor(next() * xs.length)] as T;
    const text = (): string => Array.from({ length: Math.floor(next() * 6) }, () => pick(pieces)).join('');
    let out = next() < 0.3 ? '\uFEFF' : '';
    let prevEnding = '';
    const line = (s: string): void => {
      let ending = pick(endings);
      // A lone LF right after a CR would merge with it into one CRLF, which is not what the model means.
      if (s === '' && prevEnding === '\r' && ending === '\n') ending = '\r\n';
      out += s + ending;
      prevEnding = ending;
    };
    const events: SseEvent[] = [];
    const count = 1 + Math.floor(next() * 6);
    for (let n = 0; n < count; n++) {
      if (next() < 0.2) line('');
      const e = ev({});
      const data: string[] = [];
      const fields = 1 + Math.floor(next() * 5);
      for (let f = 0; f < fields; f++) {
        const kind = Math.floor(next() * 6);
        const value = text();
        if (kind === 0) {
          line(`:${value}`);
          e.comments.push(value);
        } else if (kind === 1) {
          line(`id: ${value}`);
          e.id = value;
        } else if (kind === 2) {
          line(`event: ${value}`);
          e.event = value;
        } else if (kind === 3) {
          const ms = Math.floor(next() * 100_000);
          line(`retry: ${ms}`);
          e.retry = ms;
        } else if (kind === 4) {
          line(`x-unknown: ${value}`);
        } else {
          line(`data: ${value}`);
          data.push(value);
        }
      }
      if (data.length > 0) e.data = data.join('\n');
      line('');
      events.push(e);
    }
    return { input: b(out), events };
  }

  it('parses seeded random streams to their model events under random chunkings', () => {
    const next = rng(20_251_117);
    for (let round = 0; round < 300; round++) {
      const { input, events } = generate(next);
      const chunkings = [[input], splitEvery(input, 1), randomChunks(input, next, 1 + (round % 16))];
      for (const chunks of chunkings) {
        const segments = feed(chunks);
        expect(Buffer.concat(segments.map((s) => s.raw)).equals(input), `round ${round}`).toBe(true);
        expect(eventsOf(segments), `round ${round}`).toEqual(events);
      }
    }
  });
});

describe('end of stream', () => {
  it('returns the bytes of an unfinished event exactly, with no event', () => {
    const parser = new SseParser();
    expect(eventsOf(parser.push(b('data: a\n\ndata: b\ndata: ☃')))).toEqual([ev({ data: 'a' })]);
    expect(parser.pendingBytes).toBe(b('data: b\ndata: ☃').length);
    const tail = parser.end();
    expect(tail.map((s) => [s.raw.toString(), s.event])).toEqual([['data: b\ndata: ☃', undefined]]);
    expect(parser.pendingBytes).toBe(0);
  });

  it('returns a partial multi-byte character at the end exactly', () => {
    const parser = new SseParser();
    parser.push(b('data: x\n\n'));
    parser.push(Buffer.from([0x64, 0x3a, 0xe2, 0x98]));
    const tail = parser.end();
    expect(tail).toHaveLength(1);
    expect(tail[0]?.raw.toString('hex')).toBe('643ae298');
    expect(tail[0]?.event).toBeUndefined();
  });

  it('returns a line ended by CR at the end as unfinished bytes', () => {
    const parser = new SseParser();
    parser.push(b('data: a\r'));
    expect(parser.end().map((s) => [s.raw.toString(), s.event])).toEqual([['data: a\r', undefined]]);
  });

  it('returns nothing when the stream ended on an event boundary', () => {
    const parser = new SseParser();
    parser.push(b('data: a\n\n'));
    expect(parser.end()).toEqual([]);
    expect(new SseParser().end()).toEqual([]);
  });
});

describe('large events', () => {
  it('parses a 100 KB event pushed in 1 KB chunks', () => {
    const payload = 'x'.repeat(50_000) + 'é'.repeat(25_000);
    const input = b(`id: big\ndata: ${payload}\n\n`);
    const parser = new SseParser();
    const segments: SseSegment[] = [];
    const chunks = splitEvery(input, 1024);
    for (const [i, c] of chunks.entries()) {
      segments.push(...parser.push(c));
      if (i < chunks.length - 1) expect(parser.pendingBytes).toBe(1024 * (i + 1));
    }
    expect(segments).toHaveLength(1);
    expect(segments[0]?.raw.equals(input)).toBe(true);
    expect(segments[0]?.event).toEqual(ev({ id: 'big', data: payload }));
  });
});

describe('serializeSseEvent', () => {
  it('writes the canonical form', () => {
    const out = serializeSseEvent(
      ev({ comments: [' note'], event: 'message', id: '9', retry: 500, data: 'line 1\n\nline ☃' }),
    );
    expect(out.toString('utf8')).toBe(
      ': note\nevent: message\nid: 9\nretry: 500\ndata: line 1\ndata:\ndata: line ☃\n\n',
    );
  });

  it('writes a priming event as an id and an empty data line', () => {
    expect(serializeSseEvent(ev({ id: '1', data: '' })).toString()).toBe('id: 1\ndata:\n\n');
  });

  it('writes CR and CRLF inside data as separate data lines', () => {
    expect(serializeSseEvent(ev({ data: 'a\r\nb\rc' })).toString()).toBe('data: a\ndata: b\ndata: c\n\n');
  });

  it('round-trips events through the parser', () => {
    const events = [
      ev({ data: 'hello' }),
      ev({ id: '1', data: '' }),
      ev({ id: '', event: '', data: '\n' }),
      ev({ comments: [' keepalive'] }),
      ev({ comments: ['', 'x: y'], event: 'message', id: 'a b', retry: 0, data: ' leading space\n\nnaïve ☃ 日本 😀' }),
      ev({ retry: Number.MAX_SAFE_INTEGER }),
    ];
    for (const e of events) {
      expect(eventsOf(feed([serializeSseEvent(e)]))).toEqual([e]);
      expect(eventsOf(feed(splitEvery(serializeSseEvent(e), 1)))).toEqual([e]);
    }
  });

  it('rejects values that cannot be written on one line', () => {
    expect(() => serializeSseEvent(ev({ id: 'a\nb' }))).toThrow(/line break/);
    expect(() => serializeSseEvent(ev({ event: 'a\rb' }))).toThrow(/line break/);
    expect(() => serializeSseEvent(ev({ comments: ['a\nb'] }))).toThrow(/line break/);
    expect(() => serializeSseEvent(ev({ id: 'a\0b' }))).toThrow(/NUL/);
    expect(() => serializeSseEvent(ev({ retry: 1.5 }))).toThrow(/retry/);
  });
});
