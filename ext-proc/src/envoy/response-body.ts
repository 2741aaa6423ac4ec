// Phase 4, response body. JSON arrives whole (BUFFERED); an event stream arrives in chunks (STREAMED)
// that do not line up with events. Every byte goes back to Envoy, unchanged unless rewritten.

import { gunzipSync, inflateSync, brotliDecompressSync } from 'node:zlib';
import type { RpcMessage } from '../mcp/jsonrpc.ts';
import { parseJsonRpc } from '../mcp/jsonrpc.ts';
import type { SseSegment } from '../mcp/sse.ts';
import type { Exchange } from './exchange.ts';
import type { HttpBody, ProcessingResponse } from './types.ts';

const CONTINUE: ProcessingResponse = { response_body: { response: {} } };

export async function onResponseBody(ex: Exchange, msg: HttpBody): Promise<ProcessingResponse> {
  const chunk = msg.body ?? Buffer.alloc(0);
  if (ex.responseKind === 'json') {
    await readJson(ex, chunk);
    return CONTINUE;
  }
  const parser = ex.sse;
  if (ex.responseKind !== 'sse' || parser === undefined) return CONTINUE;

  const segments = parser.push(chunk);
  if (msg.end_of_stream === true) segments.push(...parser.end());
  for (const s of segments) await readEvent(ex, s);

  // When the chunk held exactly whole events and nothing was held back before, Envoy's own copy is
  // already the right output: answer without a mutation and spare the copy.
  const heldBefore = ex.heldBytes;
  ex.heldBytes = parser.pendingBytes;
  if (heldBefore === 0 && ex.heldBytes === 0) return CONTINUE;
  if (segments.length === 0) return { response_body: { response: { body_mutation: { clear_body: true } } } };
  return { response_body: { response: { body_mutation: { body: Buffer.concat(segments.map((s) => s.raw)) } } } };
}

async function readJson(ex: Exchange, chunk: Buffer): Promise<void> {
  const messages = parseServerMessages(ex, decodeResponse(chunk, ex.responseEncoding));
  for (const m of messages) await ex.sawServerMessage(m, 'json');
}

async function readEvent(ex: Exchange, segment: SseSegment): Promise<void> {
  const event = segment.event;
  if (event?.data === undefined || event.data === '') return;
  if (event.event === 'endpoint') {
    // Legacy HTTP+SSE: the first event names the POST endpoint, whose query carries the session.
    const q = event.data.indexOf('?');
    const session = q < 0 ? null : new URLSearchParams(event.data.slice(q + 1)).get('sessionId');
    if (session !== null && session !== '') {
      ex.session = session;
      ex.legacy = true;
    }
    return;
  }
  for (const m of parseServerMessages(ex, Buffer.from(event.data, 'utf8'))) await ex.sawServerMessage(m, 'sse');
}

/** A server's body that is not JSON-RPC is the server's business: note it and pass it on untouched. */
function parseServerMessages(ex: Exchange, body: Buffer | undefined): readonly RpcMessage[] {
  if (body === undefined || body.length === 0) return [];
  try {
    return parseJsonRpc(body.toString('utf8')).messages;
  } catch (err) {
    ex.ctx.log.debug({ server: ex.serverName, err: (err as Error).message }, 'upstream body is not JSON-RPC; passed through');
    return [];
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
