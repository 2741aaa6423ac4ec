import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ERRORS } from '../../ext-proc/src/errors.ts';

/** Rows of the README's error table: | `CODE` | HTTP | JSON-RPC | when | */
function readmeRows(): Map<string, { http: number; rpc: number }> {
  const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
  const rows = new Map<string, { http: number; rpc: number }>();
  for (const m of readme.matchAll(/^\| `(ERR_[A-Z_]+)` \| (\d{3}) \| (-\d+) \|/gm)) {
    rows.set(m[1] ?? '', { http: Number(m[2]), rpc: Number(m[3]) });
  }
  return rows;
}

describe('error catalog', () => {
  it('documents every code in the README with the status and JSON-RPC code the service sends', () => {
    const documented = readmeRows();
    const catalog = new Map(Object.entries(ERRORS).map(([code, spec]) => [code, { http: spec.httpStatus, rpc: spec.rpcCode }]));
    expect(documented).toEqual(catalog);
  });

  it('never answers our own failures with a client-fault code', () => {
    const clientCodes = new Set([-32700, -32600, -32601, -32602]);
    for (const [code, spec] of Object.entries(ERRORS)) {
      if (spec.fault === 'server') {
        expect(clientCodes.has(spec.rpcCode), code).toBe(false);
        expect(spec.httpStatus, code).toBeGreaterThanOrEqual(500);
      } else {
        expect(spec.httpStatus, code).toBeLessThan(500);
      }
    }
  });
});
