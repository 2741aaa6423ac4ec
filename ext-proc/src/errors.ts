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
  ERR_IDENTITY_MISSING: {
    httpStatus: 401,
    rpcCode: -32001,
    fault: 'client',
    summary: 'No bearer token on a request to a server that requires one.',
  },
  ERR_IDENTITY_INVALID: {
    httpStatus: 401,
    rpcCode: -32001,
    fault: 'client',
    summary: 'The bearer token is not a JWT, or its signature, algorithm or key does not verify.',
  },
  ERR_IDENTITY_EXPIRED: {
    httpStatus: 401,
    rpcCode: -32001,
    fault: 'client',
    summary: 'The token is expired or not yet valid (beyond the allowed clock skew).',
  },
  ERR_IDENTITY_AUDIENCE: {
    httpStatus: 401,
    rpcCode: -32001,
    fault: 'client',
    summary: 'The token was issued for another resource than this MCP server.',
  },
  ERR_IDENTITY_ISSUER_UNKNOWN: {
    httpStatus: 401,
    rpcCode: -32001,
    fault: 'client',
    summary: 'The token comes from an issuer that is not configured.',
  },
  ERR_IDENTITY_REVOKED: {
    httpStatus: 401,
    rpcCode: -32001,
    fault: 'client',
    summary: 'The token, its subject or its agent has been revoked.',
  },
  ERR_IDP_UNAVAILABLE: {
    httpStatus: 503,
    rpcCode: -32603,
    fault: 'server',
    summary: "The identity provider's metadata or keys could not be fetched; the request is refused (fail closed).",
  },
  ERR_STATE_UNAVAILABLE: {
    httpStatus: 503,
    rpcCode: -32603,
    fault: 'server',
    summary: 'Shared state (Redis) could not be reached for a check that must not be skipped (revocation, session).',
  },
  ERR_SESSION_FOREIGN: {
    httpStatus: 403,
    rpcCode: -32003,
    fault: 'client',
    summary: 'The MCP session belongs to another user; a session id is not a credential.',
  },
  ERR_POLICY_DENIED: {
    httpStatus: 200,
    rpcCode: -32003,
    fault: 'client',
    summary: 'The policy does not allow this call (the message names the rule). HTTP 200: the JSON-RPC call failed, not the exchange.',
  },
  ERR_INSUFFICIENT_SCOPE: {
    httpStatus: 403,
    rpcCode: -32003,
    fault: 'client',
    summary: 'The call needs scopes the token lacks; WWW-Authenticate names them so the client can step up.',
  },
  ERR_CREDENTIAL_UNAVAILABLE: {
    httpStatus: 503,
    rpcCode: -32603,
    fault: 'server',
    summary:
      "No credential for the MCP server could be obtained: the identity provider's token endpoint is unreachable, too slow, answered an error, or refused the gateway's own client authentication; or the configured secret is missing. The caller's token is never sent instead.",
  },
  ERR_CREDENTIAL_REFUSED: {
    httpStatus: 403,
    rpcCode: -32003,
    fault: 'client',
    summary: 'The identity provider refused to issue a credential for this user and server (invalid_grant, unauthorized_client, …); the message gives its reason.',
  },
  ERR_UPSTREAM_CREDENTIAL_REJECTED: {
    httpStatus: 503,
    rpcCode: -32603,
    fault: 'server',
    summary: 'The MCP server answered 401 to the credential the gateway sent. A cached credential is dropped, so retrying (Retry-After) gets a fresh one.',
  },
  ERR_INTERNAL: {
    httpStatus: 500,
    rpcCode: -32603,
    fault: 'server',
    summary: 'The processor failed while handling the message; the request was not forwarded.',
  },
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERRORS;

/** What a 401 or 403 tells the client in WWW-Authenticate (RFC 6750, RFC 9728). */
export interface BearerChallenge {
  /** URL of the Protected Resource Metadata of the server the client called. */
  readonly resourceMetadata: string;
  readonly scope?: string | undefined;
  readonly error?: 'invalid_token' | 'insufficient_scope' | undefined;
}

export interface GatewayErrorOptions {
  readonly rpcId?: string | undefined;
  readonly cause?: unknown;
  readonly challenge?: BearerChallenge | undefined;
  /** The policy rule behind a denial, for the audit record and dynamic metadata. */
  readonly ruleId?: string | undefined;
  /** The refusal already has its audit records (a denial writes one per message it refuses). */
  readonly audited?: boolean | undefined;
  /** Sent as Retry-After: the failure is expected to clear by itself. */
  readonly retryAfterSeconds?: number | undefined;
}

/** A failure with a stable code. Thrown by any layer; turned into a client answer in one place. */
export class GatewayError extends Error {
  readonly code: ErrorCode;
  readonly spec: ErrorSpec;
  /** Raw JSON text of the JSON-RPC id the error answers, when it is known. */
  readonly rpcId: string | undefined;
  readonly challenge: BearerChallenge | undefined;
  readonly ruleId: string | undefined;
  readonly audited: boolean;
  readonly retryAfterSeconds: number | undefined;

  constructor(code: ErrorCode, message: string, options: GatewayErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'GatewayError';
    this.code = code;
    this.spec = ERRORS[code];
    this.rpcId = options.rpcId;
    this.challenge = options.challenge;
    this.ruleId = options.ruleId;
    this.audited = options.audited ?? false;
    this.retryAfterSeconds = options.retryAfterSeconds;
  }

  /** The same error, answering a given request id and/or carrying a challenge. */
  with(options: GatewayErrorOptions): GatewayError {
    return new GatewayError(this.code, this.message, {
      rpcId: options.rpcId ?? this.rpcId,
      cause: this.cause,
      challenge: options.challenge ?? this.challenge,
      ruleId: options.ruleId ?? this.ruleId,
      audited: options.audited ?? this.audited,
      retryAfterSeconds: options.retryAfterSeconds ?? this.retryAfterSeconds,
    });
  }
}

/** Any thrown value as a GatewayError; unknown failures are ours (ERR_INTERNAL), never the client's. */
export function toGatewayError(err: unknown): GatewayError {
  if (err instanceof GatewayError) return err;
  return new GatewayError('ERR_INTERNAL', 'internal error in the MCP gateway', { cause: err });
}
