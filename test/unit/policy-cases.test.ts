// Decision cases as data: every test/policy-cases/*.yaml holds a policy, the servers it may name, and
// requests with the decision each must get. Every case becomes one test named "<file>: <case>".
//
// Request format: { server, method, name, arguments?, user: { subject, email?, groups?, scopes?, issuer?,
// issuerName?, claims? }, agent: { id, clientId?, spiffeId? } }. A request without `arguments` asks
// the listing question ("could some call be allowed?"); write `arguments: {}` for a call without any.
// Expectation: { effect, rule?: <id> | null (null: the default decided), requiredScopes? }.
//
// Beyond the expectation, every case also checks that explain() reaches the same decision as decide()
// and that the reason repeats no argument value.

import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, test } from 'vitest';
import { parse } from 'yaml';
import type { Caller } from '../../ext-proc/src/identity/principal.ts';
import { compilePolicy } from '../../ext-proc/src/policy/compile.ts';
import type { GovernedMethod, PolicyRequest } from '../../ext-proc/src/policy/types.ts';

interface CaseRequest {
  readonly server: string;
  readonly method: GovernedMethod;
  readonly name: string;
  readonly arguments?: Record<string, unknown>;
  readonly user: {
    readonly subject: string;
    readonly email?: string;
    readonly groups?: string[];
    readonly scopes?: string[];
    readonly issuer?: string;
    readonly issuerName?: string;
    readonly claims?: Record<string, unknown>;
  };
  readonly agent: { readonly id: string; readonly clientId?: string; readonly spiffeId?: string };
}

interface CaseFile {
  readonly description: string;
  readonly servers: string[];
  readonly policy: unknown;
  readonly cases: {
    readonly name: string;
    readonly request: CaseRequest;
    readonly expect: { readonly effect: 'allow' | 'deny'; readonly rule?: string | null; readonly requiredScopes?: string[] };
  }[];
}

const dir = path.join(import.meta.dirname, '..', 'policy-cases');
const files = readdirSync(dir)
  .filter((f) => f.endsWith('.yaml'))
  .sort();

function load(file: string): CaseFile {
  const data = parse(readFileSync(path.join(dir, file), 'utf8')) as Partial<CaseFile> | null;
  // A malformed case file fails loudly here rather than yielding zero tests.
  if (
    data === null ||
    typeof data.description !== 'string' ||
    !Array.isArray(data.servers) ||
    data.policy === undefined ||
    !Array.isArray(data.cases) ||
    data.cases.length === 0
  ) {
    throw new Error(`${file}: needs description, servers, policy and a non-empty list of cases`);
  }
  return data as CaseFile;
}

function toRequest(r: CaseRequest): PolicyRequest {
  const caller: Caller = {
    user: {
      issuerName: r.user.issuerName ?? 'corp',
      issuer: r.user.issuer ?? 'https://idp.corp.example',
      subject: r.user.subject,
      email: r.user.email,
      groups: r.user.groups ?? [],
      scopes: r.user.scopes ?? [],
      tokenId: undefined,
      issuedAt: undefined,
      expiresAt: 4_102_444_800,
      claims: r.user.claims ?? { sub: r.user.subject },
    },
    agent: { id: r.agent.id, clientId: r.agent.clientId, spiffeId: r.agent.spiffeId },
  };
  return { server: r.server, method: r.method, name: r.name, arguments: r.arguments, caller };
}

/** Every string and number inside the arguments that is long enough to be recognisable in a sentence. */
function argumentValues(v: unknown): string[] {
  if (typeof v === 'string') return v.length >= 4 ? [v] : [];
  if (typeof v === 'number') return String(v).length >= 4 ? [String(v)] : [];
  if (Array.isArray(v)) return v.flatMap(argumentValues);
  if (typeof v === 'object' && v !== null) return Object.values(v).flatMap(argumentValues);
  return [];
}

test('there are decision case files', () => {
  expect(files.length).toBeGreaterThanOrEqual(4);
});

for (const file of files) {
  const data = load(file);
  describe(file, () => {
    const policy = compilePolicy(data.policy, { servers: new Set(data.servers) });

    for (const c of data.cases) {
      test(`${file}: ${c.name}`, () => {
        const request = toRequest(c.request);
        const decision = policy.decide(request);

        expect({ effect: decision.effect, reason: decision.reason }).toMatchObject({ effect: c.expect.effect });
        if (c.expect.rule !== undefined) expect(decision.ruleId).toBe(c.expect.rule ?? undefined);
        if (c.expect.requiredScopes !== undefined) expect(decision.requiredScopes).toEqual(c.expect.requiredScopes);
        else expect(decision.requiredScopes).toBeUndefined();

        expect(policy.explain(request).decision).toEqual(decision);
        for (const value of argumentValues(c.request.arguments)) expect(decision.reason).not.toContain(value);
      });
    }
  });
}
