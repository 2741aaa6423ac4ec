// Hot reload of the governance document: the file is read again every few seconds (robust to editors
// that replace files and to Kubernetes ConfigMap symlink swaps), compiled, and swapped in atomically.
// A document that does not compile is refused with its problems logged; the one in force stays.

import { readFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { parseGovernance, type CompiledDocument } from './document.ts';

export interface DocumentWatcher {
  stop(): void;
}

export function watchGovernance(
  file: string,
  current: () => CompiledDocument,
  swap: (next: CompiledDocument) => void,
  options: { pollSeconds: number; log: Logger; onResult?: (result: 'applied' | 'rejected') => void },
): DocumentWatcher {
  if (options.pollSeconds === 0) return { stop: () => undefined };
  let lastRejected = '';
  let busy = false;
  const check = async (): Promise<void> => {
    if (busy) return;
    busy = true;
    try {
      const text = await readFile(file, 'utf8');
      const digest = createHash('sha256').update(text).digest('hex');
      // Unchanged, or the same broken text already reported: nothing to do.
      if (digest === current().digest || digest === lastRejected) return;
      try {
        swap(parseGovernance(text, file));
        lastRejected = '';
        options.log.info({ config: file }, 'governance document reloaded');
        options.onResult?.('applied');
      } catch (err) {
        lastRejected = digest;
        options.log.error({ config: file, problem: (err as Error).message }, 'governance document rejected; the previous one stays in force');
        options.onResult?.('rejected');
      }
    } catch (err) {
      options.log.warn({ config: file, err: (err as Error).message }, 'governance document could not be read; the previous one stays in force');
    } finally {
      busy = false;
    }
  };
  const timer = setInterval(() => void check(), options.pollSeconds * 1000);
  timer.unref();
  return { stop: () => clearInterval(timer) };
}
