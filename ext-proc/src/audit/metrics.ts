// Prometheus metrics on the admin port. Units in names, histograms in seconds, label values bounded:
// servers and rules come from the governance document, methods from the MCP spec, tool names only
// once the server itself has listed them; never user ids.

import { Counter, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { ErrorCode } from '../errors.ts';
import type { McpMessageEvent, Observer } from './events.ts';

const MCP_METHODS = new Set([
  'initialize', 'ping', 'tools/list', 'tools/call', 'prompts/list', 'prompts/get', 'resources/list', 'resources/read',
  'resources/templates/list', 'resources/subscribe', 'resources/unsubscribe', 'completion/complete', 'logging/setLevel',
  'server/discover', 'subscriptions/listen', 'tasks/get', 'tasks/result', 'tasks/list', 'tasks/cancel',
  'notifications/initialized', 'notifications/cancelled', 'notifications/progress', 'notifications/roots/list_changed',
  'sampling/createMessage', 'elicitation/create', 'roots/list', 'unknown',
]);

/** Tool names per server that a server has listed itself; anything else counts as "other". */
const MAX_TOOLS_PER_SERVER = 500;

export type Phase = 'request_headers' | 'request_body' | 'response_headers' | 'response_body' | 'other';

export interface CallMetric {
  readonly server: string;
  readonly method: string;
  readonly tool: string | undefined;
  readonly decision: 'allow' | 'deny' | 'none';
  readonly outcome: string;
  readonly ruleId: string | undefined;
  readonly durationSeconds: number | undefined;
}

export class Metrics implements Observer {
  readonly registry = new Registry();
  readonly #messages: Counter<'direction' | 'kind' | 'correlation'>;
  readonly #errors: Counter<'code'>;
  readonly #reloads: Counter<'result'>;
  readonly #streams: Counter;
  readonly #requests: Counter<'server' | 'method' | 'tool' | 'decision' | 'outcome'>;
  readonly #duration: Histogram<'server' | 'method'>;
  readonly #processing: Histogram<'phase'>;
  readonly #denials: Counter<'server' | 'rule'>;
  readonly #verifications: Counter<'result'>;
  readonly #revocationChecks: Counter<'result'>;
  readonly #auditRecords: Counter<'format'>;
  readonly #auditDropped: Counter;
  readonly #credentialLookups: Counter<'server' | 'strategy' | 'source'>;
  readonly #credentialFetches: Histogram<'strategy' | 'outcome'>;
  readonly #credentialFailures: Counter<'server' | 'reason'>;
  readonly #credentialLookupChildren = new Map<string, { inc(): void }>();
  readonly #knownTools = new Map<string, Set<string>>();

  constructor() {
    // Event-loop delay sampled every 100 ms rather than 10: the default timer alone cost ~4 ms CPU/s idle.
    collectDefaultMetrics({ register: this.registry, prefix: 'mcp_ext_proc_process_', eventLoopMonitoringPrecision: 100 });
    const registers = [this.registry];
    this.#streams = new Counter({ name: 'mcp_ext_proc_streams_total', help: 'ext_proc streams opened by Envoy (one per HTTP request).', registers });
    this.#messages = new Counter({
      name: 'mcp_ext_proc_mcp_messages_total',
      help: 'MCP JSON-RPC messages seen, by direction, kind and how responses were matched to requests.',
      labelNames: ['direction', 'kind', 'correlation'],
      registers,
    });
    this.#requests = new Counter({
      name: 'mcp_ext_proc_mcp_requests_total',
      help: 'MCP messages audited, by server, method, tool, policy decision and outcome.',
      labelNames: ['server', 'method', 'tool', 'decision', 'outcome'],
      registers,
    });
    this.#duration = new Histogram({
      name: 'mcp_ext_proc_request_duration_seconds',
      help: 'Whole MCP exchange: request at the processor to response seen.',
      labelNames: ['server', 'method'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers,
    });
    this.#processing = new Histogram({
      name: 'mcp_ext_proc_processing_duration_seconds',
      help: 'Processor time per Envoy message, by phase.',
      labelNames: ['phase'],
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1],
      registers,
    });
    this.#denials = new Counter({ name: 'mcp_ext_proc_denials_total', help: 'Calls denied by policy, by rule.', labelNames: ['server', 'rule'], registers });
    this.#errors = new Counter({ name: 'mcp_ext_proc_errors_total', help: 'Requests answered with an error, by error code.', labelNames: ['code'], registers });
    this.#reloads = new Counter({ name: 'mcp_ext_proc_config_reloads_total', help: 'Governance document reloads, applied or rejected.', labelNames: ['result'], registers });
    this.#verifications = new Counter({
      name: 'mcp_ext_proc_token_verifications_total',
      help: 'Bearer tokens checked: answered from the verified-token cache, verified, or failed.',
      labelNames: ['result'],
      registers,
    });
    this.#revocationChecks = new Counter({ name: 'mcp_ext_proc_revocation_checks_total', help: 'Revocation checks by result.', labelNames: ['result'], registers });
    this.#auditRecords = new Counter({ name: 'mcp_ext_proc_audit_records_total', help: 'Audit records written, by format.', labelNames: ['format'], registers });
    this.#auditDropped = new Counter({
      name: 'mcp_ext_proc_audit_records_dropped_total',
      help: 'Audit records the sink could not take (it could not keep up); never silent: a warning is logged too.',
      registers,
    });
    this.#credentialLookups = new Counter({
      name: 'mcp_ext_proc_credential_lookups_total',
      help: 'Downstream credentials handed out, by where they came from: l1 (this replica), l2 (shared state), exchanged (the IdP), coalesced (another request\'s exchange), static.',
      labelNames: ['server', 'strategy', 'source'],
      registers,
    });
    this.#credentialFetches = new Histogram({
      name: 'mcp_ext_proc_credential_exchange_duration_seconds',
      help: 'Token endpoint requests (token exchange, client credentials), by outcome: ok, refused, unavailable.',
      labelNames: ['strategy', 'outcome'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.#credentialFailures = new Counter({
      name: 'mcp_ext_proc_credential_failures_total',
      help: 'Downstream credential problems, by reason: unreachable, timeout, idp_error, client_rejected, secret_missing, refused, upstream_rejected, cache_corrupt, cache_unavailable.',
      labelNames: ['server', 'reason'],
      registers,
    });
  }

  credentialLookup(server: string, strategy: string, source: string): void {
    // Once per request: the labelled child is looked up once per label set, not hashed every time.
    const key = `${server}\u0000${strategy}\u0000${source}`;
    let child = this.#credentialLookupChildren.get(key);
    if (child === undefined) {
      child = this.#credentialLookups.labels({ server, strategy, source });
      this.#credentialLookupChildren.set(key, child);
    }
    child.inc();
  }

  credentialFetch(strategy: string, outcome: 'ok' | 'refused' | 'unavailable', seconds: number): void {
    this.#credentialFetches.observe({ strategy, outcome }, seconds);
  }

  credentialFailure(server: string, reason: string): void {
    this.#credentialFailures.inc({ server, reason });
  }

  streamOpened(): void {
    this.#streams.inc();
  }

  message(e: McpMessageEvent): void {
    this.#messages.inc({ direction: e.direction, kind: e.message.kind, correlation: e.correlation });
    // Learn the tool names a server lists, so that only those become label values.
    if (e.answers === 'tools/list' && e.message.kind === 'result') this.#learnTools(e.server, e.message.result);
  }

  rejected(code: ErrorCode): void {
    this.#errors.inc({ code });
  }

  phase(phase: string, seconds: number): void {
    this.#processing.observe({ phase }, seconds);
  }

  call(c: CallMetric): void {
    const method = MCP_METHODS.has(c.method) ? c.method : 'other';
    const tool = c.tool === undefined ? '' : this.#knownTools.get(c.server)?.has(c.tool) === true ? c.tool : 'other';
    this.#requests.inc({ server: c.server, method, tool, decision: c.decision, outcome: c.outcome });
    if (c.durationSeconds !== undefined) this.#duration.observe({ server: c.server, method }, c.durationSeconds);
    if (c.decision === 'deny') this.#denials.inc({ server: c.server, rule: c.ruleId ?? '(default)' });
  }

  configReload(result: 'applied' | 'rejected'): void {
    this.#reloads.inc({ result });
  }

  tokenVerification(result: 'cache_hit' | 'verified' | 'failed'): void {
    this.#verifications.inc({ result });
  }

  revocationCheck(result: 'passed' | 'revoked' | 'unavailable' | 'skipped'): void {
    this.#revocationChecks.inc({ result });
  }

  auditWritten(format: string): void {
    this.#auditRecords.inc({ format });
  }

  auditDropped(count: number): void {
    this.#auditDropped.inc(count);
  }

  #learnTools(server: string, result: unknown): void {
    const tools = (result as { tools?: unknown } | undefined)?.tools;
    if (!Array.isArray(tools)) return;
    let known = this.#knownTools.get(server);
    if (known === undefined) {
      known = new Set();
      this.#knownTools.set(server, known);
    }
    for (const t of tools) {
      const name = (t as { name?: unknown } | null)?.name;
      if (typeof name === 'string' && known.size < MAX_TOOLS_PER_SERVER) known.add(name);
    }
  }
}
