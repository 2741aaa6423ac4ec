// The three shapes of an audit line. Each formatter is a pure function of one AuditEvent (which is
// already safe: hashed session, redacted arguments) and returns a JSON-ready object with no undefined
// values, so the line the sink writes is exactly JSON.stringify of what these return.
//
// ── native ── flat keys; OpenTelemetry names where a convention exists (the GenAI SIG's MCP
// conventions, status Development: names are ours to keep stable even if theirs move), our own
// `mcp_ext_proc.*` names where none does.
//
//   AuditEvent            native key                                  convention
//   ───────────────────── ─────────────────────────────────────────── ─────────────────────────────
//   time                  time (ISO 8601)                             –
//   (constant)            event.name = "mcp_ext_proc.audit"           OTel event.name
//   id                    mcp_ext_proc.decision.id                    ours
//   requestId             mcp_ext_proc.request_id (Envoy x-request-id) ours
//   traceId / spanId      trace_id / span_id                          OTel log data model
//   server                mcp_ext_proc.server                         ours (logical name, not an address)
//   sessionHash           mcp.session.id (the hash, never the id)     OTel MCP
//   protocolVersion       mcp.protocol.version                        OTel MCP
//   transport             mcp_ext_proc.transport                      ours
//   method                mcp.method.name                             OTel MCP
//   rpcId                 jsonrpc.request.id (string form of the id)  OTel MCP
//   name                  gen_ai.tool.name      (tools/*)             OTel GenAI / MCP
//                         gen_ai.prompt.name    (prompts/*)           OTel MCP
//                         mcp.resource.uri      (resources/*)         OTel MCP
//                         mcp_ext_proc.target   (anything else)       ours
//   (tools/call)          gen_ai.operation.name = "execute_tool"      OTel GenAI / MCP
//   arguments             gen_ai.tool.call.arguments (tools/call)     OTel GenAI (opt-in attribute)
//                         mcp_ext_proc.arguments (other methods)      ours
//   user.subject/.issuer  user.id / mcp_ext_proc.user.issuer          OTel user.id / ours
//   user.email / .groups  user.email / user.roles                     OTel user.*
//   agent                 mcp_ext_proc.agent.{id,client_id,spiffe_id} ours
//   decision              mcp_ext_proc.decision.{effect,rule_id,reason} ours
//   outcome               mcp_ext_proc.outcome                        ours
//   errorCode             mcp_ext_proc.error.code (ERR_…)             ours
//   rpcErrorCode          rpc.response.status_code (as a string)      OTel MCP
//   (derived)             error.type: tool_error | ERR_… | JSON-RPC code | HTTP status | outcome   OTel
//   httpStatus            http.response.status_code                   OTel HTTP
//   durationMs/upstreamMs mcp_ext_proc.duration_ms / mcp_ext_proc.upstream.duration_ms   ours
//   requestBytes/…        http.request.body.size / http.response.body.size              OTel HTTP
//
// ── ecs ── Elastic Common Schema, nested objects (ECS_VERSION). `event.outcome` is only
// success | failure | unknown; allow/deny is `event.type` (allowed | denied, with access), plus
// `rule.id` and `event.reason`. Everything MCP-specific lives under the custom `mcp.*` field set.
// Arguments are written as a JSON *string* (`mcp.arguments`): as an object they would add one mapped
// field per argument name and clash on types across tools (mapping explosion).
//
// ── ocsf ── OCSF API Activity (class_uid 6003, category 6), pinned to OCSF_VERSION, with the Security
// Control profile for the decision (action_id / disposition_id / policy). Activity by method:
//   Read (2):   tools/list, prompts/list, prompts/get, resources/list, resources/templates/list,
//               resources/read, completion/complete — they return data and change nothing;
//   Create (1): initialize (creates a session), resources/subscribe (creates a subscription);
//   Update (3): logging/setLevel;  Delete (4): resources/unsubscribe;
//   Other (99): tools/call — a tool may read, write or delete, and nothing on the wire says which —
//               and every other method (notifications, sampling, elicitation, ping, unknown), with
//               activity_name = the method.
// type_uid = 600300 + activity_id. Arguments go to api.request.data; what OCSF has no attribute for
// goes to `unmapped`.

