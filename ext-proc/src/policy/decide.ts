// The one authorization predicate. Listing (arguments unknown) and calling go through the same code,
// so a client is shown a tool exactly when some call to it could be allowed.
//
// A decision is the user side intersected with the agent side ("an agent never exceeds its user").
// Each side is judged by the same precedence (see judgeSide), over its own rules in document order.

import type { CelInput } from '@bufbuild/cel';
import type { ConditionBindings, ConditionResult, ConditionVariable, StepBudget } from './cel.ts';
import { unmatchedField, type CompiledRule } from './rule.ts';
import type { CompiledPolicy, Decision, Explanation, PolicyRequest, RuleTrace } from './types.ts';
import { toCelMap, ValueLimitError, type ValueLimits } from './values.ts';

export interface EvaluationLimits extends ValueLimits {
  /** Comprehension steps allowed in one decision, across all the conditions it evaluates. */
  readonly maxConditionSteps: number;
}

type Side = 'user' | 'agent';

/** How one side came out. */
type Verdict =
  | { readonly kind: 'deny'; readonly rule: CompiledRule; readonly failed: boolean }
  | { readonly kind: 'unmet'; readonly rule: CompiledRule; readonly missing: readonly string[] }
  | { readonly kind: 'allow'; readonly rule: CompiledRule; readonly assumed: boolean }
  | { readonly kind: 'default' };

export function createPolicy(
  rules: readonly CompiledRule[],
  agentDefault: 'allow' | 'deny',
  limits: EvaluationLimits,
): CompiledPolicy {
  const userRules = rules.filter((r) => r.subject === 'user');
  const agentRules = rules.filter((r) => r.subject === 'agent');

  const run = (request: PolicyRequest, traces: { user: RuleTrace[]; agent: RuleTrace[] } | undefined): Decision => {
    const bindings = lazyBindings(request, limits);
    const budget: StepBudget = { left: limits.maxConditionSteps };
    const user = judgeSide(userRules, request, bindings, budget, traces?.user);
    if (user.kind !== 'allow') {
      // The agent side is consulted only when the user side allows; explain() still traces it.
      if (traces !== undefined) judgeSide(agentRules, request, bindings, budget, traces.agent);
      return sideDecision('user', user, request, agentDefault);
    }
    // The user side allows: the agent side can only take away.
    const agent = judgeSide(agentRules, request, bindings, budget, traces?.agent);
    if (agent.kind === 'deny' || agent.kind === 'unmet' || (agent.kind === 'default' && agentDefault === 'deny')) {
      return sideDecision('agent', agent, request, agentDefault);
    }
    let reason = `rule "${user.rule.id}" allows ${action(request)}${user.assumed ? ' for some arguments (its condition reads them)' : ''}`;
    if (agent.kind === 'allow') {
      reason += `, and rule "${agent.rule.id}" allows ${agentName(request)}${agent.assumed ? ' for some arguments' : ''}`;
    }
    return { effect: 'allow', ruleId: user.rule.id, reason };
  };

  return {
    decide: (request) => run(request, undefined),
    explain(request): Explanation {
      const traces = { user: [] as RuleTrace[], agent: [] as RuleTrace[] };
      const decision = run(request, traces);
      return { decision, user: traces.user, agent: traces.agent };
    },
  };
}

/**
 * One side's verdict. Precedence, written once:
 *   explicit deny or failed condition  >  unmet requirement  >  allow  >  default
 * and within each class the first rule in document order decides.
 * Without a trace to fill, judging stops at the first deny: nothing later can change the outcome.
 */
