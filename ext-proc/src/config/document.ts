// The governance document: parsed from YAML, validated against governance.schema.json, compiled once
// into the lookups the request path uses.

import { readFileSync } from 'node:fs';
import { Ajv2020 } from 'ajv/dist/2020.js';
import type { ErrorObject } from 'ajv';
import { parseDocument as parseYaml } from 'yaml';
import schema from './governance.schema.json' with { type: 'json' };

export interface ServerSpec {
  readonly name: string;
  readonly description?: string;
  readonly pathPrefixes?: readonly string[];
}

export interface GovernanceDocument {
  readonly apiVersion: 'mcp-ext-proc/v1';
  readonly servers: readonly ServerSpec[];
  readonly limits?: { readonly maxRequestBodyBytes?: number };
}

export interface CompiledDocument {
  readonly source: string;
  readonly servers: ReadonlyMap<string, ServerSpec>;
  readonly maxRequestBodyBytes: number;
  /** The server whose path prefix is the longest match for `path`, if any. */
  serverForPath(path: string): ServerSpec | undefined;
}

/** A document that cannot be used; the message names the file, the field and what is wrong. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

const ajv = new Ajv2020({ allErrors: true, useDefaults: true, strict: true });
const validate = ajv.compile<GovernanceDocument>(schema);

/** `/servers/0/pathPrefixes/1` → `servers[0].pathPrefixes[1]`. */
function fieldPath(pointer: string): string {
  const parts = pointer.split('/').slice(1);
  let out = '';
  for (const p of parts) out += /^\d+$/.test(p) ? `[${p}]` : out === '' ? p : `.${p}`;
  return out === '' ? '(document)' : out;
}

function describe(e: ErrorObject): string {
  const at = fieldPath(e.instancePath);
  if (e.keyword === 'additionalProperties') {
    const extra = (e.params as { additionalProperty: string }).additionalProperty;
    return `${at}: unknown field "${extra}"`;
  }
  if (e.keyword === 'required') {
    return `${at}: missing required field "${(e.params as { missingProperty: string }).missingProperty}"`;
  }
  if (e.keyword === 'const') return `${at}: must be ${JSON.stringify((e.params as { allowedValue: unknown }).allowedValue)}`;
  return `${at}: ${e.message ?? e.keyword}`;
}

export function parseGovernance(text: string, source: string): CompiledDocument {
  const doc = parseYaml(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(`${source}: YAML syntax error: ${doc.errors.map((e) => e.message).join('; ')}`);
  }
  const value: unknown = doc.toJS();
  if (!validate(value)) {
    const problems = (validate.errors ?? []).map(describe);
    throw new ConfigError(`${source}: ${[...new Set(problems)].join('; ')}`);
  }
  return compile(value, source);
}

export function loadGovernance(file: string): CompiledDocument {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`${file}: cannot read the governance document: ${(err as Error).message}`);
  }
  return parseGovernance(text, file);
}

function compile(doc: GovernanceDocument, source: string): CompiledDocument {
  const servers = new Map<string, ServerSpec>();
  const prefixes: { prefix: string; server: ServerSpec }[] = [];
  for (const [i, s] of doc.servers.entries()) {
    if (servers.has(s.name)) throw new ConfigError(`${source}: servers[${i}].name: "${s.name}" is listed twice`);
    servers.set(s.name, s);
    for (const prefix of s.pathPrefixes ?? []) {
      const other = prefixes.find((p) => p.prefix === prefix);
      if (other !== undefined) {
        throw new ConfigError(
          `${source}: servers[${i}].pathPrefixes: "${prefix}" is already a prefix of server "${other.server.name}"`,
        );
      }
      prefixes.push({ prefix, server: s });
    }
  }
  prefixes.sort((a, b) => b.prefix.length - a.prefix.length);
  return {
    source,
    servers,
    maxRequestBodyBytes: doc.limits?.maxRequestBodyBytes ?? 1048576,
    serverForPath(path) {
      return prefixes.find((p) => path.startsWith(p.prefix))?.server;
    },
  };
}
