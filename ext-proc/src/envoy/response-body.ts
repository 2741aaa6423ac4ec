// Phase 4, response body. JSON arrives whole (BUFFERED); an event stream arrives in chunks (STREAMED)
// that do not line up with events. Every byte goes back to Envoy, unchanged unless rewritten: list
// results are cut down to what the caller may use, with the predicate that authorizes calls.

import { brotliDecompressSync, gunzipSync, inflateSync } from 'node:zlib';
import { parseJsonRpc, serializeWithId, type ParsedBody } from '../mcp/jsonrpc.ts';
import { serializeSseEvent, type SseSegment } from '../mcp/sse.ts';
import { mirrorsHeaders } from '../mcp/version.ts';
import { filterListResult, isFilteredList } from '../policy/enforce.ts';
import type { Exchange } from './exchange.ts';
import { mutation } from './headers.ts';
import type { HttpBody, ProcessingResponse } from './types.ts';

const CONTINUE: ProcessingResponse = { response_body: { response: {} } };

export async function onResponseBody(ex: Exchange, msg: HttpBody): Promise<ProcessingResponse> {
  const chunk = msg.body ?? Buffer.alloc(0);
  if (msg.end_of_stream === true) ex.responseComplete = true;
  if (ex.responseKind === 'json') return readJson(ex, chunk, msg);
  const parser = ex.sse;
  if (ex.responseKind !== 'sse' || parser === undefined) return CONTINUE;

  const segments = parser.push(chunk);
  if (msg.end_of_stream === true) segments.push(...parser.end());
  let rewritten = false;
  const out: Buffer[] = [];
  for (const s of segments) {
    const replacement = await readEvent(ex, s);
    if (replacement !== undefined) rewritten = true;
    out.push(replacement ?? s.raw);
  }

  // When the chunk held exactly whole events, nothing was held back before and nothing changed,
  // Envoy's own copy is already the right output: answer without a mutation and spare the copy.
  const heldBefore = ex.heldBytes;
  ex.heldBytes = parser.pendingBytes;
  if (!rewritten && heldBefore === 0 && ex.heldBytes === 0) return CONTINUE;
  if (out.length === 0) return { response_body: { response: { body_mutation: { clear_body: true } } } };
  return { response_body: { response: { body_mutation: { body: Buffer.concat(out) } } } };
}

async function readJson(ex: Exchange, chunk: Buffer, msg: HttpBody): Promise<ProcessingResponse> {
  const decoded = decodeResponse(chunk, ex.responseEncoding);
  const parsed = parseServerDocument(ex, decoded);
  if (parsed === undefined) {
    if (msg.end_of_stream === true) ex.upstreamFailed(ex.responseStatus ?? 0);
    return CONTINUE;
  }
  const text = await review(ex, parsed, 'json', decoded?.length ?? chunk.length);
  // An HTTP error whose JSON-RPC error could not name the request (id null: the server could not read
  // it) still ends the calls waiting on this stream, as an upstream error rather than "no response".
  if (msg.end_of_stream === true && ex.pending.size > 0 && (ex.responseStatus ?? 0) >= 400) ex.upstreamFailed(ex.responseStatus ?? 0);
  if (text === undefined) return CONTINUE;
  const body = Buffer.from(text, 'utf8');
  const remove = ex.responseEncoding === undefined ? [] : ['content-encoding'];
  return {
    response_body: {
      response: {
        // BUFFERED keeps content-length, so a body of another size must say its new length.
        header_mutation: mutation({ 'content-length': String(body.length) }, remove),
        body_mutation: { body },
      },
    },
  };
}

/** Returns the event's new bytes when it was rewritten. */
async function readEvent(ex: Exchange, segment: SseSegment): Promise<Buffer | undefined> {
  const event = segment.event;
  if (event?.data === undefined || event.data === '') return undefined;
  if (event.event === 'endpoint') {
    // Legacy HTTP+SSE: the first event names the POST endpoint, whose query carries the session.
    const q = event.data.indexOf('?');
    const session = q < 0 ? null : new URLSearchParams(event.data.slice(q + 1)).get('sessionId');
    if (session !== null && session !== '') {
      ex.session = session;
      ex.legacy = true;
      await ex.bindSession(session);
    }
    return undefined;
  }
  const data = Buffer.from(event.data, 'utf8');
  const parsed = parseServerDocument(ex, data);
  if (parsed === undefined) return undefined;
  const text = await review(ex, parsed, 'sse', data.length);
  // The event keeps its id, type and comments, so resumption (Last-Event-ID) is unaffected.
  return text === undefined ? undefined : serializeSseEvent({ ...event, data: text });
}

/** Reports each message; returns the document's new text if a list result had to be cut down. */
async function review(ex: Exchange, parsed: ParsedBody, transport: 'json' | 'sse', bytes: number): Promise<string | undefined> {
  const policy = ex.ctx.document().policy;
  const caller = ex.caller;
  const privateCache = ex.declaredVersion !== undefined && mirrorsHeaders(ex.declaredVersion);
  const elements = parsed.batch ? (parsed.value as Record<string, unknown>[]) : [parsed.value as Record<string, unknown>];
  let changed = false;
  const texts: string[] = [];
  for (const [i, m] of parsed.messages.entries()) {
    const answers = await ex.sawServerMessage(m, transport, parsed.batch ? 0 : bytes);
    const element = elements[i] ?? {};
    let replaced: Record<string, unknown> | undefined;
    if (m.kind === 'result' && policy !== undefined && caller !== undefined && isFilteredList(answers) && answers !== undefined) {
      const result = filterListResult(answers, m.result, ex.serverName, caller, policy, { privateCache });
      if (result !== undefined) replaced = { ...element, result };
    }
    if (replaced !== undefined) changed = true;
    texts.push(serializeWithId(replaced ?? element, m.id));
  }
  if (!changed) return undefined;
  return parsed.batch ? `[${texts.join(',')}]` : texts[0];
}

/** A server's body that is not JSON-RPC is the server's business: note it and pass it on untouched. */
function parseServerDocument(ex: Exchange, body: Buffer | undefined): ParsedBody | undefined {
  if (body === undefined || body.length === 0) return undefined;
  try {
    return parseJsonRpc(body.toString('utf8'));
  } catch (err) {
    ex.ctx.log.debug({ server: ex.serverName, err: (err as Error).message }, 'upstream body is not JSON-RPC; passed through');
    return undefined;
  }
}

function decodeResponse(body: Buffer, encoding: string | undefined): Buffer | undefined {
  if (encoding === undefined) return body;
  const inflate = encoding === 'gzip' ? gunzipSync : encoding === 'deflate' ? inflateSync : encoding === 'br' ? brotliDecompressSync : undefined;
  try {
    return inflate?.(body);
  } catch {
    return undefined;
  }
}
