// Composition root: settings and governance document in, shared state, identity, gRPC and admin
// servers up, hot reload, graceful shutdown.

import { LRUCache } from 'lru-cache';
import { pino, type Logger } from 'pino';
import { handleAdminApi } from './admin/api.ts';
import { startAdminServer } from './admin/server.ts';
import { Auditor } from './audit/auditor.ts';
import { allOf, type Observer } from './audit/events.ts';
import { createAuditSink } from './audit/sink.ts';
import { createTracer } from './audit/tracing.ts';
import { Metrics } from './audit/metrics.ts';
import { loadGovernance, type CompiledDocument } from './config/document.ts';
import type { Settings } from './config/settings.ts';
import { watchGovernance } from './config/watch.ts';
import type { ProcessorContext } from './envoy/exchange.ts';
import { startGrpcServer, type Dispatch } from './envoy/server.ts';
import { CredentialBroker } from './credentials/broker.ts';
import { CredentialCache } from './credentials/cache.ts';
import { parseKeyRing } from './credentials/seal.ts';
import { GatewayError } from './errors.ts';
import { Revocations } from './identity/revocation.ts';
import { TokenVerifier } from './identity/verifier.ts';
import { createRedisState, describeRedisSettings, parseRedisSettings } from './state/redis.ts';
import { MemoryState, type SharedState } from './state/store.ts';

