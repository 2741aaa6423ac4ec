// The policy section of the governance document → a CompiledPolicy. Everything that can be checked
// without a request is checked here (shape, unique ids, known servers, CEL syntax and names), so a bad
// document is refused at load with a message naming the rule and the field, and evaluation parses nothing.

import { Ajv2020 } from 'ajv/dist/2020.js';
import type { ErrorObject } from 'ajv';
import { compileCondition, ConditionError, type Condition } from './cel.ts';
import { createPolicy, type EvaluationLimits } from './decide.ts';
import { compileGlobSet, type GlobSet } from './glob.ts';
import type { CompiledRule, UserMatch } from './rule.ts';
import type { CompiledPolicy, GovernedMethod } from './types.ts';
import schema from './policy.schema.json' with { type: 'json' };

/** The `policy` section, as policy.schema.json describes it. */
export interface PolicySection {
  readonly agentDefault?: 'allow' | 'deny';
  readonly rules: readonly PolicyRuleSpec[];
}

export interface PolicyRuleSpec {
  readonly id: string;
  readonly description?: string;
  readonly effect: 'allow' | 'deny' | 'require';
  readonly subject?: 'user' | 'agent';
  readonly match?: {
    readonly servers?: readonly string[];
    readonly methods?: readonly GovernedMethod[];
    readonly names?: readonly string[];
    readonly users?: {
      readonly subjects?: readonly string[];
      readonly emails?: readonly string[];
      readonly groups?: readonly string[];
      readonly issuers?: readonly string[];
    };
    readonly agents?: readonly string[];
  };
  readonly when?: string;
  readonly scopes?: readonly string[];
}

/** Bounds on the work one decision may do, whatever the request carries. */
export type PolicyLimits = EvaluationLimits;

export const DEFAULT_POLICY_LIMITS: PolicyLimits = {
  maxValueDepth: 32,
  maxValueCount: 10_000,
  maxConditionSteps: 10_000,
};

export interface PolicyOptions {
  /** The server names the document declares; `match.servers` may name only these. */
  readonly servers: ReadonlySet<string>;
  readonly limits?: Partial<PolicyLimits>;
}

/** A policy section that cannot be used. Each problem names the rule (index and id) and the field. */
export class PolicyError extends Error {
  override readonly name = 'PolicyError';
  readonly problems: readonly string[];

  constructor(problems: readonly string[]) {
    super(problems.join('; '));
    this.problems = problems;
  }
}

const ajv = new Ajv2020({ allErrors: true, strict: true });
const validate = ajv.compile<PolicySection>(schema);

/**
 * Compiles the `policy` section (as parsed from YAML). Validates it against policy.schema.json, then
 * checks what the schema cannot: unique ids, declared servers, `scopes` exactly on require rules,
 * `match.users` only on user rules, and every `when` condition. Throws PolicyError listing every problem.
 */
export function compilePolicy(section: unknown, options: PolicyOptions): CompiledPolicy {
  const limits = checkLimits(options.limits);
  if (!validate(section)) {
    throw new PolicyError(unique((validate.errors ?? []).map((e) => describeSchemaError(e, section))));
  }

  const problems: string[] = [];
  const firstUse = new Map<string, number>();
  const rules: CompiledRule[] = [];
  for (const [index, spec] of section.rules.entries()) {
    const at = (field: string): string => `${rulePath(index, spec.id)}.${field}`;
    const earlier = firstUse.get(spec.id);
    if (earlier !== undefined) problems.push(`${at('id')}: duplicate id; policy.rules[${earlier}] already uses it`);
    else firstUse.set(spec.id, index);
    const rule = compileRule(spec, options.servers, (field, message) => problems.push(`${at(field)}: ${message}`));
    if (rule !== undefined) rules.push(rule);
  }
  if (problems.length > 0) throw new PolicyError(problems);
  return createPolicy(rules, section.agentDefault ?? 'allow', limits);
}

