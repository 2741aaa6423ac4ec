// The one place that turns any failure into what Envoy sends the client: an ImmediateResponse with the
// catalog's HTTP status and a JSON-RPC error body. Never a clean end of the gRPC stream, which Envoy
// would take as "continue without the processor" — that would let the request through ungoverned.

import type { BearerChallenge, GatewayError } from '../errors.ts';
import { errorBody } from '../mcp/jsonrpc.ts';
import { metadata, mutation } from './headers.ts';
import type { ProcessingResponse } from './types.ts';

/** `fallbackId` answers with the request's id when the failure itself did not carry one. */
export function errorResponse(err: GatewayError, meta: Record<string, string | undefined>, fallbackId?: string): ProcessingResponse {
  const { httpStatus, rpcCode } = err.spec;
  // Our own failures carry no internals (the cause goes to our log); the code lets a client act.
  const message = `${err.message} (${err.code})`;
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (err.challenge !== undefined) headers['www-authenticate'] = bearerChallenge(err.challenge);
  if (err.retryAfterSeconds !== undefined) headers['retry-after'] = String(err.retryAfterSeconds);
  return {
    immediate_response: {
      status: { code: httpStatus },
      headers: mutation(headers),
      body: Buffer.from(errorBody(err.rpcId ?? fallbackId, rpcCode, message, { code: err.code })),
      details: `mcp_ext_proc_${err.code.toLowerCase()}`,
    },
    dynamic_metadata: metadata({ meta: { ...meta, error: err.code } }),
  };
}

/** `Bearer resource_metadata="…", scope="…", error="…"` — quoted-string values per RFC 6750. */
export function bearerChallenge(c: BearerChallenge): string {
  const q = (v: string): string => `"${v.replace(/["\\]/g, '\\$&')}"`;
  const parts = [`resource_metadata=${q(c.resourceMetadata)}`];
  if (c.scope !== undefined && c.scope !== '') parts.push(`scope=${q(c.scope)}`);
  if (c.error !== undefined) parts.push(`error=${q(c.error)}`);
  return `Bearer ${parts.join(', ')}`;
}
