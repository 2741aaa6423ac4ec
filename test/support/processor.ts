// Starts the real processor in this test process (gRPC + admin on ephemeral ports) with a governance
// document written to a temporary file, and collects what it reports about each MCP message.

import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import type { McpMessageEvent, Observer } from '../../ext-proc/src/audit/events.ts';
import type { Settings } from '../../ext-proc/src/config/settings.ts';
import { startService, type Service, type ServiceOptions } from '../../ext-proc/src/main.ts';

export interface TestProcessor extends Service {
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
  const configFile = writeGovernance(governanceYaml);
  const events: McpMessageEvent[] = [];
  const rejections: { code: string; server: string | undefined }[] = [];
  const observer: Observer = {
    streamOpened: () => undefined,
    message: (e) => events.push(e),
    rejected: (code, server) => rejections.push({ code, server }),
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
    ...options.settings,
  };
  const { settings: _settings, ...rest } = options;
  const service = await startService(settings, { ...rest, observer, log: pino({ level: settings.logLevel }, pino.destination(2)) });
  return Object.assign(service, { events, rejections, configFile });
}