export interface Service {
  readonly grpcPort: number;
  readonly adminPort: number;
  readonly metrics: Metrics;
  /** Everything audited so far has reached the sink's destination. */
  flushAudit(): Promise<void>;
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

async function createState(settings: Settings, log: Logger): Promise<SharedState> {
  if (settings.redisUrl === '') {
    log.info('shared state: in memory (single replica; set --redis-url to run several)');
    return new MemoryState();
  }
  const connection = parseRedisSettings(settings.redisUrl);
  log.info({ redis: describeRedisSettings(connection) }, 'shared state: Redis');
  return createRedisState({
    ...connection,
    commandTimeoutMs: settings.redisCommandTimeoutMs,
    onError: (err, source) => log.warn({ err: (err as Error).message, source }, 'Redis error'),
  });
}

function verifierFor(doc: CompiledDocument, metrics: Metrics): TokenVerifier | undefined {
  const id = doc.identity;
  return id === undefined ? undefined : new TokenVerifier(id.issuers, { clockSkewSeconds: id.clockSkewSeconds, onResult: (r) => metrics.tokenVerification(r) });
}

function createCredentialCache(settings: Settings, state: SharedState, metrics: Metrics, log: Logger): CredentialCache {
  const keyRing = settings.credentialCacheKeys === '' ? undefined : parseKeyRing(settings.credentialCacheKeys);
  if (state.kind === 'redis' && keyRing === undefined) {
    log.warn('downstream credentials are cached per replica: set --credential-cache-keys to share them (encrypted) through Redis');
  }
  let warnedAt = 0;
  return new CredentialCache({
    state,
    keyRing,
    events: {
      corrupt: () => metrics.credentialFailure('', 'cache_corrupt'),
      sharedStateError: (err) => {
        metrics.credentialFailure('', 'cache_unavailable');
        // Once a minute at most: with Redis down, every miss would say it.
        if (Date.now() - warnedAt > 60_000) {
          warnedAt = Date.now();
          log.warn({ err: (err as Error).message }, 'credential cache: shared state unavailable; using the local cache and the IdP');
        }
      },
    },
  });
}

export async function startService(settings: Settings, options: ServiceOptions = {}): Promise<Service> {
  const log = options.log ?? createLogger(settings.logLevel);
  let document: CompiledDocument = loadGovernance(settings.configFile);
  const metrics = new Metrics();
  let verifier = verifierFor(document, metrics);
  // The sink and its format are fixed at start (a reload cannot move the audit trail); redaction and
  // the user fields follow the document in force.
  const format = document.audit.format;
  if (document.audit.sink.type === 'none') log.warn('audit.sink is none: no audit records are written');
  const sink = createAuditSink({
    format,
    sink: document.audit.sink,
    onWrite: () => metrics.auditWritten(format),
    onDrop: (count: number) => {
      metrics.auditDropped(count);
      log.warn({ dropped: count }, 'audit sink cannot keep up: records dropped');
    },
    onError: (err: unknown) => log.warn({ err: (err as Error).message }, 'audit sink error'),
  });
  const auditor = new Auditor({
    sink,
    tracer: createTracer({ otlpEndpoint: settings.otlpEndpoint === '' ? undefined : settings.otlpEndpoint }),
    metrics,
    redactor: () => document.audit.redactor,
    settings: () => ({ salt: settings.auditSalt, includeEmail: document.audit.includeEmail, includeGroups: document.audit.includeGroups }),
  });
  const state = options.state ?? (await createState(settings, log));
  const failureMode = document.identity?.failureMode ?? 'closed';
  const revocations = new Revocations(state, { failureMode, clockSkewSeconds: document.identity?.clockSkewSeconds ?? 0 });
  await revocations.ready();
  const credentials = new CredentialBroker(createCredentialCache(settings, state, metrics, log), metrics, log);
  revocations.onRevoked((r) => {
    credentials.revoked(r).catch((err: unknown) => log.warn({ err: (err as Error).message }, 'could not drop cached credentials of a revocation'));
  });

  const ctx: ProcessorContext = {
    document: () => document,
    verifier: () => verifier,
    revocations,
    state,
    async sharedStateCall(call) {
      try {
        return await call();
      } catch (err) {
        if (failureMode === 'open') {
          log.warn({ err: (err as Error).message }, 'shared state unavailable; check skipped (failureMode: open)');
          return undefined;
        }
        throw err instanceof GatewayError ? err : new GatewayError('ERR_STATE_UNAVAILABLE', 'shared state is unavailable', { cause: err });
      }
    },
    observer: options.observer === undefined ? metrics : allOf(metrics, options.observer),
    credentials,
    auditor,
    metrics,
    log,
    correlationTtlSeconds: settings.correlationTtlSeconds,
    sessionTtlSeconds: settings.sessionTtlSeconds,
    sessionOwners: new LRUCache<string, string>({ max: 100_000, ttl: settings.sessionTtlSeconds * 1000 }),
  };

  const watcher = watchGovernance(
    settings.configFile,
    () => document,
    (next) => {
      // Keep the verifier (and its key and token caches) unless the identity section changed.
      if (JSON.stringify(next.identity) !== JSON.stringify(document.identity)) verifier = verifierFor(next, metrics);
      document = next;
    },
    { pollSeconds: settings.configPollSeconds, log, onResult: (r) => metrics.configReload(r) },
  );

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
    readiness: {
      problems: () => [...(draining ? ['shutting down'] : []), ...(state.healthy() ? [] : ['shared state (Redis) is unreachable'])],
    },
    routes: (req, res, path) =>
      handleAdminApi(
        {
          document: () => document,
          verifier: () => verifier,
          revocations,
          revoked: (r, by) => log.warn({ revocation: r, by: by.user.subject }, 'revoked'),
        },
        req,
        res,
        path,
      ),
  });
  log.info({ grpcPort: grpcServer.port, adminPort: admin.port, servers: [...document.servers.keys()], config: document.source }, 'mcp-ext-proc ready');

  return {
    grpcPort: grpcServer.port,
    adminPort: admin.port,
    metrics,
    flushAudit: () => sink.flush(),
    async stop() {
      draining = true;
      watcher.stop();
      await grpcServer.shutdown(settings.shutdownGraceSeconds * 1000);
      await grpcServer.streams.drained(2_000);
      // Every stream is finished (or cancelled) and has written its records: now they reach the sink.
      await auditor.close().catch((err: unknown) => log.warn({ err: (err as Error).message }, 'could not flush traces'));
      await admin.close();
      await revocations.close();
      await state.close();
      log.info('mcp-ext-proc stopped');
      log.flush();
    },
  };
}
