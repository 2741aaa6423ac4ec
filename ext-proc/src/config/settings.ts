// Process settings: flags first, then environment variables, then defaults. Parsed once at start;
// a bad value stops the process with a message naming the flag and the variable.

import { parseArgs } from 'node:util';
import { parseKeyRing } from '../credentials/seal.ts';

export interface Settings {
  readonly configFile: string;
  readonly listenAddress: string;
  readonly grpcPort: number;
  readonly adminPort: number;
  readonly logLevel: string;
  readonly shutdownGraceSeconds: number;
  /** Largest gRPC message accepted from Envoy: the biggest buffered body plus headroom. */
  readonly grpcMaxMessageBytes: number;
  readonly correlationTtlSeconds: number;
  readonly sessionTtlSeconds: number;
  /** Empty: in-memory state (one replica). */
  readonly redisUrl: string;
  readonly redisCommandTimeoutMs: number;
  readonly configPollSeconds: number;
  /** OTLP/HTTP traces endpoint; empty: no export (trace ids still go into audit records). */
  readonly otlpEndpoint: string;
  /** Key for hashing session ids in audit records; the same on every replica so hashes match. */
  readonly auditSalt: string;
  /** `id:base64key,…` sealing cached downstream credentials in Redis; empty: they are not shared. */
  readonly credentialCacheKeys: string;
}

interface Option {
  readonly flag: string;
  readonly env: string;
  readonly fallback: string;
  readonly help: string;
}

export const OPTIONS = {
  configFile: { flag: 'config', env: 'MCP_EXT_PROC_CONFIG', fallback: '', help: 'governance document (YAML); required' },
  listenAddress: { flag: 'listen-address', env: 'MCP_EXT_PROC_LISTEN_ADDRESS', fallback: '0.0.0.0', help: 'address the gRPC and admin servers bind' },
  grpcPort: { flag: 'grpc-port', env: 'MCP_EXT_PROC_GRPC_PORT', fallback: '50051', help: 'ext_proc gRPC port Envoy calls' },
  adminPort: { flag: 'admin-port', env: 'MCP_EXT_PROC_ADMIN_PORT', fallback: '9911', help: 'HTTP port for /healthz, /readyz, /metrics' },
  logLevel: { flag: 'log-level', env: 'MCP_EXT_PROC_LOG_LEVEL', fallback: 'info', help: 'trace, debug, info, warn, error' },
  shutdownGraceSeconds: { flag: 'shutdown-grace-seconds', env: 'MCP_EXT_PROC_SHUTDOWN_GRACE_SECONDS', fallback: '25', help: 'on SIGTERM, how long in-flight streams may finish' },
  grpcMaxMessageBytes: { flag: 'grpc-max-message-bytes', env: 'MCP_EXT_PROC_GRPC_MAX_MESSAGE_BYTES', fallback: String(64 * 1024 * 1024), help: 'largest message from Envoy (a buffered body)' },
  correlationTtlSeconds: { flag: 'correlation-ttl-seconds', env: 'MCP_EXT_PROC_CORRELATION_TTL_SECONDS', fallback: '3600', help: 'how long a request is remembered for a response on another stream' },
  sessionTtlSeconds: { flag: 'session-ttl-seconds', env: 'MCP_EXT_PROC_SESSION_TTL_SECONDS', fallback: '86400', help: 'how long a session stays bound to the user who created it' },
  redisUrl: { flag: 'redis-url', env: 'MCP_EXT_PROC_REDIS_URL', fallback: '', help: 'shared state: redis://, rediss://, redis-sentinel://h:p,h:p/name or redis-cluster://h:p,h:p (empty: in memory, one replica)' },
  redisCommandTimeoutMs: { flag: 'redis-command-timeout-ms', env: 'MCP_EXT_PROC_REDIS_COMMAND_TIMEOUT_MS', fallback: '300', help: 'a Redis command slower than this counts as Redis being down' },
  otlpEndpoint: { flag: 'otlp-endpoint', env: 'MCP_EXT_PROC_OTLP_ENDPOINT', fallback: '', help: 'export one span per MCP call to this OTLP/HTTP traces URL (empty: off)' },
  auditSalt: { flag: 'audit-salt', env: 'MCP_EXT_PROC_AUDIT_SALT', fallback: 'mcp-ext-proc', help: 'key for hashing session ids in audit records (set the same secret on every replica)' },
  credentialCacheKeys: {
    flag: 'credential-cache-keys',
    env: 'MCP_EXT_PROC_CREDENTIAL_CACHE_KEYS',
    fallback: '',
    help: 'id:base64key[,id:base64key…] (32-byte keys; the first seals) encrypting downstream credentials cached in Redis (empty: each replica keeps its own)',
  },
  configPollSeconds: { flag: 'config-poll-seconds', env: 'MCP_EXT_PROC_CONFIG_POLL_SECONDS', fallback: '2', help: 'how often the governance document is checked for changes (0: never)' },
} as const satisfies Record<keyof Settings, Option>;

