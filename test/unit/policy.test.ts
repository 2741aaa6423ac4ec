import { describe, expect, test } from 'vitest';
import type { Agent, Caller, Principal } from '../../ext-proc/src/identity/principal.ts';
import { compilePolicy, PolicyError, type PolicyRuleSpec } from '../../ext-proc/src/policy/compile.ts';
import { compileGlob } from '../../ext-proc/src/policy/glob.ts';
import type { CompiledPolicy, GovernedMethod, PolicyRequest } from '../../ext-proc/src/policy/types.ts';

const SERVERS = new Set(['weather', 'files']);

function policy(rules: readonly PolicyRuleSpec[], agentDefault?: 'allow' | 'deny'): CompiledPolicy {
  return compilePolicy(agentDefault === undefined ? { rules } : { rules, agentDefault }, { servers: SERVERS });
}

interface RequestOptions {
  server?: string;
  method?: GovernedMethod;
  name?: string;
  arguments?: Record<string, unknown> | undefined;
  user?: Partial<Principal>;
  agent?: Partial<Agent>;
}

function request(o: RequestOptions = {}): PolicyRequest {
  const caller: Caller = {
    user: {
      issuerName: 'corp',
      issuer: 'https://idp.corp.example',
      subject: 'ann',
      email: undefined,
      groups: [],
      scopes: [],
      tokenId: undefined,
      issuedAt: undefined,
      expiresAt: 4_102_444_800,
      claims: {},
      ...o.user,
    },
    agent: { clientId: 'cli', spiffeId: undefined, id: 'cli', ...o.agent },
  };
  return {
    server: o.server ?? 'weather',
    method: o.method ?? 'tools/call',
    name: o.name ?? 'forecast',
    // `arguments: undefined` must stay undefined (the listing question); absent means "no arguments".
    arguments: 'arguments' in o ? o.arguments : {},
    caller,
  };
}

function compileError(rules: unknown, servers: ReadonlySet<string> = SERVERS): PolicyError {
  try {
    compilePolicy({ rules }, { servers });
  } catch (err) {
    if (err instanceof PolicyError) return err;
    throw err;
  }
  throw new Error('expected the policy to be rejected');
}

