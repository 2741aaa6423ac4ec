// The one place that turns any failure into what Envoy sends the client: an ImmediateResponse with the
// catalog's HTTP status and a JSON-RPC error body. Never a clean end of the gRPC stream, which Envoy
// would take as "continue without the processor" — that would let the request through ungoverned.

import { type GatewayError } from '../errors.ts';
import { errorBody } from '../mcp/jsonrpc.ts';
import { mutation, struct } from './headers.ts';
import type { ProcessingResponse } from './types.ts';

/** `fallbackId` answers with the request's id when the failure itself did not carry one. */
export function errorResponse(err: GatewayError, server: string | undefined, fallbackId?: string): ProcessingResponse {
  const { httpStatus, rpcCode } = err.spec;
  // Our own failures carry no internals (the cause goes to our log); the code lets a client act.
  const message = `${err.message} (${err.code})`;
  return {
    immediate_response: {
      status: { code: httpStatus },
      headers: mutation({ 'content-type': 'application/json' }),
      body: Buffer.from(errorBody(err.rpcId ?? fallbackId, rpcCode, message, { code: err.code })),
      details: `mcp_ext_proc_${err.code.toLowerCase()}`,
    },
    dynamic_metadata: { fields: { mcp_ext_proc: { structValue: struct({ server, error: err.code }) } } },
  };
}