function judgeSide(
  rules: readonly CompiledRule[],
  request: PolicyRequest,
  bindingsFor: (vars: ReadonlySet<ConditionVariable>) => ConditionBindings | string,
  budget: StepBudget,
  trace: RuleTrace[] | undefined,
): Verdict {
  let deny: Verdict | undefined;
  let unmet: CompiledRule | undefined;
  const missing = new Set<string>();
  let allow: Verdict | undefined;
  const granted = new Set(request.caller.user.scopes);
  const note = (rule: CompiledRule, outcome: string): void => {
    trace?.push({ ruleId: rule.id, outcome });
  };

  for (const rule of rules) {
    const field = unmatchedField(rule, request);
    if (field !== undefined) {
      note(rule, `not matched: ${field}`);
      continue;
    }

    let assumed = false;
    const condition = rule.condition;
    if (condition !== undefined) {
      if (request.arguments === undefined && condition.variables.has('arguments')) {
        // Listing: the item is shown if some arguments could be allowed. So a condition on the
        // arguments could hold for an allow, and does not hold for a deny or a requirement.
        if (rule.effect !== 'allow') {
          note(rule, 'condition assumed false (arguments unknown)');
          continue;
        }
        assumed = true;
      } else {
        // A condition on who is calling only (user, agent) has one answer per caller: a list of a
        // hundred items, and every later request with the same token, evaluates it once.
        const perCaller = onlyCaller(condition.variables);
        const memo = perCaller ? callerValues.get(request.caller)?.conditions : undefined;
        let result = memo?.get(rule);
        if (result === undefined) {
          const bindings = bindingsFor(condition.variables);
          result = typeof bindings === 'string' ? { ok: false as const, message: bindings } : condition.evaluate(bindings, budget);
          memo?.set(rule, result);
        }
        if (!result.ok) {
          // Fail closed: a condition that cannot be evaluated denies, whatever the rule's effect.
          note(rule, `condition error: ${result.message}`);
          deny ??= { kind: 'deny', rule, failed: true };
          if (trace === undefined) break;
          continue;
        }
        if (!result.value) {
          note(rule, 'condition false');
          continue;
        }
      }
    }

    switch (rule.effect) {
      case 'deny':
        note(rule, 'matched');
        deny ??= { kind: 'deny', rule, failed: false };
        break;
      case 'require': {
        const lacking = rule.scopes.filter((s) => !granted.has(s));
        if (lacking.length === 0) {
          note(rule, 'matched: requirement met');
        } else {
          note(rule, `matched: missing scopes ${lacking.join(', ')}`);
          unmet ??= rule;
          for (const s of lacking) missing.add(s);
        }
        break;
      }
      case 'allow':
        note(rule, assumed ? 'condition assumed to hold (arguments unknown)' : 'matched');
        allow ??= { kind: 'allow', rule, assumed };
        break;
    }
    if (deny !== undefined && trace === undefined) break;
  }

  // 1. An explicit deny, or a condition that failed (fail closed).
  if (deny !== undefined) return deny;
  // 2. An unmet requirement: the request is denied, and more scope would fix it. Every scope some
  //    matching requirement lacks is reported, so one step-up suffices.
  if (unmet !== undefined) return { kind: 'unmet', rule: unmet, missing: [...missing] };
  // 3. An allow.
  if (allow !== undefined) return allow;
  // 4. The side's default: deny for users, agentDefault for agents (applied by the caller).
  return { kind: 'default' };
}

function sideDecision(side: Side, v: Exclude<Verdict, { kind: 'allow' }>, request: PolicyRequest, agentDefault: 'allow' | 'deny'): Decision {
  const who = side === 'agent' ? ` for ${agentName(request)}` : '';
  switch (v.kind) {
    case 'deny':
      return {
        effect: 'deny',
        ruleId: v.rule.id,
        reason: v.failed
          ? `the condition of rule "${v.rule.id}" could not be evaluated, so ${action(request)}${who} is denied (fail closed)`
          : `rule "${v.rule.id}" denies ${action(request)}${who}`,
      };
    case 'unmet':
      return {
        effect: 'deny',
        ruleId: v.rule.id,
        reason: `rule "${v.rule.id}" requires the scope${v.missing.length === 1 ? '' : 's'} ${v.missing.map((s) => `"${s}"`).join(', ')} for ${action(request)}${who}`,
        requiredScopes: v.missing,
      };
    case 'default':
      return side === 'user'
        ? { effect: 'deny', ruleId: undefined, reason: `no rule allows ${action(request)}` }
        : { effect: agentDefault, ruleId: undefined, reason: `no rule allows ${action(request)}${who} (agentDefault is deny)` };
  }
}

