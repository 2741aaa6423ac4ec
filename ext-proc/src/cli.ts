#!/usr/bin/env node
// mcp-ext-proc command line: `serve` (default) runs the processor; `check-config FILE` validates a
// governance document offline and exits non-zero with the problems it finds.

import { parseArgs } from 'node:util';
import { ConfigError, loadGovernance } from './config/document.ts';
import { ExplainInputError, toPolicyRequest } from './policy/explain-input.ts';
import { OPTIONS, parseSettings, SettingsError } from './config/settings.ts';
import { startService } from './main.ts';

const USAGE = `usage:
  mcp-ext-proc [serve] --config FILE [options]   run the ext_proc service
  mcp-ext-proc check-config FILE                 validate a governance document
  mcp-ext-proc explain --config FILE --server S --name TOOL --user JSON [--agent ID] [--method M] [--arguments JSON]
                                                 which rule decides a call (offline, from the document)
  mcp-ext-proc revoke --admin-url URL --token ADMIN_TOKEN (--token-id JTI | --subject SUB --issuer ISS | --agent ID)
                                                 revoke through a running service (every replica within a second)

options (each also from its environment variable):
${Object.values(OPTIONS)
  .map((o) => `  --${o.flag.padEnd(26)} ${o.env.padEnd(38)} ${o.help}${o.fallback === '' ? '' : ` (default ${o.fallback})`}`)
  .join('\n')}
`;

async function serve(argv: string[]): Promise<void> {
  const service = await startService(parseSettings(argv, process.env));
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`mcp-ext-proc: ${signal}, finishing in-flight streams\n`);
    service.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        process.stderr.write(`mcp-ext-proc: shutdown failed: ${String(err)}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

function checkConfig(files: string[]): void {
  if (files.length === 0) throw new SettingsError('check-config needs a file');
  for (const f of files) {
    const doc = loadGovernance(f);
    process.stdout.write(`${f}: ok (${doc.servers.size} server${doc.servers.size === 1 ? '' : 's'})\n`);
  }
}

function json(text: string | undefined, flag: string): unknown {
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new SettingsError(`${flag}: not valid JSON`);
  }
}

function explain(argv: string[]): void {
  const { values } = parseArgs({
    args: argv,
    options: {
      config: { type: 'string' },
      server: { type: 'string' },
      method: { type: 'string' },
      name: { type: 'string' },
      user: { type: 'string' },
      agent: { type: 'string' },
      arguments: { type: 'string' },
    },
    strict: true,
  });
  if (values.config === undefined) throw new SettingsError('explain: --config is required');
  const doc = loadGovernance(values.config);
  if (doc.policy === undefined) throw new SettingsError(`explain: ${values.config} has no policy section (every authenticated caller may use every server)`);
  const question = {
    server: values.server,
    method: values.method,
    name: values.name,
    user: json(values.user, '--user') ?? {},
    agent: { id: values.agent ?? '', clientId: values.agent },
    arguments: json(values.arguments, '--arguments'),
  };
  const answer = doc.policy.explain(toPolicyRequest(question));
  process.stdout.write(`${JSON.stringify(answer, null, 2)}\n`);
  process.exitCode = answer.decision.effect === 'allow' ? 0 : 3;
}

async function revoke(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      'admin-url': { type: 'string' },
      token: { type: 'string' },
      'token-id': { type: 'string' },
      subject: { type: 'string' },
      issuer: { type: 'string' },
      agent: { type: 'string' },
    },
    strict: true,
  });
  const adminUrl = values['admin-url'] ?? process.env['MCP_EXT_PROC_ADMIN_URL'];
  const token = values.token ?? process.env['MCP_EXT_PROC_ADMIN_TOKEN'];
  if (adminUrl === undefined || token === undefined) throw new SettingsError('revoke: --admin-url and --token (or MCP_EXT_PROC_ADMIN_URL / MCP_EXT_PROC_ADMIN_TOKEN) are required');
  const body =
    values['token-id'] !== undefined
      ? { kind: 'token', tokenId: values['token-id'] }
      : values.agent !== undefined
        ? { kind: 'agent', agentId: values.agent }
        : { kind: 'subject', subject: values.subject, issuer: values.issuer };
  const res = await fetch(new URL('/revocations', adminUrl), {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new SettingsError(`revoke: the service answered ${res.status}: ${text.trim()}`);
  process.stdout.write(text);
}

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  if (command === 'check-config') {
    checkConfig(rest);
    return;
  }
  if (command === 'explain') {
    explain(rest);
    return;
  }
  if (command === 'revoke') return revoke(rest);
  if (command === 'help' || command === '--help' || command === '-h') {
    process.stdout.write(USAGE);
    return;
  }
  return serve(command === 'serve' ? rest : argv);
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (err instanceof ConfigError || err instanceof SettingsError || err instanceof ExplainInputError || (err instanceof TypeError && 'code' in err)) {
    process.stderr.write(`mcp-ext-proc: ${err.message}\n`);
    process.exit(2);
  }
  process.stderr.write(`mcp-ext-proc: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