describe('compiling a policy', () => {
  test.each([
    ['a CEL syntax error', { id: 'no-delete', effect: 'deny', when: 'arguments.path +' }, 'policy.rules[2] (id "no-delete").when: syntax error at 1:'],
    ['an unknown variable', { id: 'no-delete', effect: 'deny', when: 'request.path == "/"' }, 'policy.rules[2] (id "no-delete").when: unknown identifier "request"'],
    ['an unknown function', { id: 'no-delete', effect: 'deny', when: 'name.startWith("x")' }, 'policy.rules[2] (id "no-delete").when: unknown function "startWith"'],
    ['a function called with the wrong arity', { id: 'no-delete', effect: 'deny', when: 'size(name, name) > 1' }, 'policy.rules[2] (id "no-delete").when: no overload of "size"'],
    ['a condition that is not boolean', { id: 'no-delete', effect: 'deny', when: 'size(name) + 1' }, 'policy.rules[2] (id "no-delete").when: must be a boolean expression'],
    ['a condition that yields a list', { id: 'no-delete', effect: 'deny', when: 'arguments.xs.map(x, x)' }, 'policy.rules[2] (id "no-delete").when: must be a boolean expression, but it yields a list'],
    ['an unknown server', { id: 'no-delete', effect: 'deny', match: { servers: ['weather', 'wether'] } }, 'policy.rules[2] (id "no-delete").match.servers[1]: unknown server "wether"; the document declares files, weather'],
    ['scopes on an allow rule', { id: 'no-delete', effect: 'allow', scopes: ['x'] }, 'policy.rules[2] (id "no-delete").scopes: only require rules take scopes'],
    ['a require rule without scopes', { id: 'no-delete', effect: 'require' }, 'policy.rules[2] (id "no-delete").scopes: a require rule must list the scopes'],
    ['users on an agent rule', { id: 'no-delete', effect: 'deny', subject: 'agent', match: { users: { groups: ['a'] } } }, 'policy.rules[2] (id "no-delete").match.users: only user rules match users'],
    ['an unknown field', { id: 'no-delete', effect: 'deny', match: { tools: ['x'] } }, 'policy.rules[2] (id "no-delete").match: unknown field "tools"'],
    ['an unknown effect', { id: 'no-delete', effect: 'block' }, 'policy.rules[2] (id "no-delete").effect: must be one of "allow", "deny", "require"'],
    ['an unknown method', { id: 'no-delete', effect: 'deny', match: { methods: ['tools/list'] } }, 'policy.rules[2] (id "no-delete").match.methods[0]: must be one of'],
    ['an id with capitals', { id: 'No-Delete', effect: 'deny' }, 'policy.rules[2] (id "No-Delete").id: must be lowercase letters'],
    ['a missing effect', { id: 'no-delete' }, 'policy.rules[2] (id "no-delete"): missing required field "effect"'],
  ])('rejects %s, naming the rule and the field', (_what, bad, message) => {
    const rules = [
      { id: 'first', effect: 'allow' },
      { id: 'second', effect: 'allow' },
      bad,
    ];
    const err = compileError(rules);
    expect(err.name).toBe('PolicyError');
    expect(err.message).toContain(message);
  });

  test('rejects a duplicate id, naming both rules', () => {
    const err = compileError([
      { id: 'a', effect: 'allow' },
      { id: 'b', effect: 'allow' },
      { id: 'a', effect: 'deny' },
    ]);
    expect(err.message).toBe('policy.rules[2] (id "a").id: duplicate id; policy.rules[0] already uses it');
  });

  test('reports every problem at once', () => {
    const err = compileError([
      { id: 'a', effect: 'allow', when: 'nope' },
      { id: 'b', effect: 'allow', match: { servers: ['nowhere'] } },
    ]);
    expect(err.problems).toEqual([
      'policy.rules[0] (id "a").when: unknown identifier "nope" (conditions can read user, agent, server, method, name, arguments)',
      'policy.rules[1] (id "b").match.servers[0]: unknown server "nowhere"; the document declares files, weather',
    ]);
  });

  test('rejects a section that is not a policy', () => {
    const err = (() => {
      try {
        compilePolicy({ rule: [] }, { servers: SERVERS });
      } catch (e) {
        return e as PolicyError;
      }
      throw new Error('expected the section to be rejected');
    })();
    expect([...err.problems].sort()).toEqual(['policy: missing required field "rules"', 'policy: unknown field "rule"']);
    expect(() => compilePolicy('allow all', { servers: SERVERS })).toThrow(PolicyError);
  });

  test('rejects limits that are not positive integers', () => {
    expect(() => compilePolicy({ rules: [] }, { servers: SERVERS, limits: { maxValueDepth: 0 } })).toThrow('options.limits.maxValueDepth: must be a positive integer, got 0');
  });

  test('accepts the type names and comprehension variables as identifiers', () => {
    expect(() => policy([{ id: 'a', effect: 'allow', when: 'type(arguments.n) == int && arguments.xs.all(x, x > 0)' }])).not.toThrow();
  });

  test('an empty rule list denies everything', () => {
    expect(policy([]).decide(request())).toEqual({ effect: 'deny', ruleId: undefined, reason: 'no rule allows calling tool "forecast" on server "weather"' });
  });
});

