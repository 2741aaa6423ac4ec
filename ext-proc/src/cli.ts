#!/usr/bin/env node
// mcp-ext-proc command line: `serve` (default) runs the processor; `check-config FILE` validates a
// governance document offline and exits non-zero with the problems it finds.

import { ConfigError, loadGovernance } from './config/document.ts';
import { OPTIONS, parseSettings, SettingsError } from './config/settings.ts';
import { startService } from './main.ts';

const USAGE = `usage:
  mcp-ext-proc [serve] --config FILE [options]   run the ext_proc service
  mcp-ext-proc check-config FILE                 validate a governance document

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

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  if (command === 'check-config') {
    checkConfig(rest);
    return;
  }
  if (command === 'help' || command === '--help' || command === '-h') {
    process.stdout.write(USAGE);
    return;
  }
  return serve(command === 'serve' ? rest : argv);
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (err instanceof ConfigError || err instanceof SettingsError || (err instanceof TypeError && 'code' in err)) {
    process.stderr.write(`mcp-ext-proc: ${err.message}\n`);
    process.exit(2);
  }
  process.stderr.write(`mcp-ext-proc: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
