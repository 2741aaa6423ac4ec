// The canonical audit record: one per MCP message, whatever happened to it (allowed, denied, errored,
// cancelled, never answered). Formatters (formats.ts) turn it into native / ECS / OCSF lines; the sink
// (sink.ts) writes them. The record is built already safe to write: the session id is hashed, the
// arguments went through the redactor (redact.ts), and the user's email and groups are present only
// when the governance document's `audit.includeEmail` / `audit.includeGroups` allow them.
// Pure: no I/O.

import { createHmac, randomUUID } from 'node:crypto';
import type { Agent, Principal } from '../identity/principal.ts';

export type AuditOutcome =
  | 'ok'
  | 'tool_error' // the server answered, but CallToolResult.isError was true
  | 'jsonrpc_error' // the server (or we, for client faults) answered with a JSON-RPC error
  | 'denied' // the policy refused the call
  | 'rejected' // we refused it before the policy: authentication, malformed message, unknown server…
  | 'upstream_error' // the server failed at the HTTP level (5xx, reset, timeout)
  | 'cancelled' // the client cancelled the request (notifications/cancelled) or went away
  | 'no_response'; // the exchange ended without an answer to this message

export type AuditTransport = 'streamable_http' | 'sse_legacy' | 'unknown';

export interface AuditUser {
  readonly subject: string;
  readonly issuer: string;
  readonly email?: string;
  readonly groups?: readonly string[];
}

export interface AuditAgent {
  readonly id: string;
  readonly clientId?: string;
  readonly spiffeId?: string;
}

export interface AuditDecision {
  readonly effect: 'allow' | 'deny';
  readonly ruleId: string | undefined;
  readonly reason: string;
}

export interface AuditEvent {
  /** ISO 8601, when the request reached the processor. */
  readonly time: string;
  /** Decision id (UUID v4), unique per record. */
  readonly id: string;
  /** Envoy's x-request-id. */
  readonly requestId: string | undefined;
  /** W3C trace id (32 hex) and our span id (16 hex). */
  readonly traceId: string | undefined;
  readonly spanId: string | undefined;
  readonly server: string;
  /** hashSession() of the Mcp-Session-Id; never the raw session id (it is a bearer capability). */
  readonly sessionHash: string | undefined;
  readonly protocolVersion: string | undefined;
  readonly transport: AuditTransport;
  /** MCP method, e.g. tools/call, notifications/cancelled. */
  readonly method: string;
  /** JSON text of the JSON-RPC id (`7`, `"7"`), undefined for notifications. */
  readonly rpcId: string | undefined;
  /** Tool / prompt name or resource URI. */
  readonly name: string | undefined;
  /** ALREADY redacted (redact.ts); undefined when dropped or absent. */
  readonly arguments: unknown;
  readonly user: AuditUser | undefined;
  readonly agent: AuditAgent | undefined;
  readonly decision: AuditDecision | undefined;
  readonly outcome: AuditOutcome;
  /** Our stable code (ERR_…) when we refused, or undefined. */
  readonly errorCode: string | undefined;
  /** JSON-RPC error code the client saw, if any. */
  readonly rpcErrorCode: number | undefined;
  /** HTTP status of the exchange, when known. */
  readonly httpStatus: number | undefined;
  /** Request reached the processor → response seen. */
  readonly durationMs: number | undefined;
  /** Request forwarded → upstream response headers. */
  readonly upstreamMs: number | undefined;
  readonly requestBytes: number | undefined;
  readonly responseBytes: number | undefined;
}

/** Output shapes of the audit trail (formats.ts). */
export type AuditFormat = 'native' | 'ecs' | 'ocsf';

/** What an `audit.arguments` rule does with the arguments it matches (see redact.ts). */
export type ArgumentsMode = 'keep' | 'drop' | 'hash';

/** One rule of the governance document's `audit.arguments.rules` (audit.schema.json). */
export interface ArgumentsRule {
  /** Server-name globs; absent = every server. */
  readonly servers?: readonly string[];
  /** Tool / prompt name globs; absent = every name. */
  readonly tools?: readonly string[];
  readonly mode: ArgumentsMode;
  /** keep only: the dotted paths to keep; everything else is dropped. */
  readonly paths?: readonly string[];
}

/** The governance document's `audit.arguments` section (audit.schema.json). */
export interface ArgumentsSection {
  readonly mode?: ArgumentsMode;
  readonly maxValueBytes?: number;
  readonly rules?: readonly ArgumentsRule[];
}

export type SinkSection =
  | { readonly type: 'stdout' }
  | { readonly type: 'none' }
  | { readonly type: 'file'; readonly path: string; readonly maxBytes?: number; readonly maxFiles?: number };

/** The governance document's `audit` section, as validated by audit.schema.json. */
export interface AuditSection {
  readonly format?: AuditFormat;
  readonly sink?: SinkSection;
  readonly includeEmail?: boolean;
  readonly includeGroups?: boolean;
  readonly arguments?: ArgumentsSection;
}

/**
 * A stable, non-reversible stand-in for a session id: HMAC-SHA256 keyed with a per-deployment salt,
 * hex, first 32 characters (128 bits). Keyed so that someone holding the audit trail cannot confirm
 * a guessed session id, and equal across replicas that share the salt so records still correlate.
 */
export function hashSession(session: string, salt: string): string {
  return createHmac('sha256', salt).update(session, 'utf8').digest('hex').slice(0, 32);
}

/** A fresh decision id (UUID v4). */
export function newAuditId(): string {
  return randomUUID();
}

export interface UserPrivacy {
  /** audit.includeEmail (default true). */
  readonly includeEmail: boolean;
  /** audit.includeGroups (default true). */
  readonly includeGroups: boolean;
}

/** The record's view of a verified user, with email and groups only where the document allows them. */
export function auditUser(p: Principal | undefined, privacy: UserPrivacy): AuditUser | undefined {
  if (p === undefined) return undefined;
  return {
    subject: p.subject,
    issuer: p.issuer,
    ...(privacy.includeEmail && p.email !== undefined ? { email: p.email } : {}),
    ...(privacy.includeGroups && p.groups.length > 0 ? { groups: [...p.groups] } : {}),
  };
}

/** The record's view of the calling agent (OAuth client and/or SPIFFE workload identity). */
export function auditAgent(a: Agent | undefined): AuditAgent | undefined {
  if (a === undefined || (a.id === '' && a.clientId === undefined && a.spiffeId === undefined)) return undefined;
  return {
    id: a.id,
    ...(a.clientId !== undefined ? { clientId: a.clientId } : {}),
    ...(a.spiffeId !== undefined ? { spiffeId: a.spiffeId } : {}),
  };
}

/**
 * The JSON-RPC id as OpenTelemetry's `jsonrpc.request.id` wants it: the string form of the id (`7`
 * for 7, `abc` for "abc"). The record keeps the JSON text, which also tells 1 from "1".
 */
export function rpcIdString(rpcId: string | undefined): string | undefined {
  if (rpcId === undefined) return undefined;
  if (rpcId.startsWith('"')) {
    try {
      const v: unknown = JSON.parse(rpcId);
      if (typeof v === 'string') return v;
    } catch {
      // Not valid JSON text: fall through and report it as it is.
    }
  }
  return rpcId;
}