describe('precedence', () => {
  test('an explicit deny beats an allow that comes before it', () => {
    const p = policy([
      { id: 'allow-all', effect: 'allow' },
      { id: 'deny-forecast', effect: 'deny', match: { names: ['forecast'] } },
    ]);
    expect(p.decide(request())).toMatchObject({ effect: 'deny', ruleId: 'deny-forecast' });
  });

  test('an unmet requirement beats an allow, and a deny beats an unmet requirement', () => {
    const requireWrite: PolicyRuleSpec = { id: 'need-write', effect: 'require', scopes: ['write'] };
    expect(policy([{ id: 'allow-all', effect: 'allow' }, requireWrite]).decide(request())).toEqual({
      effect: 'deny',
      ruleId: 'need-write',
      reason: 'rule "need-write" requires the scope "write" for calling tool "forecast" on server "weather"',
      requiredScopes: ['write'],
    });
    expect(policy([{ id: 'allow-all', effect: 'allow' }, requireWrite, { id: 'no', effect: 'deny' }]).decide(request())).toMatchObject({
      effect: 'deny',
      ruleId: 'no',
    });
  });

  test('within a class the first rule in document order decides', () => {
    const p = policy([
      { id: 'allow-1', effect: 'allow' },
      { id: 'deny-1', effect: 'deny', match: { servers: ['weather'] } },
      { id: 'allow-2', effect: 'allow' },
      { id: 'deny-2', effect: 'deny' },
    ]);
    expect(p.decide(request()).ruleId).toBe('deny-1');
    expect(p.decide(request({ server: 'files' })).ruleId).toBe('deny-2');
  });

  test('a condition that fails denies even when it belongs to an allow rule and another allow matched', () => {
    const p = policy([
      { id: 'allow-all', effect: 'allow' },
      { id: 'allow-broken', effect: 'allow', when: 'arguments.missing == 1' },
    ]);
    expect(p.decide(request())).toEqual({
      effect: 'deny',
      ruleId: 'allow-broken',
      reason: 'the condition of rule "allow-broken" could not be evaluated, so calling tool "forecast" on server "weather" is denied (fail closed)',
    });
  });

  test('a failing condition on a deny rule denies instead of being skipped', () => {
    const p = policy([
      { id: 'allow-all', effect: 'allow' },
      { id: 'deny-big', effect: 'deny', when: 'arguments.size > 10' },
    ]);
    expect(p.decide(request({ arguments: { size: 'huge' } }))).toMatchObject({ effect: 'deny', ruleId: 'deny-big' });
  });
});

describe('user side intersected with agent side', () => {
  const rules: PolicyRuleSpec[] = [
    { id: 'ann-weather', effect: 'allow', match: { servers: ['weather'], users: { subjects: ['ann'] } } },
    { id: 'cli-ok', subject: 'agent', effect: 'allow', match: { agents: ['cli'] } },
    { id: 'cli-no-admin', subject: 'agent', effect: 'deny', match: { agents: ['cli'], names: ['admin_*'] } },
  ];

  test('an agent rule can only take away what the user may do', () => {
    const p = policy(rules);
    expect(p.decide(request())).toEqual({
      effect: 'allow',
      ruleId: 'ann-weather',
      reason: 'rule "ann-weather" allows calling tool "forecast" on server "weather", and rule "cli-ok" allows agent "cli"',
    });
    expect(p.decide(request({ name: 'admin_reset' }))).toEqual({
      effect: 'deny',
      ruleId: 'cli-no-admin',
      reason: 'rule "cli-no-admin" denies calling tool "admin_reset" on server "weather" for agent "cli"',
    });
    expect(p.decide(request({ user: { subject: 'bob' } })).effect).toBe('deny');
  });

  test('agentDefault allow leaves unknown agents limited only by their user', () => {
    expect(policy(rules).decide(request({ agent: { id: 'other' } }))).toMatchObject({ effect: 'allow', ruleId: 'ann-weather' });
  });

  test('agentDefault deny denies agents no agent rule allows', () => {
    expect(policy(rules, 'deny').decide(request({ agent: { id: 'other' } }))).toEqual({
      effect: 'deny',
      ruleId: undefined,
      reason: 'no rule allows calling tool "forecast" on server "weather" for agent "other" (agentDefault is deny)',
    });
  });

  test('the agent side is judged only when the user side allows, but explain traces both', () => {
    const p = policy([{ id: 'broken-agent-rule', subject: 'agent', effect: 'allow', when: 'arguments.x == 1' }]);
    // The user side denies by default, so the agent rule's failing condition does not decide.
    const explained = p.explain(request());
    expect(explained.decision).toMatchObject({ effect: 'deny', ruleId: undefined });
    expect(explained.user).toEqual([]);
    expect(explained.agent).toEqual([{ ruleId: 'broken-agent-rule', outcome: 'condition error: field not found: x' }]);
  });

  test('a user rule limited to some agents applies only through them', () => {
    const p = policy([{ id: 'via-desktop', effect: 'allow', match: { agents: ['desktop'] } }]);
    expect(p.decide(request({ agent: { id: 'desktop' } })).effect).toBe('allow');
    expect(p.explain(request({ agent: { id: 'cli' } })).user).toEqual([{ ruleId: 'via-desktop', outcome: 'not matched: match.agents' }]);
  });
});

