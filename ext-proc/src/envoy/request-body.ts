// Phase 2, request body: the whole JSON-RPC document. Parse it, check it against the protocol version,
// and remember each request so its response can be recognised.

import { brotliDecompressSync, gunzipSync, inflateSync } from 'node:zlib';
import { GatewayError, toGatewayError } from '../errors.ts';
import { parseJsonRpc, type RpcMessage } from '../mcp/jsonrpc.ts';
import { allowsBatches, DEFAULT_VERSION, mirrorsHeaders } from '../mcp/version.ts';
import { resourceMetadataUrl } from '../identity/resource-metadata.ts';
import { denialMessage, policyRequestFor } from '../policy/enforce.ts';
import type { Decision } from '../policy/types.ts';
import { keys } from '../state/store.ts';
import type { Exchange } from './exchange.ts';
import { metadata, mutation } from './headers.ts';
import type { Credential } from '../credentials/broker.ts';
import type { CommonResponse, HeaderMutation, HttpBody, ProcessingResponse } from './types.ts';

export async function onRequestBody(ex: Exchange, msg: HttpBody): Promise<ProcessingResponse> {
  const limit = ex.ctx.document().maxRequestBodyBytes;
  const raw = msg.body ?? Buffer.alloc(0);
  const body = decode(raw, ex.requestHeaders.get('content-encoding'), limit);
  const parsed = parseJsonRpc(body.toString('utf8'));

  if (parsed.batch) {
    const version = ex.declaredVersion ?? (await sessionVersion(ex)) ?? DEFAULT_VERSION;
    if (!allowsBatches(version)) {
      throw new GatewayError('ERR_JSONRPC_BATCH_FORBIDDEN', `JSON-RPC batches are not allowed in protocol version ${version}`);
    }
  }
  const first = parsed.messages[0];
  if (ex.declaredVersion !== undefined && mirrorsHeaders(ex.declaredVersion) && first !== undefined) {
    checkMirroredHeaders(ex, first);
  }
  noteMessage(ex, first);
  const decisions = decide(ex, parsed.messages);
  const bytes = parsed.messages.length === 1 ? raw.length : undefined;
  const calls = parsed.messages.map((m) => ex.begin(m, bytes, decisions.get(m)));
  const denial = refusalOf(ex, parsed.messages, decisions);
  if (denial !== undefined) {
    // Every message of the document gets its record: the denied one says why, a batch's others that
    // they went down with it.
    for (const call of calls) {
      const denied = call.rpcId === denial.rpcId;
      ex.ctx.auditor.finish(call, { outcome: denied ? 'denied' : 'rejected', errorCode: denial.code, rpcErrorCode: denial.spec.rpcCode, httpStatus: denial.spec.httpStatus });
    }
    throw denial.with({ audited: true });
  }
  let response: CommonResponse = {};
  try {
    const credential = await ex.awaitCredential();
    if (credential !== undefined) response = { header_mutation: credentialMutation(credential) };
  } catch (err) {
    // Without its credential nothing is forwarded, and never with the caller's token instead.
    const refusal = toGatewayError(err);
    for (const call of calls) {
      ex.ctx.auditor.finish(call, { outcome: 'rejected', errorCode: refusal.code, rpcErrorCode: refusal.spec.rpcCode, httpStatus: refusal.spec.httpStatus });
    }
    throw refusal.with({ audited: true });
  }
  for (const [i, m] of parsed.messages.entries()) {
    const call = calls[i];
    if (call !== undefined) await ex.sawClientMessage(m, call);
  }
  const decision = [...decisions.values()].at(-1);
  noteDecision(ex, decision);
  return { request_body: { response }, dynamic_metadata: metadata(ex) };
}

/** A cached credential is handed out as the same object while it lasts: so is its mutation. */
const mutations = new WeakMap<Credential, HeaderMutation>();

function credentialMutation(credential: Credential): HeaderMutation {
  let m = mutations.get(credential);
  if (m === undefined) {
    m = mutation(credential.headers);
    mutations.set(credential, m);
  }
  return m;
}

/** What access logs see: `%DYNAMIC_METADATA(mcp_ext_proc:method)%`, `…:tool`, `…:name`. */
function noteMessage(ex: Exchange, m: RpcMessage | undefined): void {
  ex.meta['method'] = m?.method;
  ex.meta['name'] = m?.name;
  ex.meta['tool'] = m?.method === 'tools/call' ? m.name : undefined;
}