function compileRule(
  spec: PolicyRuleSpec,
  servers: ReadonlySet<string>,
  problem: (field: string, message: string) => void,
): CompiledRule | undefined {
  const found: [field: string, message: string][] = [];
  const fail = (field: string, message: string): void => {
    found.push([field, message]);
  };
  const subject = spec.subject ?? 'user';
  const m = spec.match ?? {};

  for (const [i, server] of (m.servers ?? []).entries()) {
    if (!servers.has(server)) {
      const known = [...servers].sort().join(', ');
      fail(`match.servers[${i}]`, `unknown server "${server}"; the document declares ${known === '' ? 'no servers' : known}`);
    }
  }
  if (m.users !== undefined && subject === 'agent') {
    fail('match.users', 'only user rules match users; an agent rule says which agents it covers with match.agents');
  }
  if (spec.effect === 'require' && spec.scopes === undefined) {
    fail('scopes', 'a require rule must list the scopes it requires');
  }
  if (spec.effect !== 'require' && spec.scopes !== undefined) {
    fail('scopes', `only require rules take scopes (this rule's effect is ${spec.effect})`);
  }
  let condition: Condition | undefined;
  if (spec.when !== undefined) {
    try {
      condition = compileCondition(spec.when);
    } catch (err) {
      if (!(err instanceof ConditionError)) throw err;
      fail('when', err.message);
    }
  }
  if (found.length > 0) {
    for (const [field, message] of found) problem(field, message);
    return undefined;
  }

  const globs = (patterns: readonly string[] | undefined, ignoreCase = false): GlobSet | undefined =>
    patterns === undefined ? undefined : compileGlobSet(patterns, { ignoreCase });
  const users: UserMatch | undefined =
    m.users === undefined
      ? undefined
      : {
          subjects: globs(m.users.subjects),
          // E-mail addresses are compared case-insensitively: IdPs differ in how they case them.
          emails: globs(m.users.emails, true),
          groups: globs(m.users.groups),
          issuers: globs(m.users.issuers),
        };
  return {
    id: spec.id,
    effect: spec.effect,
    subject,
    servers: m.servers === undefined ? undefined : new Set(m.servers),
    methods: m.methods === undefined ? undefined : new Set(m.methods),
    names: globs(m.names),
    users,
    agents: globs(m.agents),
    condition,
    scopes: spec.scopes ?? [],
  };
}

function checkLimits(given: Partial<PolicyLimits> | undefined): PolicyLimits {
  const limits = { ...DEFAULT_POLICY_LIMITS, ...given };
  for (const [key, value] of Object.entries(limits)) {
    if (!Number.isSafeInteger(value) || value < 1) {
      throw new PolicyError([`options.limits.${key}: must be a positive integer, got ${String(value)}`]);
    }
  }
  return limits;
}

function rulePath(index: number, id: unknown): string {
  return typeof id === 'string' ? `policy.rules[${index}] (id ${JSON.stringify(id)})` : `policy.rules[${index}]`;
}

/** An Ajv error as `policy.rules[2] (id "x").match.servers: must …`. */
function describeSchemaError(e: ErrorObject, section: unknown): string {
  const parts = e.instancePath
    .split('/')
    .slice(1)
    .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
  let at = 'policy';
  let rest = parts;
  if (parts[0] === 'rules' && parts[1] !== undefined && /^\d+$/.test(parts[1])) {
    const index = Number(parts[1]);
    const rules = isRecord(section) && Array.isArray(section['rules']) ? (section['rules'] as unknown[]) : [];
    const rule = rules[index];
    at = rulePath(index, isRecord(rule) ? rule['id'] : undefined);
    rest = parts.slice(2);
  }
  for (const p of rest) at += /^\d+$/.test(p) ? `[${p}]` : `.${p}`;

  switch (e.keyword) {
    case 'additionalProperties':
      return `${at}: unknown field "${(e.params as { additionalProperty: string }).additionalProperty}"`;
    case 'required':
      return `${at}: missing required field "${(e.params as { missingProperty: string }).missingProperty}"`;
    case 'enum':
      return `${at}: must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(', ')}`;
    case 'pattern':
      return at.endsWith('.id')
        ? `${at}: must be lowercase letters, digits, ".", "_" or "-", starting with a letter or digit`
        : `${at}: must match ${(e.params as { pattern: string }).pattern}`;
    default:
      return `${at}: ${e.message ?? e.keyword}`;
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function unique(items: readonly string[]): string[] {
  return [...new Set(items)];
}