describe('globs', () => {
  test.each([
    ['forecast', 'forecast', true],
    ['forecast', 'forecasts', false],
    ['history_*', 'history_', true],
    ['history_*', 'history_daily', true],
    ['history_*', 'xhistory_daily', false],
    ['file:///public/*', 'file:///public/a/b/c.txt', true],
    ['file:///public/*', 'file:///private/a', false],
    ['spiffe://corp/ns/*/sa/agent', 'spiffe://corp/ns/prod/sa/agent', true],
    ['spiffe://corp/ns/*/sa/agent', 'spiffe://corp/ns/prod/sa/agent2', false],
    ['page_??', 'page_42', true],
    ['page_??', 'page_4', false],
    ['page_?', 'page_é', true],
    ['page_?', 'page_😀', true],
    ['a.b+c(d)[e]{f}|g^$\\', 'a.b+c(d)[e]{f}|g^$\\', true],
    ['a.b', 'axb', false],
    ['**x**', 'x', true],
    ['a*b*c', 'abc', true],
    ['a*b*c', 'acb', false],
    ['a*a', 'a', false],
    ['*', '', true],
    ['line?break', 'line\nbreak', true],
  ])('%s matches %j: %s', (pattern, text, expected) => {
    expect(compileGlob(pattern).test(text)).toBe(expected);
  });

  test('matches case-insensitively when asked (e-mail addresses)', () => {
    expect(compileGlob('*@corp.example', { ignoreCase: true }).test('Ann@CORP.example')).toBe(true);
    expect(compileGlob('*@corp.example').test('Ann@CORP.example')).toBe(false);
  });

  test('a many-star glob against a long client-controlled name stays linear', () => {
    const glob = compileGlob('*a*a*a*a*a*a*b');
    const start = performance.now();
    expect(glob.test('a'.repeat(200_000))).toBe(false);
    expect(performance.now() - start).toBeLessThan(500);
  });
});