function noteDecision(ex: Exchange, d: Decision | undefined): void {
  ex.meta['decision'] = d?.effect;
  ex.meta['rule'] = d?.ruleId;
}

/** Decides every governed request of the document before anything is forwarded. */
function decide(ex: Exchange, messages: readonly RpcMessage[]): Map<RpcMessage, Decision> {
  const decisions = new Map<RpcMessage, Decision>();
  const policy = ex.ctx.document().policy;
  const caller = ex.caller;
  if (policy === undefined || caller === undefined) return decisions;
  for (const m of messages) {
    if (m.kind !== 'request') continue;
    const request = policyRequestFor(m, ex.serverName, caller);
    if (request !== undefined) decisions.set(m, policy.decide(request));
  }
  return decisions;
}

/**
 * The answer to the first denied request, if any: an error naming the rule, or — where more scope
 * would fix it — 403 insufficient_scope. In a batch, one denied element refuses the whole batch.
 */
function refusalOf(ex: Exchange, messages: readonly RpcMessage[], decisions: Map<RpcMessage, Decision>): GatewayError | undefined {
  const caller = ex.caller;
  for (const m of messages) {
    const d = decisions.get(m);
    if (d?.effect !== 'deny' || caller === undefined) continue;
    noteDecision(ex, d);
    const request = policyRequestFor(m, ex.serverName, caller);
    const message = request === undefined ? d.reason : denialMessage(d, request);
    const scopes = d.requiredScopes;
    if (scopes !== undefined && scopes.length > 0 && ex.server?.resource !== undefined) {
      return new GatewayError('ERR_INSUFFICIENT_SCOPE', message, {
        rpcId: m.id,
        ruleId: d.ruleId,
        // The scopes to ask for are those already granted plus the missing ones: a client that
        // re-authorizes with only the missing scopes would lose the others.
        challenge: { resourceMetadata: resourceMetadataUrl(ex.server.resource), scope: [...new Set([...caller.user.scopes, ...scopes])].join(' '), error: 'insufficient_scope' },
      });
    }
    return new GatewayError('ERR_POLICY_DENIED', message, { rpcId: m.id, ruleId: d.ruleId });
  }
  return undefined;
}

function decode(raw: Buffer, encoding: string | undefined, limit: number): Buffer {
  if (raw.length > limit) {
    throw new GatewayError('ERR_REQUEST_TOO_LARGE', `request body of ${raw.length} bytes exceeds the limit of ${limit}`);
  }
  const enc = encoding?.trim().toLowerCase();
  if (enc === undefined || enc === '' || enc === 'identity') return raw;
  const inflate = enc === 'gzip' || enc === 'x-gzip' ? gunzipSync : enc === 'deflate' ? inflateSync : enc === 'br' ? brotliDecompressSync : undefined;
  if (inflate === undefined) throw new GatewayError('ERR_REQUEST_ENCODING', `Content-Encoding "${enc}" is not supported`);
  try {
    // maxOutputLength bounds what a small compressed body may expand to.
    return inflate(raw, { maxOutputLength: limit });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE') {
      throw new GatewayError('ERR_REQUEST_TOO_LARGE', `decoded request body exceeds the limit of ${limit} bytes`);
    }
    throw new GatewayError('ERR_REQUEST_ENCODING', `request body does not decode as ${enc}: ${(err as Error).message}`);
  }
}

async function sessionVersion(ex: Exchange): Promise<string | undefined> {
  if (ex.session === undefined) return undefined;
  return ex.ctx.state.get(keys.sessionVersion(ex.serverName, ex.session));
}

/** Mcp-Name values that are not plain ASCII travel as `=?base64?…?=`. */
function decodeHeaderValue(v: string): string {
  const m = /^=\?base64\?(.*)\?=$/.exec(v);
  return m?.[1] !== undefined ? Buffer.from(m[1], 'base64').toString('utf8') : v;
}

function checkMirroredHeaders(ex: Exchange, m: RpcMessage): void {
  const method = ex.requestHeaders.get('mcp-method');
  if (m.method !== undefined && method !== m.method) {
    throw new GatewayError('ERR_HEADER_MISMATCH', `Mcp-Method header "${method ?? ''}" does not match the body's method "${m.method}"`, { rpcId: m.id });
  }
  const name = ex.requestHeaders.get('mcp-name');
  if (m.name !== undefined && (name === undefined || decodeHeaderValue(name) !== m.name)) {
    throw new GatewayError('ERR_HEADER_MISMATCH', `Mcp-Name header "${name ?? ''}" does not match the body's "${m.name}"`, { rpcId: m.id });
  }
}
