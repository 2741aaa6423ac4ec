// Phase 3, response headers: decide per response whether and how its body comes to the processor.

import type { ServerSpec } from '../config/document.ts';
import type { Credential } from '../credentials/broker.ts';
import { GatewayError } from '../errors.ts';
import { SseParser } from '../mcp/sse.ts';
import type { Exchange } from './exchange.ts';
import { headerMap, mediaType } from './headers.ts';
import type { BodySendMode, HttpHeaders, ProcessingResponse } from './types.ts';

export async function onResponseHeaders(ex: Exchange, msg: HttpHeaders): Promise<ProcessingResponse> {
  const headers = headerMap(msg.headers);
  const type = mediaType(headers.get('content-type'));
  const status = Number(headers.get(':status') ?? '0');
  ex.responseStatus = status;
  ex.upstreamAtMs = Date.now();
  const encoding = headers.get('content-encoding')?.trim().toLowerCase();
  ex.responseEncoding = encoding === 'identity' || encoding === '' ? undefined : encoding;
  // A new session starts on the response to initialize; it belongs to whoever initialized it.
  const created = ex.session === undefined ? headers.get('mcp-session-id') : undefined;
  if (created !== undefined) {
    ex.session = created;
    await ex.bindSession(created);
  }

  if (status === 401 && ex.credential !== undefined && ex.server !== undefined) await credentialRejected(ex, ex.server, ex.credential);

  let mode: BodySendMode = 'NONE';
  if (msg.end_of_stream !== true) {
    if (type === 'application/json') {
      ex.responseKind = 'json';
      mode = 'BUFFERED';
    } else if (type === 'text/event-stream' && ex.responseEncoding === undefined) {
      // A compressed event stream cannot be read event by event; it passes uninspected (documented).
      ex.responseKind = 'sse';
      ex.sse = new SseParser();
      mode = 'STREAMED';
    }
  }

  // Nothing readable will come (an error page, an empty body): the calls waiting on this stream end here.
  // A 202 answers a POSTed notification or a legacy-transport request, whose response comes elsewhere.
  if (mode === 'NONE' && status >= 300) ex.upstreamFailed(status);

  // An upstream's challenge would send the client to the upstream's authorization server (with the
  // wrong audience); the gateway is the resource server the client deals with.
  const remove = ex.caller !== undefined && headers.has('www-authenticate') ? ['www-authenticate'] : [];
  if (mode === 'STREAMED' && headers.has('content-length')) remove.push('content-length');
  return {
    response_headers: { response: remove.length > 0 ? { header_mutation: { remove_headers: remove } } : {} },
    // Envoy takes both body modes of an override literally, so the request mode is restated.
    mode_override: { request_body_mode: 'BUFFERED', response_body_mode: mode },
  };
}

/**
 * The server refused the credential the gateway sent. Its challenge is about the gateway's credential,
 * not the caller's token, so the client must not see it (it would start an OAuth flow for nothing):
 * the cached credential goes, and the client is told to retry, which fetches a fresh one.
 */
async function credentialRejected(ex: Exchange, server: ServerSpec, credential: Credential): Promise<never> {
  const rpcId = ex.pending.size === 1 ? [...ex.pending.keys()][0] : undefined;
  await ex.ctx.credentials.rejected(server, credential);
  ex.upstreamFailed(401, 'ERR_UPSTREAM_CREDENTIAL_REJECTED');
  const renewable = credential.key !== undefined;
  throw new GatewayError(
    'ERR_UPSTREAM_CREDENTIAL_REJECTED',
    renewable
      ? `MCP server "${server.name}" rejected the gateway's ${credential.strategy} credential; it has been dropped, retry to get a fresh one`
      : `MCP server "${server.name}" rejected the gateway's ${credential.strategy} credential; its configured value needs fixing`,
    { rpcId, audited: true, retryAfterSeconds: renewable ? 1 : undefined },
  );
}