describe('conditions on arguments', () => {
  const p = policy([
    { id: 'small-history', effect: 'allow', match: { names: ['history'] }, when: 'arguments.days <= 30 && arguments.days + 1 > 1' },
    { id: 'no-atlantis', effect: 'deny', match: { names: ['history'] }, when: 'has(arguments.city) && arguments.city == "Atlantis"' },
  ]);

  test('allows one call and denies another to the same tool', () => {
    expect(p.decide(request({ name: 'history', arguments: { days: 7 } }))).toMatchObject({ effect: 'allow', ruleId: 'small-history' });
    expect(p.decide(request({ name: 'history', arguments: { days: 90 } }))).toMatchObject({ effect: 'deny', ruleId: undefined });
    expect(p.decide(request({ name: 'history', arguments: { days: 7, city: 'Atlantis' } }))).toMatchObject({ effect: 'deny', ruleId: 'no-atlantis' });
  });

  test('JSON integers are CEL ints, so arithmetic with int literals works', () => {
    const q = policy([{ id: 'n', effect: 'allow', when: 'arguments.count + 1 == 4 && arguments.count * 2 == 6 && arguments.count > 2.5' }]);
    expect(q.decide(request({ arguments: { count: 3 } })).effect).toBe('allow');
  });

  test('JSON fractions are CEL doubles and compare with ints', () => {
    const q = policy([{ id: 'ratio', effect: 'allow', when: 'arguments.ratio < 1 && arguments.ratio > 0.25' }]);
    expect(q.decide(request({ arguments: { ratio: 0.5 } })).effect).toBe('allow');
    expect(q.decide(request({ arguments: { ratio: 1.5 } })).effect).toBe('deny');
  });

  test('nested objects, lists and awkward keys are plain data', () => {
    const q = policy([
      {
        id: 'nested',
        effect: 'allow',
        when: 'arguments.filter.tags.exists(t, t == "public") && arguments["__proto__"].x == 1 && arguments.constructor == "c"',
      },
    ]);
    const args = JSON.parse('{"filter":{"tags":["a","public"]},"__proto__":{"x":1},"constructor":"c"}') as Record<string, unknown>;
    expect(q.decide(request({ arguments: args })).effect).toBe('allow');
  });

  test('conditions read the user, the agent and the request', () => {
    const q = policy([
      {
        id: 'everything',
        effect: 'allow',
        when: [
          'user.subject == "ann" && user.email == "" && !user.email.endsWith("@corp.example")',
          '"staff" in user.groups && "weather:read" in user.scopes && user.issuerName == "corp"',
          'user.issuer.startsWith("https://") && user.claims.department == "r&d" && user.claims.level >= 3',
          'agent.id == "cli" && agent.clientId == "cli" && agent.spiffeId == ""',
          'server == "weather" && method == "tools/call" && name == "forecast"',
        ].join(' && '),
      },
    ]);
    const r = request({ user: { groups: ['staff'], scopes: ['weather:read'], claims: { department: 'r&d', level: 3 } } });
    expect(q.explain(r).user).toEqual([{ ruleId: 'everything', outcome: 'matched' }]);
  });
});

describe('conditions failing at run time', () => {
  test('deny, name the rule, and keep the failing value out of the reason', () => {
    const p = policy([{ id: 'numeric-id', effect: 'allow', when: 'int(arguments.id) > 0' }]);
    const r = request({ arguments: { id: 'hunter2-secret' } });
    const explained = p.explain(r);
    expect(explained.decision).toEqual({
      effect: 'deny',
      ruleId: 'numeric-id',
      reason: 'the condition of rule "numeric-id" could not be evaluated, so calling tool "forecast" on server "weather" is denied (fail closed)',
    });
    expect(explained.user[0]?.outcome).toMatch(/^condition error: /);
  });

  test('a condition on a missing e-mail reads "" instead of failing', () => {
    const p = policy([
      { id: 'all', effect: 'allow' },
      { id: 'no-contractors', effect: 'deny', when: 'user.email.endsWith("@contractor.example")' },
    ]);
    expect(p.decide(request({ user: { email: undefined } })).effect).toBe('allow');
    expect(p.decide(request({ user: { email: 'x@contractor.example' } })).effect).toBe('deny');
  });
});

