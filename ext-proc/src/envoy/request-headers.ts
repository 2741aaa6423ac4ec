// Phase 1, request headers: which MCP server is this, and can its body be governed at all?

import type { ServerSpec } from '../config/document.ts';
import { GatewayError } from '../errors.ts';
import { authenticate } from '../identity/authenticate.ts';
import { principalKey } from '../identity/principal.ts';
import { PRM_PATH, resourceMetadata } from '../identity/resource-metadata.ts';
import { keys } from '../state/store.ts';
import type { Exchange } from './exchange.ts';
import { attribute, headerMap, mediaType, metadata, mutation } from './headers.ts';
import type { HeaderMutation, HttpHeaders, PbStruct, ProcessingResponse } from './types.ts';

/** The route metadata attribute a route uses to name its MCP server (see envoy/local.yaml). */
export const ROUTE_SERVER_ATTRIBUTE = "xds.route_metadata.filter_metadata['mcp_ext_proc']['server']";
/** The gRPC initial metadata header a route can set instead (ExtProcPerRoute.overrides.grpc_initial_metadata). */
export const ROUTE_SERVER_HEADER = 'x-mcp-ext-proc-server';

/** The peer's SPIFFE ID, when Envoy terminated mTLS and was asked for it (request_attributes). */
export const PEER_URI_SAN_ATTRIBUTE = 'connection.uri_san_peer_certificate';

export async function onRequestHeaders(ex: Exchange, msg: HttpHeaders, attrs: Record<string, PbStruct> | undefined): Promise<ProcessingResponse> {
  const headers = headerMap(msg.headers);
  ex.requestHeaders = headers;
  ex.path = headers.get(':path') ?? '';
  ex.httpMethod = headers.get(':method') ?? '';
  const doc = ex.ctx.document();

  if (ex.path.startsWith(PRM_PATH) && (ex.httpMethod === 'GET' || ex.httpMethod === 'HEAD')) return protectedResourceMetadata(ex);

  const named = attribute(attrs, ROUTE_SERVER_ATTRIBUTE) ?? ex.routeServerHeader;
  const server = named !== undefined ? doc.servers.get(named) : doc.serverForPath(ex.path);
  if (server === undefined) {
    const why = named !== undefined ? `the route names server "${named}", which` : `no route names a server and path ${ex.path}`;
    throw new GatewayError('ERR_SERVER_UNKNOWN', `${why} is not in the governance document`);
  }
  ex.server = server;
  ex.meta['server'] = server.name;

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

  const remove: string[] = [];
  // Responses are inspected, so they must arrive uncompressed; clients see the same content either way.
  if (headers.has('accept-encoding')) remove.push('accept-encoding');
  // CORS preflights carry no credentials and must not be challenged.
  if (server.authenticate && ex.httpMethod !== 'OPTIONS') await authenticateCaller(ex, server, attrs);
  // The caller's token is for the gateway; it never goes to the MCP server, whatever the server's
  // credential. Nor does anything a client put in the headers the credential goes in.
  for (const name of credentialHeaders(server)) if (headers.has(name)) remove.push(name);

  let header_mutation: HeaderMutation = remove.length > 0 ? { remove_headers: remove } : {};
  if (server.credential.kind !== 'none' && ex.httpMethod !== 'OPTIONS') {
    ex.startCredentialLookup(server);
    // A request with a body gets its credential with the body's answer; one without (GET, DELETE) now.
    if (ex.httpMethod !== 'POST' || msg.end_of_stream === true) {
      const credential = await ex.awaitCredential();
      // Set replaces what the client sent; removing the same name as well would leave it to Envoy's order.
      if (credential !== undefined) header_mutation = mutation(credential.headers, remove.filter((name) => !(name in credential.headers)));
    }
  }
  return {
    request_headers: { response: { header_mutation } },
    dynamic_metadata: metadata(ex),
  };
}

const credentialHeaderNames = new WeakMap<ServerSpec, readonly string[]>();

/** Headers only the gateway may set on the way to this server: Authorization, and wherever its credential goes. */
function credentialHeaders(server: ServerSpec): readonly string[] {
  let names = credentialHeaderNames.get(server);
  if (names === undefined) {
    const plan = server.credential;
    const list = ['authorization'];
    if (plan.kind !== 'none' && plan.header !== 'authorization') list.push(plan.header);
    if (plan.kind === 'clientCredentials' && plan.userHeader !== undefined) list.push(plan.userHeader.name);
    if (plan.kind === 'tokenExchange' && plan.actorTokenHeader !== undefined) list.push(plan.actorTokenHeader);
    names = list;
    credentialHeaderNames.set(server, names);
  }
  return names;
}

async function authenticateCaller(ex: Exchange, server: ServerSpec, attrs: Record<string, PbStruct> | undefined): Promise<void> {
  const verifier = ex.ctx.verifier();
  if (verifier === undefined || server.resource === undefined) throw new Error(`server ${server.name} requires authentication but no verifier is configured`);
  // Envoy reports the peer certificate's first URI SAN; only a SPIFFE ID names a workload.
  const san = attribute(attrs, PEER_URI_SAN_ATTRIBUTE);
  const caller = await authenticate(
    { server: { ...server, resource: server.resource }, authorization: ex.requestHeaders.get('authorization'), spiffeId: san?.startsWith('spiffe://') === true ? san : undefined },
    verifier,
    ex.ctx.revocations,
    (r) => ex.ctx.metrics.revocationCheck(r),
  );
  ex.caller = caller;
  ex.meta['user'] = caller.user.subject;
  ex.meta['agent'] = caller.agent.id;
  if (ex.session !== undefined) await checkSessionOwner(ex, ex.session, principalKey(caller.user));
}

/** A session id is not a credential: it stays with the user who created it. */
async function checkSessionOwner(ex: Exchange, session: string, owner: string): Promise<void> {
  const key = keys.sessionOwner(ex.serverName, session);
  // A binding never changes once made, so a replica that has seen it need not ask Redis again.
  const known = ex.ctx.sessionOwners.get(key) ?? (await ex.ctx.sharedStateCall(() => ex.ctx.state.get(key)));
  if (known !== undefined) ex.ctx.sessionOwners.set(key, known);
  if (known === undefined) {
    // Unknown to us (created before the gateway governed it, or its binding expired): the first user to
    // present it is bound to it from now on, so it cannot be shared afterwards.
    await ex.ctx.sharedStateCall(() => ex.ctx.state.set(key, owner, ex.ctx.sessionTtlSeconds));
    ex.ctx.sessionOwners.set(key, owner);
  } else if (known !== owner) {
    throw new GatewayError('ERR_SESSION_FOREIGN', 'this MCP session was created by another user; start a new session (initialize)');
  }
}

function protectedResourceMetadata(ex: Exchange): ProcessingResponse {
  const server = ex.ctx.document().serverForResourcePath(ex.path.slice(PRM_PATH.length).split('?')[0] ?? '');
  if (server?.resource === undefined) {
    throw new GatewayError('ERR_SERVER_UNKNOWN', `no MCP server has the protected resource metadata at ${ex.path}`);
  }
  ex.server = server;
  return {
    immediate_response: {
      status: { code: 200 },
      headers: mutation({ 'content-type': 'application/json', 'cache-control': 'max-age=300' }),
      body: Buffer.from(JSON.stringify(resourceMetadata({ ...server, resource: server.resource }))),
      details: 'mcp_ext_proc_protected_resource_metadata',
    },
  };
}
