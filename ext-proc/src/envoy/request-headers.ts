// Phase 1, request headers: which MCP server is this, and can its body be governed at all?

import { GatewayError } from '../errors.ts';
import type { Exchange } from './exchange.ts';
import { attribute, headerMap, mediaType, struct } from './headers.ts';
import type { HttpHeaders, PbStruct, ProcessingResponse } from './types.ts';

/** The route metadata attribute a route uses to name its MCP server (see envoy/local.yaml). */
export const ROUTE_SERVER_ATTRIBUTE = "xds.route_metadata.filter_metadata['mcp_ext_proc']['server']";
/** The gRPC initial metadata header a route can set instead (ExtProcPerRoute.overrides.grpc_initial_metadata). */
export const ROUTE_SERVER_HEADER = 'x-mcp-ext-proc-server';

export function onRequestHeaders(ex: Exchange, msg: HttpHeaders, attrs: Record<string, PbStruct> | undefined): ProcessingResponse {
  const headers = headerMap(msg.headers);
  ex.requestHeaders = headers;
  ex.path = headers.get(':path') ?? '';
  ex.httpMethod = headers.get(':method') ?? '';
  const doc = ex.ctx.document();

  const named = attribute(attrs, ROUTE_SERVER_ATTRIBUTE) ?? ex.routeServerHeader;
  const server = named !== undefined ? doc.servers.get(named) : doc.serverForPath(ex.path);
  if (server === undefined) {
    const why = named !== undefined ? `the route names server "${named}", which` : `no route names a server and path ${ex.path}`;
    throw new GatewayError('ERR_SERVER_UNKNOWN', `${why} is not in the governance document`);
  }
  ex.server = server;

  ex.declaredVersion = headers.get('mcp-protocol-version');
  ex.session = headers.get('mcp-session-id');
  if (ex.session === undefined) {
    // The 2024-11-05 HTTP+SSE transport names its session in the POST URL's query.
    const q = ex.path.indexOf('?');
    const legacySession = q < 0 ? null : new URLSearchParams(ex.path.slice(q + 1)).get('sessionId');
    if (legacySession !== null && legacySession !== '') {
      ex.session = legacySession;
      ex.legacy = true;
    }
  }

  if (ex.httpMethod === 'POST' && msg.end_of_stream !== true) {
    const type = mediaType(headers.get('content-type'));
    if (type !== 'application/json') {
      throw new GatewayError('ERR_REQUEST_CONTENT_TYPE', `MCP messages are POSTed as application/json, not ${type ?? 'a body without Content-Type'}`);
    }
    const declared = Number(headers.get('content-length') ?? '0');
    if (declared > doc.maxRequestBodyBytes) {
      throw new GatewayError('ERR_REQUEST_TOO_LARGE', `request body of ${declared} bytes exceeds the limit of ${doc.maxRequestBodyBytes}`);
    }
  }

  return {
    request_headers: {
      response: {
        // Responses are inspected, so they must arrive uncompressed; clients see the same content either way.
        header_mutation: headers.has('accept-encoding') ? { remove_headers: ['accept-encoding'] } : {},
      },
    },
    dynamic_metadata: { fields: { mcp_ext_proc: { structValue: struct({ server: server.name }) } } },
  };
}
