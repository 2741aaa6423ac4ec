// The policy's inputs and outputs. Decisions are values: the same object builds the client's answer,
// the audit record and the explanation, so what is logged is what was enforced.

import type { Caller } from '../identity/principal.ts';

/** MCP methods the policy governs. Listing methods are decided per item through the matching call. */
export type GovernedMethod = 'tools/call' | 'prompts/get' | 'resources/read' | 'completion/complete';

export interface PolicyRequest {
  readonly server: string;
  readonly method: GovernedMethod;
  /** Tool or prompt name, or resource URI (for completion/complete: the prompt name or resource URI referenced). */
  readonly name: string;
  /**
   * Call arguments (tools/call `arguments`, prompts/get `arguments`, completion `argument`).
   * `undefined` means "not known": a list asks whether a call could be allowed for some arguments.
   */
  readonly arguments: Readonly<Record<string, unknown>> | undefined;
  readonly caller: Caller;
}

export type Effect = 'allow' | 'deny';

export interface Decision {
  readonly effect: Effect;
  /** The rule that decided, or undefined when the default decided. */
  readonly ruleId: string | undefined;
  /** One sentence a person can read: why. Never contains argument values. */
  readonly reason: string;
  /** Set when the denial is an unmet scope requirement: the scopes that would fix it (→ 403 insufficient_scope). */
  readonly requiredScopes?: readonly string[];
}

export interface RuleTrace {
  readonly ruleId: string;
  /** Why the rule did or did not apply: `matched`, `not matched: <field>`, `condition false`, `condition error: <message>`. */
  readonly outcome: string;
}

export interface Explanation {
  readonly decision: Decision;
  /** For the user side and the agent side, every rule considered, in order. */
  readonly user: readonly RuleTrace[];
  readonly agent: readonly RuleTrace[];
}

export interface CompiledPolicy {
  decide(request: PolicyRequest): Decision;
  explain(request: PolicyRequest): Explanation;
}
