// The governance document: parsed from YAML, validated against governance.schema.json, compiled once
// into the lookups the request path uses.

import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Ajv2020 } from 'ajv/dist/2020.js';
import type { ErrorObject } from 'ajv';
import addFormats from 'ajv-formats';
import { parseDocument as parseYaml } from 'yaml';
import { DEFAULT_CLAIMS, TokenVerifier, type IssuerSpec } from '../identity/verifier.ts';
import { compilePolicy } from '../policy/compile.ts';
import policySchema from '../policy/policy.schema.json' with { type: 'json' };
import auditSchema from '../audit/audit.schema.json' with { type: 'json' };
import type { AuditFormat, AuditSection, SinkSection } from '../audit/record.ts';
import { compileRedaction, type Redactor } from '../audit/redact.ts';
import { compileCredential, type CredentialInput, type CredentialPlan } from '../credentials/plan.ts';
import type { CompiledPolicy } from '../policy/types.ts';
import schema from './governance.schema.json' with { type: 'json' };

interface ServerInput {
  readonly name: string;
  readonly description?: string;
  readonly pathPrefixes?: readonly string[];
  readonly resource?: string;
  readonly authentication?: 'required' | 'none';
  readonly scopes?: readonly string[];
  readonly authorizationServers?: readonly string[];
  readonly credential?: CredentialInput;
}

interface IssuerInput {
  readonly name: string;
  readonly issuer: string;
  readonly jwksUri?: string;
  readonly algorithms?: readonly string[];
  readonly claims?: { subject?: string; email?: string; groups?: string; scopes?: string; agent?: readonly string[] };
}

export interface GovernanceDocument {
  readonly apiVersion: 'mcp-ext-proc/v1';
  readonly servers: readonly ServerInput[];
  readonly limits?: { readonly maxRequestBodyBytes?: number };
  readonly identity?: {
    readonly issuers: readonly IssuerInput[];
    readonly clockSkewSeconds?: number;
    readonly failureMode?: 'closed' | 'open';
    readonly adminGroups?: readonly string[];
    readonly adminAudience?: string;
  };
  readonly policy?: unknown;
  readonly audit?: AuditSection;
}

export interface AuditSettingsCompiled {
  readonly format: AuditFormat;
  readonly sink: SinkSection;
  readonly includeEmail: boolean;
  readonly includeGroups: boolean;
  readonly redactor: Redactor;
}

export interface ServerSpec {
  readonly name: string;
  readonly description: string | undefined;
  readonly pathPrefixes: readonly string[];
  /** The audience its tokens carry; set whenever authentication is required. */
  readonly resource: string | undefined;
  readonly authenticate: boolean;
  readonly scopes: readonly string[];
  /** Issuer URLs (for the Protected Resource Metadata). */
  readonly authorizationServers: readonly string[];
  /** What the server receives in place of the caller's token. */
  readonly credential: CredentialPlan;
}

export interface IdentitySettings {
  readonly issuers: readonly IssuerSpec[];
  readonly clockSkewSeconds: number;
  readonly failureMode: 'closed' | 'open';
  readonly adminGroups: readonly string[];
  readonly adminAudience: string | undefined;
}

export interface CompiledDocument {
  readonly source: string;
  /** SHA-256 of the text, so that a reload that changes nothing is skipped. */
  readonly digest: string;
  readonly servers: ReadonlyMap<string, ServerSpec>;
  readonly maxRequestBodyBytes: number;
  readonly identity: IdentitySettings | undefined;
  /** Undefined when the document has no policy: every authenticated caller may use every server. */
  readonly policy: CompiledPolicy | undefined;
  readonly audit: AuditSettingsCompiled;
  /** The server whose path prefix is the longest match for `path`, if any. */
  serverForPath(path: string): ServerSpec | undefined;
  /** The server whose resource URL has this path (for /.well-known/oauth-protected-resource/<path>). */
  serverForResourcePath(path: string): ServerSpec | undefined;
}

