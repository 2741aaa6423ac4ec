// One catalog of every error the processor answers with. Each code maps once to the HTTP status the
// client sees, the JSON-RPC error code in the body, and whether the fault is the client's or ours.
// The README's error table is checked against this catalog by a test.

export interface ErrorSpec {
  readonly httpStatus: number;
  /** JSON-RPC error code put in the body. */
  readonly rpcCode: number;
  /** Client faults may use the JSON-RPC client codes; our own failures never do. */
  readonly fault: 'client' | 'server';
  readonly summary: string;
}

export const ERRORS = {
  ERR_SERVER_UNKNOWN: {
    httpStatus: 404,
    rpcCode: -32004,
    fault: 'client',
    summary: 'The route names no MCP server known to the governance document.',
  },
  ERR_REQUEST_CONTENT_TYPE: {
    httpStatus: 415,
    rpcCode: -32600,
    fault: 'client',
    summary: 'A POST to an MCP endpoint whose Content-Type is not application/json.',
  },
  ERR_REQUEST_TOO_LARGE: {
    httpStatus: 413,
    rpcCode: -32600,
    fault: 'client',
    summary: 'The request body is larger than limits.maxRequestBodyBytes.',
  },
  ERR_REQUEST_ENCODING: {
    httpStatus: 415,
    rpcCode: -32600,
    fault: 'client',
    summary: 'The request body has a Content-Encoding other than identity, gzip or deflate, or does not decode.',
  },
  ERR_JSONRPC_PARSE: {
    httpStatus: 400,
    rpcCode: -32700,
    fault: 'client',
    summary: 'The request body is not valid JSON.',
  },
  ERR_JSONRPC_INVALID: {
    httpStatus: 400,
    rpcCode: -32600,
    fault: 'client',
    summary: 'The body is JSON but not a JSON-RPC 2.0 message (or batch) MCP allows.',
  },
  ERR_JSONRPC_BATCH_FORBIDDEN: {
    httpStatus: 400,
    rpcCode: -32600,
    fault: 'client',
    summary: 'A JSON-RPC batch on a protocol version other than 2025-03-26, which alone allows batches.',
  },
  ERR_HEADER_MISMATCH: {
    httpStatus: 400,
    rpcCode: -32020,
    fault: 'client',
    summary: 'A 2026-07-28 request whose Mcp-Method or Mcp-Name header disagrees with its body.',
  },
  ERR_INTERNAL: {
    httpStatus: 500,
    rpcCode: -32603,
    fault: 'server',
    summary: 'The processor failed while handling the message; the request was not forwarded.',
  },
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERRORS;

/** A failure with a stable code. Thrown by any layer; turned into a client answer in one place. */
export class GatewayError extends Error {
  readonly code: ErrorCode;
  readonly spec: ErrorSpec;
  /** Raw JSON text of the JSON-RPC id the error answers, when it is known. */
  readonly rpcId: string | undefined;

  constructor(code: ErrorCode, message: string, options: { rpcId?: string | undefined; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'GatewayError';
    this.code = code;
    this.spec = ERRORS[code];
    this.rpcId = options.rpcId;
  }
}

/** Any thrown value as a GatewayError; unknown failures are ours (ERR_INTERNAL), never the client's. */
export function toGatewayError(err: unknown): GatewayError {
  if (err instanceof GatewayError) return err;
  return new GatewayError('ERR_INTERNAL', 'internal error in the MCP gateway', { cause: err });
}