import type { AuditEvent, AuditFormat } from './record.ts';
import { rpcIdString } from './record.ts';
import { scrubSecrets } from './redact.ts';

export const SERVICE_NAME = 'mcp-ext-proc';
/** ECS release the ecs shape follows (`event.category: api` needs ECS ≥ 8.10). */
export const ECS_VERSION = '8.11.0';
/**
 * OCSF release the ocsf shape follows. 1.6.0 keeps `metadata.uid` as "this event's id" (which is what
 * we put there; 1.7 renamed the source's id to `original_event_uid`) and `actor.app_name` (deprecated
 * for `actor.application` only in 1.9).
 */
export const OCSF_VERSION = '1.6.0';
export const OCSF_CLASS_UID = 6003;
export const OCSF_CATEGORY_UID = 6;

export type FormattedRecord = Readonly<Record<string, unknown>>;
export type Formatter = (e: AuditEvent) => FormattedRecord;

/** Drops undefined values (and returns undefined for an object left empty), one level. */
function clean(fields: Record<string, unknown>): Record<string, unknown> | undefined {
  const out: Record<string, unknown> = {};
  let any = false;
  for (const [k, v] of Object.entries(fields)) {
    if (v === undefined) continue;
    out[k] = v;
    any = true;
  }
  return any ? out : undefined;
}

/**
 * The free-text fields the client controls besides the arguments — a resource URI
 * (`postgres://app:pw@db/…`), a JSON-RPC id, a reason that quotes them — with credential-looking parts
 * redacted. The arguments were redacted when the record was built.
 */
function scrubbed(e: AuditEvent): AuditEvent {
  const name = e.name === undefined ? undefined : scrubSecrets(e.name);
  const rpcId = e.rpcId === undefined ? undefined : scrubSecrets(e.rpcId);
  const reason = e.decision === undefined ? undefined : scrubSecrets(e.decision.reason);
  if (name === e.name && rpcId === e.rpcId && reason === e.decision?.reason) return e;
  return { ...e, name, rpcId, decision: e.decision === undefined || reason === undefined ? e.decision : { ...e.decision, reason } };
}

type NameKind = 'tool' | 'prompt' | 'resource' | 'other';

function nameKind(method: string): NameKind {
  if (method.startsWith('tools/')) return 'tool';
  if (method.startsWith('prompts/')) return 'prompt';
  if (method.startsWith('resources/')) return 'resource';
  return 'other';
}

/** OTel `error.type`: what class of failure the message ended with; undefined when it succeeded. */
export function errorType(e: AuditEvent): string | undefined {
  if (e.outcome === 'ok') return undefined;
  if (e.outcome === 'tool_error') return 'tool_error';
  if (e.errorCode !== undefined) return e.errorCode;
  if (e.rpcErrorCode !== undefined) return String(e.rpcErrorCode);
  if (e.outcome === 'upstream_error' && e.httpStatus !== undefined) return String(e.httpStatus);
  return e.outcome;
}

/** One human-readable line, for the `message` fields of ECS and OCSF. */
function summary(e: AuditEvent): string {
  const target = e.name === undefined ? e.method : `${e.method} ${e.name}`;
  const who = e.user === undefined ? 'anonymous' : e.user.subject;
  const via = e.agent === undefined ? '' : ` via ${e.agent.id}`;
  const decided = e.decision === undefined ? '' : ` ${e.decision.effect === 'allow' ? 'allowed' : 'denied'}${e.decision.ruleId === undefined ? '' : ` by ${e.decision.ruleId}`}:`;
  const err = errorType(e);
  return `${target} on ${e.server} by ${who}${via}:${decided} ${e.outcome}${err === undefined || err === e.outcome ? '' : ` (${err})`}`;
}

// ---------------------------------------------------------------------------------------------------

