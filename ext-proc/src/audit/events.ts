// What the pipeline reports about each MCP message it sees. The audit trail, metrics and dynamic
// metadata are built from these; tests collect them to assert on what was seen and correlated.

import type { ErrorCode } from '../errors.ts';
import type { RpcMessage } from '../mcp/jsonrpc.ts';

export type Direction = 'client_to_server' | 'server_to_client';

/** How a response was matched to its request. */
export type Correlation = 'stream' | 'shared_state' | 'shape' | 'none';

export interface McpMessageEvent {
  readonly server: string;
  readonly session: string | undefined;
  readonly direction: Direction;
  readonly message: RpcMessage;
  /** For responses: the method of the request it answers, when known. */
  readonly answers: string | undefined;
  readonly correlation: Correlation;
  readonly transport: 'json' | 'sse';
}

export interface Observer {
  streamOpened(): void;
  message(event: McpMessageEvent): void;
  /** A request answered with an error instead of being forwarded (or a response cut short). */
  rejected(code: ErrorCode, server: string | undefined): void;
  /** Processor time for one Envoy message. */
  phase(phase: string, seconds: number): void;
}

/** Sends every event to each observer in turn. */
export function allOf(...observers: Observer[]): Observer {
  return {
    streamOpened: () => { for (const o of observers) o.streamOpened(); },
    message: (e) => { for (const o of observers) o.message(e); },
    rejected: (c, s) => { for (const o of observers) o.rejected(c, s); },
    phase: (p, t) => { for (const o of observers) o.phase(p, t); },
  };
}