const VERBS: Readonly<Record<PolicyRequest['method'], string>> = {
  'tools/call': 'calling tool',
  'prompts/get': 'getting prompt',
  'resources/read': 'reading resource',
  'completion/complete': 'completing arguments of',
};

/** Names come from the client: quoted (control characters escaped) and cut short. Never arguments. */
function quote(text: string): string {
  return JSON.stringify(text.length > 120 ? `${text.slice(0, 120)}…` : text);
}

function action(r: PolicyRequest): string {
  return `${VERBS[r.method]} ${quote(r.name)} on server ${quote(r.server)}`;
}

function agentName(r: PolicyRequest): string {
  return r.caller.agent.id === '' ? 'an unidentified agent' : `agent ${quote(r.caller.agent.id)}`;
}

/**
 * The CEL variables for one request, built on first use. `user` and `arguments` are converted only
 * when a condition reads them; a conversion that exceeds the limits is returned as an error message
 * (the condition then fails and denies), never thrown.
 *
 * Missing optional strings are bound as "" (`user.email`, `agent.clientId`, `agent.spiffeId`), so
 * `user.email.endsWith("@example.com")` is simply false for a token without an e-mail.
 */
/**
 * A caller's `user` and `agent` values, converted once per Caller object. A steady client's Caller
 * comes from the verified-token cache, so a list of a hundred tools — a hundred decisions — and every
 * later request with the same token convert its claims once, not once per decision.
 */
const callerValues = new WeakMap<
  PolicyRequest['caller'],
  { user?: Map<string, CelInput> | string; agent?: Map<string, CelInput>; conditions: Map<CompiledRule, ConditionResult> }
>();

function onlyCaller(vars: ReadonlySet<ConditionVariable>): boolean {
  for (const v of vars) if (v !== 'user' && v !== 'agent') return false;
  return true;
}

function lazyBindings(request: PolicyRequest, limits: ValueLimits): (vars: ReadonlySet<ConditionVariable>) => ConditionBindings | string {
  const empty = new Map<string, CelInput>();
  let cached = callerValues.get(request.caller);
  if (cached === undefined) {
    cached = { conditions: new Map() };
    callerValues.set(request.caller, cached);
  }
  const values = cached;
  let user: Map<string, CelInput> | string | undefined = values.user;
  let args: Map<string, CelInput> | string | undefined;
  let agent: Map<string, CelInput> | undefined = values.agent;

  const convert = (f: () => Map<string, CelInput>): Map<string, CelInput> | string => {
    try {
      return f();
    } catch (err) {
      if (err instanceof ValueLimitError) return err.message;
      throw err;
    }
  };

  return (vars) => {
    if (vars.has('user')) {
      const u = request.caller.user;
      user ??= convert(
        () =>
          new Map<string, CelInput>([
            ['subject', u.subject],
            ['email', u.email ?? ''],
            ['groups', u.groups],
            ['scopes', u.scopes],
            ['issuer', u.issuer],
            ['issuerName', u.issuerName],
            ['claims', toCelMap(u.claims, limits, 'token claims')],
          ]),
      );
      values.user = user;
      if (typeof user === 'string') return user;
    }
    if (vars.has('arguments') && request.arguments !== undefined) {
      const a = request.arguments;
      args ??= convert(() => toCelMap(a, limits, 'arguments'));
      if (typeof args === 'string') return args;
    }
    const a = request.caller.agent;
    agent ??= new Map<string, CelInput>([
      ['id', a.id],
      ['clientId', a.clientId ?? ''],
      ['spiffeId', a.spiffeId ?? ''],
    ]);
    values.agent = agent;
    return {
      user: typeof user === 'object' ? user : empty,
      agent,
      server: request.server,
      method: request.method,
      name: request.name,
      arguments: typeof args === 'object' ? args : empty,
    };
  };
}