const LOG_LEVELS = new Set(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']);

export class SettingsError extends Error {
  override readonly name = 'SettingsError';
}

export function parseSettings(argv: readonly string[], env: NodeJS.ProcessEnv): Settings {
  const { values } = parseArgs({
    args: [...argv],
    options: Object.fromEntries(Object.values(OPTIONS).map((o) => [o.flag, { type: 'string' as const }])),
    strict: true,
    allowPositionals: false,
  });
  const raw = (key: keyof Settings): string => {
    const o = OPTIONS[key];
    const v = values[o.flag];
    return typeof v === 'string' ? v : (env[o.env] ?? o.fallback);
  };
  const int = (key: keyof Settings, min: number, max: number): number => {
    const text = raw(key);
    const n = Number(text);
    if (!Number.isInteger(n) || n < min || n > max) {
      throw new SettingsError(`--${OPTIONS[key].flag} / ${OPTIONS[key].env}: "${text}" is not an integer from ${min} to ${max}`);
    }
    return n;
  };
  const configFile = raw('configFile');
  if (configFile === '') throw new SettingsError(`--config / ${OPTIONS.configFile.env}: a governance document is required`);
  const logLevel = raw('logLevel');
  if (!LOG_LEVELS.has(logLevel)) throw new SettingsError(`--log-level / ${OPTIONS.logLevel.env}: "${logLevel}" is not one of ${[...LOG_LEVELS].join(', ')}`);
  return {
    configFile,
    listenAddress: raw('listenAddress'),
    grpcPort: int('grpcPort', 0, 65535),
    adminPort: int('adminPort', 0, 65535),
    logLevel,
    shutdownGraceSeconds: int('shutdownGraceSeconds', 0, 3600),
    grpcMaxMessageBytes: int('grpcMaxMessageBytes', 1024 * 1024, 1024 * 1024 * 1024),
    correlationTtlSeconds: int('correlationTtlSeconds', 1, 7 * 24 * 3600),
    sessionTtlSeconds: int('sessionTtlSeconds', 60, 30 * 24 * 3600),
    redisUrl: raw('redisUrl'),
    redisCommandTimeoutMs: int('redisCommandTimeoutMs', 10, 10_000),
    configPollSeconds: int('configPollSeconds', 0, 3600),
    otlpEndpoint: raw('otlpEndpoint') || (env['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'] ?? ''),
    auditSalt: raw('auditSalt'),
    credentialCacheKeys: keyRing(raw('credentialCacheKeys')),
  };
}

function keyRing(text: string): string {
  if (text === '') return text;
  try {
    parseKeyRing(text);
  } catch (err) {
    throw new SettingsError(`--${OPTIONS.credentialCacheKeys.flag} / ${OPTIONS.credentialCacheKeys.env}: ${(err as Error).message}`);
  }
  return text;
}