describe('huge or deeply nested input', () => {
  function nested(depth: number): Record<string, unknown> {
    let v: Record<string, unknown> = { leaf: true };
    for (let i = 0; i < depth; i++) v = { a: v };
    return v;
  }

  const p = policy([{ id: 'reads-args', effect: 'allow', match: { names: ['with-args'] }, when: 'has(arguments.q)' }, { id: 'ignores-args', effect: 'allow', match: { names: ['without-args'] } }]);

  test('arguments nested deeper than 32 levels deny without throwing', () => {
    const r = request({ name: 'with-args', arguments: nested(100_000) });
    expect(p.decide(r)).toMatchObject({ effect: 'deny', ruleId: 'reads-args' });
    expect(p.explain(r).user[0]).toEqual({ ruleId: 'reads-args', outcome: 'condition error: arguments nest deeper than 32 levels' });
  });

  test('arguments with 31 levels below the top are accepted', () => {
    expect(p.decide(request({ name: 'with-args', arguments: { q: 1, ...nested(30) } })).effect).toBe('allow');
  });

  test('arguments with too many values deny quickly', () => {
    const r = request({ name: 'with-args', arguments: { q: 1, rows: Array.from({ length: 1_000_000 }, (_, i) => i) } });
    const start = performance.now();
    expect(p.explain(r).user[0]).toEqual({ ruleId: 'reads-args', outcome: 'condition error: arguments have more than 10000 values' });
    expect(performance.now() - start).toBeLessThan(500);
  });

  test('huge arguments do not matter to rules that do not read them', () => {
    expect(p.decide(request({ name: 'without-args', arguments: nested(100_000) })).effect).toBe('allow');
  });

  test('nested loops over a large list stop at the step budget and deny', () => {
    const q = policy([{ id: 'pairs', effect: 'allow', when: 'arguments.xs.all(x, arguments.xs.all(y, x + y >= 0))' }]);
    const start = performance.now();
    const explained = q.explain(request({ arguments: { xs: Array.from({ length: 5_000 }, (_, i) => i) } }));
    expect(performance.now() - start).toBeLessThan(1_000);
    expect(explained.decision).toMatchObject({ effect: 'deny', ruleId: 'pairs' });
    expect(explained.user[0]?.outcome).toBe('condition error: evaluation budget exhausted (too many comprehension steps in one decision)');
  });

  test('the same loops over a small list are evaluated', () => {
    const q = policy([{ id: 'pairs', effect: 'allow', when: 'arguments.xs.all(x, arguments.xs.all(y, x + y >= 0))' }]);
    expect(q.decide(request({ arguments: { xs: [1, 2, 3] } })).effect).toBe('allow');
  });

  test('map over a long list neither overflows the stack nor runs long', () => {
    const q = policy([{ id: 'mapped', effect: 'allow', when: 'arguments.xs.map(x, x * 2).exists(y, y < 0) == false' }]);
    const start = performance.now();
    expect(q.decide(request({ arguments: { xs: Array.from({ length: 9_000 }, (_, i) => i) } }))).toMatchObject({ effect: 'deny', ruleId: 'mapped' });
    expect(q.decide(request({ arguments: { xs: Array.from({ length: 200 }, (_, i) => i) } })).effect).toBe('allow');
    expect(performance.now() - start).toBeLessThan(1_000);
  });

  test('token claims are bounded too', () => {
    const q = policy([{ id: 'claims', effect: 'allow', when: 'has(user.claims.department)' }]);
    expect(q.explain(request({ user: { claims: nested(64) } })).user[0]).toEqual({
      ruleId: 'claims',
      outcome: 'condition error: token claims nest deeper than 32 levels',
    });
  });
});

