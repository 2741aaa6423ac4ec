// Starts the real processor in this test process (gRPC + admin on ephemeral ports) with a governance
// document written to a temporary file, and collects what it reports about each MCP message.

import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import type { McpMessageEvent, Observer } from '../../ext-proc/src/audit/events.ts';
import type { Settings } from '../../ext-proc/src/config/settings.ts';
import { startService, type Service, type ServiceOptions } from '../../ext-proc/src/main.ts';

export interface TestProcessor extends Service {
  /** The audit records written so far, parsed (the processor writes them to a file sink in a temp dir). */
  auditRecords(): Promise<Record<string, unknown>[]>;
  readonly events: McpMessageEvent[];
  readonly rejections: { code: string; server: string | undefined }[];
  readonly configFile: string;
}

export function writeGovernance(yamlText: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'mcp-ext-proc-'));
  const file = path.join(dir, 'governance.yaml');
  writeFileSync(file, yamlText);
  return file;
}

export async function startTestProcessor(
  governanceYaml: string,
  options: Omit<ServiceOptions, 'observer' | 'log'> & { settings?: Partial<Settings> } = {},
): Promise<TestProcessor> {
  // Unless the test chose its own audit settings, records go to a file the test can read back.
  const auditFile = path.join(mkdtempSync(path.join(tmpdir(), 'mcp-ext-proc-audit-')), 'audit.jsonl');
  const withAudit = /^audit:/m.test(governanceYaml) ? governanceYaml : `${governanceYaml}\naudit:\n  sink: { type: file, path: "${auditFile}" }\n`;
  const configFile = writeGovernance(withAudit);
  const events: McpMessageEvent[] = [];
  const rejections: { code: string; server: string | undefined }[] = [];
  const observer: Observer = {
    streamOpened: () => undefined,
    message: (e) => events.push(e),
    rejected: (code, server) => rejections.push({ code, server }),
    phase: () => undefined,
  };
  const settings: Settings = {
    configFile,
    listenAddress: '127.0.0.1',
    grpcPort: 0,
    adminPort: 0,
    logLevel: process.env['MCP_EXT_PROC_TEST_LOG'] ?? 'silent',
    shutdownGraceSeconds: 5,
    grpcMaxMessageBytes: 64 * 1024 * 1024,
    correlationTtlSeconds: 60,
    sessionTtlSeconds: 3600,
    redisUrl: '',
    redisCommandTimeoutMs: 500,
    configPollSeconds: 0,
    otlpEndpoint: '',
    auditSalt: 'test-salt',
    credentialCacheKeys: '',
    ...options.settings,
  };
  const { settings: _settings, ...rest } = options;
  const service = await startService(settings, { ...rest, observer, log: pino({ level: settings.logLevel }, pino.destination(2)) });
  const auditRecords = async (): Promise<Record<string, unknown>[]> => {
    await service.flushAudit();
    if (!existsSync(auditFile)) return [];
    return readFileSync(auditFile, 'utf8')
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  };
  return Object.assign(service, { events, rejections, configFile, auditRecords });
}