export function formatNative(event: AuditEvent): FormattedRecord {
  const e = scrubbed(event);
  const kind = nameKind(e.method);
  const isCall = e.method === 'tools/call';
  return clean({
    time: e.time,
    'event.name': 'mcp_ext_proc.audit',
    'mcp_ext_proc.decision.id': e.id,
    'mcp_ext_proc.request_id': e.requestId,
    trace_id: e.traceId,
    span_id: e.spanId,
    'mcp_ext_proc.server': e.server,
    'mcp.session.id': e.sessionHash,
    'mcp.protocol.version': e.protocolVersion,
    'mcp_ext_proc.transport': e.transport,
    'mcp.method.name': e.method,
    'jsonrpc.request.id': rpcIdString(e.rpcId),
    'gen_ai.tool.name': kind === 'tool' ? e.name : undefined,
    'gen_ai.prompt.name': kind === 'prompt' ? e.name : undefined,
    'mcp.resource.uri': kind === 'resource' ? e.name : undefined,
    'mcp_ext_proc.target': kind === 'other' ? e.name : undefined,
    'gen_ai.operation.name': isCall ? 'execute_tool' : undefined,
    'gen_ai.tool.call.arguments': isCall ? e.arguments : undefined,
    'mcp_ext_proc.arguments': isCall ? undefined : e.arguments,
    'user.id': e.user?.subject,
    'mcp_ext_proc.user.issuer': e.user?.issuer,
    'user.email': e.user?.email,
    'user.roles': e.user?.groups,
    'mcp_ext_proc.agent.id': e.agent?.id,
    'mcp_ext_proc.agent.client_id': e.agent?.clientId,
    'mcp_ext_proc.agent.spiffe_id': e.agent?.spiffeId,
    'mcp_ext_proc.decision.effect': e.decision?.effect,
    'mcp_ext_proc.decision.rule_id': e.decision?.ruleId,
    'mcp_ext_proc.decision.reason': e.decision?.reason,
    'mcp_ext_proc.outcome': e.outcome,
    'mcp_ext_proc.error.code': e.errorCode,
    'rpc.response.status_code': e.rpcErrorCode === undefined ? undefined : String(e.rpcErrorCode),
    'error.type': errorType(e),
    'http.response.status_code': e.httpStatus,
    'mcp_ext_proc.duration_ms': e.durationMs,
    'mcp_ext_proc.upstream.duration_ms': e.upstreamMs,
    'http.request.body.size': e.requestBytes,
    'http.response.body.size': e.responseBytes,
  }) ?? {};
}

// ---------------------------------------------------------------------------------------------------

/** ECS event.outcome: did the operation succeed, from the client's point of view. */
export function ecsOutcome(e: AuditEvent): 'success' | 'failure' | 'unknown' {
  switch (e.outcome) {
    case 'ok':
      return 'success';
    case 'tool_error':
    case 'jsonrpc_error':
    case 'denied':
    case 'rejected':
    case 'upstream_error':
      return 'failure';
    case 'cancelled':
    case 'no_response':
      return 'unknown';
  }
}

function ecsTypes(e: AuditEvent): string[] {
  // Allowed-values for category api: access, admin, allowed, change, creation, deletion, denied, …
  if (e.decision?.effect === 'deny' || e.outcome === 'denied' || e.outcome === 'rejected') return ['access', 'denied'];
  if (e.decision?.effect === 'allow') return ['access', 'allowed'];
  return ['info'];
}

const nanos = (ms: number | undefined): number | undefined => (ms === undefined ? undefined : Math.round(ms * 1e6));

