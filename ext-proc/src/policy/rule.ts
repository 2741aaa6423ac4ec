// A compiled rule and its static match: the fields that need no expression (server, method, name,
// user, agent) checked in order, naming the first that fails.

import type { Caller } from '../identity/principal.ts';
import type { Condition } from './cel.ts';
import type { GlobSet } from './glob.ts';
import type { GovernedMethod, PolicyRequest } from './types.ts';

export const GOVERNED_METHODS: readonly GovernedMethod[] = ['tools/call', 'prompts/get', 'resources/read', 'completion/complete'];

export type RuleEffect = 'allow' | 'deny' | 'require';
export type RuleSubject = 'user' | 'agent';

export interface UserMatch {
  readonly subjects: GlobSet | undefined;
  readonly emails: GlobSet | undefined;
  readonly groups: GlobSet | undefined;
  /** Matched against the issuer's configured name and its `iss` URL. */
  readonly issuers: GlobSet | undefined;
}

export interface CompiledRule {
  readonly id: string;
  readonly effect: RuleEffect;
  readonly subject: RuleSubject;
  readonly servers: ReadonlySet<string> | undefined;
  readonly methods: ReadonlySet<GovernedMethod> | undefined;
  readonly names: GlobSet | undefined;
  readonly users: UserMatch | undefined;
  readonly agents: GlobSet | undefined;
  readonly condition: Condition | undefined;
  /** For `require` rules: every scope the token must carry. Empty otherwise. */
  readonly scopes: readonly string[];
}

/** The first `match` field that does not hold for this request, or undefined when all hold. */
export function unmatchedField(rule: CompiledRule, request: PolicyRequest): string | undefined {
  if (rule.servers !== undefined && !rule.servers.has(request.server)) return 'match.servers';
  if (rule.methods !== undefined && !rule.methods.has(request.method)) return 'match.methods';
  if (rule.names !== undefined && !rule.names.test(request.name)) return 'match.names';
  if (rule.users !== undefined) {
    const field = unmatchedUserField(rule.users, request.caller);
    if (field !== undefined) return `match.users.${field}`;
  }
  if (rule.agents !== undefined && !rule.agents.test(request.caller.agent.id)) return 'match.agents';
  return undefined;
}

function unmatchedUserField(m: UserMatch, caller: Caller): string | undefined {
  const u = caller.user;
  if (m.subjects !== undefined && !m.subjects.test(u.subject)) return 'subjects';
  if (m.emails !== undefined && (u.email === undefined || !m.emails.test(u.email))) return 'emails';
  if (m.groups !== undefined && !u.groups.some((g) => m.groups?.test(g) === true)) return 'groups';
  if (m.issuers !== undefined && !m.issuers.test(u.issuerName) && !m.issuers.test(u.issuer)) return 'issuers';
  return undefined;
}