describe('listing with unknown arguments', () => {
  const list = (p: CompiledPolicy, o: RequestOptions = {}): ReturnType<CompiledPolicy['decide']> => p.decide(request({ ...o, arguments: undefined }));

  test('lists a tool whose allow condition reads arguments (some call could be allowed)', () => {
    const p = policy([{ id: 'not-atlantis', effect: 'allow', when: 'arguments.city != "Atlantis"' }]);
    expect(list(p)).toEqual({
      effect: 'allow',
      ruleId: 'not-atlantis',
      reason: 'rule "not-atlantis" allows calling tool "forecast" on server "weather" for some arguments (its condition reads them)',
    });
  });

  test('ignores deny and require conditions that read arguments', () => {
    const p = policy([
      { id: 'all', effect: 'allow' },
      { id: 'no-atlantis', effect: 'deny', when: 'arguments.city == "Atlantis"' },
      { id: 'bulk-scope', effect: 'require', when: 'arguments.rows > 100', scopes: ['bulk'] },
    ]);
    expect(list(p)).toMatchObject({ effect: 'allow', ruleId: 'all' });
    expect(p.explain(request({ arguments: undefined })).user).toEqual([
      { ruleId: 'all', outcome: 'matched' },
      { ruleId: 'no-atlantis', outcome: 'condition assumed false (arguments unknown)' },
      { ruleId: 'bulk-scope', outcome: 'condition assumed false (arguments unknown)' },
    ]);
  });

  test('evaluates conditions that do not read arguments as usual', () => {
    const p = policy([
      { id: 'all', effect: 'allow' },
      { id: 'no-contractors', effect: 'deny', when: 'user.email.endsWith("@contractor.example")' },
    ]);
    expect(list(p, { user: { email: 'x@contractor.example' } })).toMatchObject({ effect: 'deny', ruleId: 'no-contractors' });
  });

  test('decides "reads arguments" from the expression, not from its text', () => {
    const p = policy([
      { id: 'all', effect: 'allow' },
      // Mentions "arguments" only in a string and as a loop variable: does not read the arguments.
      { id: 'deny-mention', effect: 'deny', when: 'name != "arguments" && [1, 2].exists(arguments, arguments > 1)' },
    ]);
    expect(list(p)).toMatchObject({ effect: 'deny', ruleId: 'deny-mention' });
  });
});

describe('explain', () => {
  test('traces every rule of both sides with why it did or did not apply', () => {
    const p = policy([
      { id: 'other-server', effect: 'allow', match: { servers: ['files'] } },
      { id: 'other-method', effect: 'allow', match: { methods: ['prompts/get'] } },
      { id: 'other-name', effect: 'allow', match: { names: ['history'] } },
      { id: 'other-group', effect: 'allow', match: { users: { groups: ['admins'] } } },
      { id: 'false-condition', effect: 'deny', when: 'arguments.city == "Atlantis"' },
      { id: 'broken-condition', effect: 'allow', when: 'arguments.nope' },
      { id: 'need-write', effect: 'require', scopes: ['read', 'write'] },
      { id: 'need-read', effect: 'require', scopes: ['read'] },
      { id: 'allow', effect: 'allow' },
      { id: 'cli', subject: 'agent', effect: 'allow', match: { agents: ['cli'] } },
      { id: 'not-cli', subject: 'agent', effect: 'deny', match: { agents: ['bot'] } },
    ]);
    const explained = p.explain(request({ arguments: { city: 'Paris' }, user: { scopes: ['read'] } }));
    expect(explained.user).toEqual([
      { ruleId: 'other-server', outcome: 'not matched: match.servers' },
      { ruleId: 'other-method', outcome: 'not matched: match.methods' },
      { ruleId: 'other-name', outcome: 'not matched: match.names' },
      { ruleId: 'other-group', outcome: 'not matched: match.users.groups' },
      { ruleId: 'false-condition', outcome: 'condition false' },
      { ruleId: 'broken-condition', outcome: 'condition error: field not found: nope' },
      { ruleId: 'need-write', outcome: 'matched: missing scopes write' },
      { ruleId: 'need-read', outcome: 'matched: requirement met' },
      { ruleId: 'allow', outcome: 'matched' },
    ]);
    expect(explained.agent).toEqual([
      { ruleId: 'cli', outcome: 'matched' },
      { ruleId: 'not-cli', outcome: 'not matched: match.agents' },
    ]);
    expect(explained.decision).toMatchObject({ effect: 'deny', ruleId: 'broken-condition' });
    expect(p.decide(request({ arguments: { city: 'Paris' }, user: { scopes: ['read'] } }))).toEqual(explained.decision);
  });

  test('reasons quote long client-supplied names only in part', () => {
    const name = `x${'y'.repeat(10_000)}`;
    const d = policy([]).decide(request({ name }));
    expect(d.reason.length).toBeLessThan(250);
    expect(d.reason).toContain('…');
  });
});