export function formatEcs(event: AuditEvent): FormattedRecord {
  const e = scrubbed(event);
  const kind = nameKind(e.method);
  return clean({
    '@timestamp': e.time,
    ecs: { version: ECS_VERSION },
    message: summary(e),
    event: clean({
      kind: 'event',
      category: ['api'],
      type: ecsTypes(e),
      action: e.method,
      outcome: ecsOutcome(e),
      duration: nanos(e.durationMs),
      id: e.id,
      reason: e.decision?.reason,
      dataset: 'mcp_ext_proc.audit',
      provider: SERVICE_NAME,
    }),
    service: { name: SERVICE_NAME, target: { name: e.server } },
    trace: clean({ id: e.traceId }),
    span: clean({ id: e.spanId }),
    user: clean({ id: e.user?.subject, domain: e.user?.issuer, email: e.user?.email, roles: e.user?.groups }),
    rule: clean({ id: e.decision?.ruleId }),
    http: clean({
      request: clean({ id: e.requestId, body: clean({ bytes: e.requestBytes }) }),
      response: clean({ status_code: e.httpStatus, body: clean({ bytes: e.responseBytes }) }),
    }),
    error: clean({ code: e.errorCode ?? (e.rpcErrorCode === undefined ? undefined : String(e.rpcErrorCode)), type: errorType(e) }),
    mcp: clean({
      method: { name: e.method },
      session: clean({ id: e.sessionHash }),
      protocol: clean({ version: e.protocolVersion }),
      transport: e.transport,
      server: e.server,
      tool: kind === 'tool' ? clean({ name: e.name }) : undefined,
      prompt: kind === 'prompt' ? clean({ name: e.name }) : undefined,
      resource: kind === 'resource' ? clean({ uri: e.name }) : undefined,
      target: kind === 'other' ? e.name : undefined,
      jsonrpc: clean({
        request: clean({ id: rpcIdString(e.rpcId) }),
        error: clean({ code: e.rpcErrorCode }),
      }),
      arguments: e.arguments === undefined ? undefined : JSON.stringify(e.arguments),
      agent: e.agent === undefined ? undefined : clean({ id: e.agent.id, client_id: e.agent.clientId, spiffe_id: e.agent.spiffeId }),
      decision: e.decision === undefined ? undefined : clean({ effect: e.decision.effect, rule_id: e.decision.ruleId, reason: e.decision.reason }),
      outcome: e.outcome,
      error_code: e.errorCode,
      upstream: clean({ duration: nanos(e.upstreamMs) }),
    }),
  }) ?? {};
}

// ---------------------------------------------------------------------------------------------------

const OCSF_ACTIVITY: Readonly<Record<string, 1 | 2 | 3 | 4>> = {
  'tools/list': 2,
  'prompts/list': 2,
  'prompts/get': 2,
  'resources/list': 2,
  'resources/templates/list': 2,
  'resources/read': 2,
  'completion/complete': 2,
  initialize: 1,
  'resources/subscribe': 1,
  'logging/setLevel': 3,
  'resources/unsubscribe': 4,
};
const ACTIVITY_CAPTION = { 1: 'Create', 2: 'Read', 3: 'Update', 4: 'Delete', 99: 'Other' } as const;

/** OCSF API Activity activity_id for an MCP method (see the table at the top of this file). */
export function ocsfActivity(method: string): { id: 1 | 2 | 3 | 4 | 99; name: string } {
  const id = Object.hasOwn(OCSF_ACTIVITY, method) ? OCSF_ACTIVITY[method] : undefined;
  // 99 Other: activity_name carries the source's own value, the method.
  return id === undefined ? { id: 99, name: method } : { id, name: ACTIVITY_CAPTION[id] };
}

function ocsfStatus(e: AuditEvent): { id: 0 | 1 | 2 | 99; name: string } {
  switch (e.outcome) {
    case 'ok':
      return { id: 1, name: 'Success' };
    case 'cancelled':
      return { id: 99, name: 'Cancelled' };
    case 'no_response':
      return { id: 0, name: 'Unknown' };
    default:
      return { id: 2, name: 'Failure' };
  }
}

function ocsfStatusDetail(e: AuditEvent): string | undefined {
  switch (e.outcome) {
    case 'ok':
      return undefined;
    case 'tool_error':
      return 'tool_error: the tool reported an error (isError)';
    case 'denied':
      return `denied by policy${e.decision?.ruleId === undefined ? '' : ` rule ${e.decision.ruleId}`}${e.decision === undefined ? '' : `: ${e.decision.reason}`}`;
    case 'jsonrpc_error':
      return `JSON-RPC error ${e.rpcErrorCode ?? ''}`.trim();
    case 'upstream_error':
      return `upstream error${e.httpStatus === undefined ? '' : ` HTTP ${e.httpStatus}`}`;
    default:
      return errorType(e);
  }
}

