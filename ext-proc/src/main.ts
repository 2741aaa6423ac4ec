// Composition root: settings and governance document in, gRPC and admin servers up, graceful shutdown.

import { pino, type Logger } from 'pino';
import { Metrics } from './audit/metrics.ts';
import { allOf, type Observer } from './audit/events.ts';
import { startAdminServer } from './admin/server.ts';
import { loadGovernance, type CompiledDocument } from './config/document.ts';
import type { Settings } from './config/settings.ts';
import type { ProcessorContext } from './envoy/exchange.ts';
import { startGrpcServer, type Dispatch } from './envoy/server.ts';
import { MemoryState, type SharedState } from './state/store.ts';

export interface Service {
  readonly grpcPort: number;
  readonly adminPort: number;
  readonly metrics: Metrics;
  /** Graceful stop: not ready, finish in-flight streams (up to the grace period), close. */
  stop(): Promise<void>;
}

export interface ServiceOptions {
  readonly log?: Logger;
  /** Extra observer of MCP messages (tests collect events with it). */
  readonly observer?: Observer;
  readonly state?: SharedState;
  /** Test seam: replaces the phase dispatcher. */
  readonly handle?: Dispatch;
}

export function createLogger(level: string): Logger {
  // Operational logs go to stderr; stdout is kept for the audit trail.
  return pino({ level, base: { service: 'mcp-ext-proc' } }, pino.destination(2));
}

export async function startService(settings: Settings, options: ServiceOptions = {}): Promise<Service> {
  const log = options.log ?? createLogger(settings.logLevel);
  const document: CompiledDocument = loadGovernance(settings.configFile);
  const state = options.state ?? new MemoryState();
  if (state.kind === 'memory') log.info('shared state: in memory (single replica; configure Redis to run several)');
  const metrics = new Metrics();
  const ctx: ProcessorContext = {
    document: () => document,
    state,
    observer: options.observer === undefined ? metrics : allOf(metrics, options.observer),
    log,
    correlationTtlSeconds: settings.correlationTtlSeconds,
  };
  let draining = false;
  const grpcServer = await startGrpcServer(ctx, {
    host: settings.listenAddress,
    port: settings.grpcPort,
    maxMessageBytes: settings.grpcMaxMessageBytes,
    ...(options.handle === undefined ? {} : { handle: options.handle }),
  });
  const admin = await startAdminServer({
    host: settings.listenAddress,
    port: settings.adminPort,
    registry: metrics.registry,
    readiness: { problems: () => (draining ? ['shutting down'] : []) },
  });
  log.info({ grpcPort: grpcServer.port, adminPort: admin.port, servers: [...document.servers.keys()], config: document.source }, 'mcp-ext-proc ready');

  return {
    grpcPort: grpcServer.port,
    adminPort: admin.port,
    metrics,
    async stop() {
      draining = true;
      await grpcServer.shutdown(settings.shutdownGraceSeconds * 1000);
      await admin.close();
      await state.close();
      log.info('mcp-ext-proc stopped');
      log.flush();
    },
  };
}
