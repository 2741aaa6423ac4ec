// Prometheus metrics on the admin port. Label values are bounded: no ids, no free-form names.

import { Counter, Registry, collectDefaultMetrics } from 'prom-client';
import type { ErrorCode } from '../errors.ts';
import type { McpMessageEvent, Observer } from './events.ts';

export class Metrics implements Observer {
  readonly registry = new Registry();
  readonly #messages: Counter<'direction' | 'kind' | 'correlation'>;
  readonly #errors: Counter<'code'>;
  readonly #reloads: Counter<'result'>;
  readonly #streams: Counter;

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'mcp_ext_proc_process_', eventLoopMonitoringPrecision: 100 });
    this.#streams = new Counter({ name: 'mcp_ext_proc_streams_total', help: 'ext_proc streams opened by Envoy (one per HTTP request).', registers: [this.registry] });
    this.#messages = new Counter({
      name: 'mcp_ext_proc_mcp_messages_total',
      help: 'MCP JSON-RPC messages seen, by direction, kind and how responses were matched to requests.',
      labelNames: ['direction', 'kind', 'correlation'],
      registers: [this.registry],
    });
    this.#reloads = new Counter({ name: 'mcp_ext_proc_config_reloads_total', help: 'Governance document reloads, applied or rejected.', labelNames: ['result'], registers: [this.registry] });
    this.#errors = new Counter({ name: 'mcp_ext_proc_errors_total', help: 'Requests answered with an error, by error code.', labelNames: ['code'], registers: [this.registry] });
  }

  message(e: McpMessageEvent): void {
    this.#messages.inc({ direction: e.direction, kind: e.message.kind, correlation: e.correlation });
  }

  configReload(result: 'applied' | 'rejected'): void {
    this.#reloads.inc({ result });
  }

  streamOpened(): void {
    this.#streams.inc();
  }

  rejected(code: ErrorCode): void {
    this.#errors.inc({ code });
  }
}