// The decision as a security control's: action 1 Allowed / 2 Denied, disposition 1 Allowed / 2 Blocked.
function ocsfControl(e: AuditEvent): Record<string, unknown> {
  const denied = e.decision?.effect === 'deny' || e.outcome === 'denied' || e.outcome === 'rejected';
  if (denied) return { action_id: 2, action: 'Denied', disposition_id: 2, disposition: 'Blocked' };
  if (e.decision?.effect === 'allow') return { action_id: 1, action: 'Allowed', disposition_id: 1, disposition: 'Allowed' };
  return {};
}

function ocsfResource(e: AuditEvent): Record<string, unknown>[] | undefined {
  if (e.name === undefined) return undefined;
  const kind = nameKind(e.method);
  const type = kind === 'other' ? 'mcp' : `mcp.${kind}`;
  return [{ type, name: e.name }];
}

export function formatOcsf(event: AuditEvent): FormattedRecord {
  const e = scrubbed(event);
  const activity = ocsfActivity(e.method);
  const status = ocsfStatus(e);
  const severe = e.outcome === 'denied' || e.outcome === 'rejected';
  const time = Date.parse(e.time);
  const err = errorType(e);
  return clean({
    class_uid: OCSF_CLASS_UID,
    class_name: 'API Activity',
    category_uid: OCSF_CATEGORY_UID,
    category_name: 'Application Activity',
    activity_id: activity.id,
    activity_name: activity.name,
    type_uid: OCSF_CLASS_UID * 100 + activity.id,
    type_name: `API Activity: ${ACTIVITY_CAPTION[activity.id]}`,
    time: Number.isFinite(time) ? time : undefined,
    duration: e.durationMs === undefined ? undefined : Math.round(e.durationMs),
    // A refusal is worth a look (Low); everything else is Informational. Alerting belongs to the SIEM.
    severity_id: severe ? 2 : 1,
    severity: severe ? 'Low' : 'Informational',
    status_id: status.id,
    status: status.name,
    status_code: e.errorCode ?? (e.rpcErrorCode === undefined ? undefined : String(e.rpcErrorCode)),
    status_detail: ocsfStatusDetail(e),
    ...ocsfControl(e),
    message: summary(e),
    metadata: clean({
      version: OCSF_VERSION,
      uid: e.id,
      product: { name: SERVICE_NAME, vendor_name: SERVICE_NAME },
      profiles: ['security_control'],
      log_name: 'audit',
      correlation_uid: e.traceId,
    }),
    actor: clean({
      user:
        e.user === undefined
          ? undefined
          : clean({
              uid: e.user.subject,
              email_addr: e.user.email,
              groups: e.user.groups?.map((name) => ({ name })),
              type_id: 1,
              type: 'User',
            }),
      idp: e.user === undefined ? undefined : { name: e.user.issuer },
      app_name: e.agent === undefined ? undefined : (e.agent.clientId ?? e.agent.id),
      app_uid: e.agent?.id,
      session: clean({ uid: e.sessionHash }),
    }),
    api: clean({
      operation: e.method,
      service: { name: e.server },
      request: clean({ uid: rpcIdString(e.rpcId), data: e.arguments }),
      response: clean({ code: e.rpcErrorCode, error: err }),
    }),
    resources: ocsfResource(e),
    http_request: clean({ uid: e.requestId }),
    http_response: clean({ code: e.httpStatus, latency: e.upstreamMs === undefined ? undefined : Math.round(e.upstreamMs) }),
    policy:
      e.decision === undefined
        ? undefined
        : clean({ uid: e.decision.ruleId, name: e.decision.ruleId, desc: e.decision.reason, is_applied: true }),
    unmapped: clean({
      'mcp.outcome': e.outcome,
      'mcp.protocol.version': e.protocolVersion,
      'mcp.transport': e.transport,
      'mcp.decision.effect': e.decision?.effect,
      'mcp.agent.spiffe_id': e.agent?.spiffeId,
      'mcp.agent.client_id': e.agent?.clientId,
      trace_id: e.traceId,
      span_id: e.spanId,
      'http.request.body.size': e.requestBytes,
      'http.response.body.size': e.responseBytes,
    }),
  }) ?? {};
}

const FORMATTERS: Readonly<Record<AuditFormat, Formatter>> = { native: formatNative, ecs: formatEcs, ocsf: formatOcsf };

export function formatterFor(format: AuditFormat): Formatter {
  return FORMATTERS[format];
}