/** A document that cannot be used; the message names the file, the field and what is wrong. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

const ajv = new Ajv2020({ allErrors: true, useDefaults: true, strict: true, discriminator: true });
addFormats.default(ajv);
ajv.addSchema(policySchema);
ajv.addSchema(auditSchema);
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
  return compile(value, source, createHash('sha256').update(text).digest('hex'));
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

function compileIdentity(doc: GovernanceDocument): IdentitySettings | undefined {
  const id = doc.identity;
  if (id === undefined) return undefined;
  const names = new Set<string>();
  const issuers = id.issuers.map((i, n): IssuerSpec => {
    if (names.has(i.name)) throw new Error(`identity.issuers[${n}].name: "${i.name}" is listed twice`);
    names.add(i.name);
    return {
      name: i.name,
      issuer: i.issuer,
      ...(i.jwksUri === undefined ? {} : { jwksUri: i.jwksUri }),
      algorithms: i.algorithms ?? ['RS256', 'ES256'],
      claims: { ...DEFAULT_CLAIMS, ...i.claims },
    };
  });
  return {
    issuers,
    clockSkewSeconds: id.clockSkewSeconds ?? 60,
    failureMode: id.failureMode ?? 'closed',
    adminGroups: id.adminGroups ?? [],
    adminAudience: id.adminAudience,
  };
}

function compileServer(s: ServerInput, i: number, identity: IdentitySettings | undefined): ServerSpec {
  const authenticate = identity !== undefined && s.authentication !== 'none';
  if (s.authentication === 'required' && identity === undefined) {
    throw new Error(`servers[${i}].authentication: "required" needs an identity section`);
  }
  if (authenticate && s.resource === undefined) {
    throw new Error(`servers[${i}].resource: required when the server requires authentication (it is the audience of its tokens)`);
  }
  const byName = new Map(identity?.issuers.map((x) => [x.name, x.issuer]));
  const authorizationServers = (s.authorizationServers ?? identity?.issuers.map((x) => x.name) ?? []).map((name, j) => {
    const url = byName.get(name);
    if (url === undefined) throw new Error(`servers[${i}].authorizationServers[${j}]: no issuer named "${name}" in identity.issuers`);
    return url;
  });
  return {
    name: s.name,
    description: s.description,
    pathPrefixes: s.pathPrefixes ?? [],
    resource: s.resource,
    authenticate,
    scopes: s.scopes ?? [],
    authorizationServers,
    credential: compileCredential(s.credential, `servers[${i}].credential`, identity?.issuers ?? [], authenticate),
  };
}

function compile(doc: GovernanceDocument, source: string, digest: string): CompiledDocument {
  const servers = new Map<string, ServerSpec>();
  const prefixes: { prefix: string; server: ServerSpec }[] = [];
  const resources = new Map<string, ServerSpec>();
  let identity: IdentitySettings | undefined;
  let policy: CompiledPolicy | undefined;
  let redactor: Redactor;
  try {
    redactor = compileRedaction(doc.audit?.arguments);
    identity = compileIdentity(doc);
    for (const [i, input] of doc.servers.entries()) {
      if (servers.has(input.name)) throw new Error(`servers[${i}].name: "${input.name}" is listed twice`);
      const s = compileServer(input, i, identity);
      servers.set(s.name, s);
      if (s.resource !== undefined) resources.set(new URL(s.resource).pathname, s);
      for (const prefix of s.pathPrefixes) {
        const other = prefixes.find((p) => p.prefix === prefix);
        if (other !== undefined) throw new Error(`servers[${i}].pathPrefixes: "${prefix}" is already a prefix of server "${other.server.name}"`);
        prefixes.push({ prefix, server: s });
      }
    }
    // The verifier refuses what it cannot honour (HS* algorithms, bad URLs) when it is built; build one
    // here too so that a bad issuer fails at load, naming the issuer.
    if (identity !== undefined) new TokenVerifier(identity.issuers, { clockSkewSeconds: identity.clockSkewSeconds });
    if (doc.policy !== undefined) policy = compilePolicy(doc.policy, { servers: new Set(servers.keys()) });
  } catch (err) {
    // Cross-field problems, policy problems (PolicyError) and issuer problems (RangeError) all name
    // their field; they reach the operator with the file name in front.
    throw new ConfigError(`${source}: ${err instanceof Error ? err.message : String(err)}`);
  }
  prefixes.sort((a, b) => b.prefix.length - a.prefix.length);
  return {
    source,
    digest,
    servers,
    maxRequestBodyBytes: doc.limits?.maxRequestBodyBytes ?? 1048576,
    identity,
    policy,
    audit: {
      format: doc.audit?.format ?? 'native',
      sink: doc.audit?.sink ?? { type: 'stdout' },
      includeEmail: doc.audit?.includeEmail ?? true,
      includeGroups: doc.audit?.includeGroups ?? true,
      redactor,
    },
    serverForPath(path) {
      return prefixes.find((p) => path.startsWith(p.prefix))?.server;
    },
    serverForResourcePath(path) {
      return resources.get(path);
    },
  };
}
