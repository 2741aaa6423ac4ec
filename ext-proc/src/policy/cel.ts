// Rule conditions: CEL expressions parsed, checked and planned once at compile time, run per request.
//
// @bufbuild/cel 0.6 parses and evaluates but its type checker only knows constants and identifiers, so
// the static checks here walk the parsed AST ourselves: every free identifier must be a declared
// variable (or a type name), every function must exist with a matching arity, and an expression that
// can only yield a non-boolean (`size(x)`, `"a" + "b"`, a list) is refused. What cannot be known
// statically (a field's type inside `arguments`) fails at run time, and a failing condition denies.
//
// Work per decision is bounded: every comprehension (`all`, `exists`, `map`, `filter`, …) passes its
// range through a counting function spliced into the AST and charged to the decision's budget, and list
// concatenation is charged by size, so loops over large arguments end in an error (→ deny) instead of
// running for seconds. `matches` uses RE2 (linear time); string functions that can build strings
// quadratic in their input are left out.

import { celEnv, celFunc, celList, CelScalar, isCelError, isCelList, isCelMap, listType, mapType, parse, plan } from '@bufbuild/cel';
import type { CelInput, CelValue } from '@bufbuild/cel';
import { strings } from '@bufbuild/cel/ext';

type ParsedExpr = ReturnType<typeof parse>;
type Expr = ParsedExpr['expr'];
type ExprKind = Expr['exprKind'];
type CallValue = Extract<ExprKind, { case: 'callExpr' }>['value'];

/** The variables a condition may read. */
export const CONDITION_VARIABLES = ['user', 'agent', 'server', 'method', 'name', 'arguments'] as const;
export type ConditionVariable = (typeof CONDITION_VARIABLES)[number];
export interface ConditionBindings {
  readonly user: ReadonlyMap<string, CelInput>;
  readonly agent: ReadonlyMap<string, CelInput>;
  readonly server: string;
  readonly method: string;
  readonly name: string;
  readonly arguments: ReadonlyMap<string, CelInput>;
}

/** Identifiers CEL resolves to types (`type(x) == int`); not variables, but legal free identifiers. */
const TYPE_NAMES = new Set(['bool', 'bytes', 'double', 'int', 'list', 'map', 'null_type', 'string', 'type', 'uint']);

/** Calls the planner implements itself rather than through the function registry. */
const BUILTIN_CALLS = new Set(['_&&_', '_||_', '_?_:_', '_[_]', '@not_strictly_false', '__not_strictly_false__']);

// The string extension minus `replace`, `format` and `quote`: those build strings whose size is the
// product of their inputs' sizes (`arguments.s.replace("", arguments.s)`), the rest are linear.
const SAFE_STRING_FUNCS = strings.filter((f) => !['replace', 'format', 'strings.quote'].includes(f.name));

/** Comprehension steps left for one decision; shared by all the conditions it evaluates. */
export interface StepBudget {
  left: number;
}

const RANGE_FUNC = '@range';
const OVERRUN = 'evaluation budget exhausted (too many comprehension steps in one decision)';
/** List concatenation is charged one step per this many elements copied. */
const COPIES_PER_STEP = 100;
interface Evaluation {
  readonly budget: StepBudget;
  overrun: boolean;
}
// Evaluation is synchronous, so the one evaluation running now can live here.
let active: Evaluation | undefined;

function charge(steps: number): boolean {
  if (active === undefined) return false;
  if (active.budget.left < steps) {
    active.overrun = true;
    return false;
  }
  active.budget.left -= steps;
  return true;
}

// Charges a comprehension's whole range before its loop starts: one call per loop entered rather than
// per step (cel-es dispatches every call by runtime type, which would double a loop's cost). A range
// over budget is replaced by an empty one and the evaluation marked overrun, so it ends quickly (no
// error object per iteration of an enclosing loop) and its result is discarded as an error.
const rangeFunc = celFunc(RANGE_FUNC, [CelScalar.DYN], CelScalar.DYN, (range) => {
  const size = isCelList(range) || isCelMap(range) ? range.size : 0;
  return charge(size) ? range : [];
});

// cel-es concatenates lists lazily into nested views, so `map` and `filter` (which append one element
// per step) build a chain as deep as the list, and reading it is quadratic and overflows the stack.
// This replaces its `list + list` (same overload id) with a flat copy whose size is charged.
const LIST = listType(CelScalar.DYN);
const listConcat = celFunc('_+_', [LIST, LIST], LIST, (a, b) => {
  if (!charge(Math.ceil((a.size + b.size) / COPIES_PER_STEP))) return celList([]);
  const out: CelValue[] = [];
  // Indexed reads: iterating a CelList goes through a generator per element, several times slower.
  for (const l of [a, b]) {
    for (let i = 0; i < l.size; i++) {
      const v = l.get(i);
      if (v !== undefined) out.push(v);
    }
  }
  return celList(out);
});

const DYN_MAP = mapType(CelScalar.STRING, CelScalar.DYN);
const env = celEnv({
  variables: {
    user: DYN_MAP,
    agent: DYN_MAP,
    server: CelScalar.STRING,
    method: CelScalar.STRING,
    name: CelScalar.STRING,
    arguments: DYN_MAP,
  },
  funcs: [...SAFE_STRING_FUNCS, rangeFunc, listConcat],
});

export type ConditionResult =
  | { readonly ok: true; readonly value: boolean }
  | { readonly ok: false; readonly message: string };

export interface Condition {
  readonly source: string;
  /** Free variables the expression reads, from the AST (comprehension variables excluded). */
  readonly variables: ReadonlySet<ConditionVariable>;
  evaluate(bindings: ConditionBindings, budget: StepBudget): ConditionResult;
}

/** A condition that does not parse or check; the message says where and why. */
export class ConditionError extends Error {
  override readonly name = 'ConditionError';
}

export function compileCondition(source: string): Condition {
  let parsed: ParsedExpr;
  try {
    parsed = parse(source);
  } catch (err) {
    if (err instanceof RangeError) throw new ConditionError('syntax error: the expression nests too deeply');
    // Parser messages look like `<input>:1:3: found + but expecting end of input`.
    const message = err instanceof Error ? err.message : String(err);
    const at = /^<input>:(\d+:\d+): (.*)$/s.exec(message);
    throw new ConditionError(at === null ? `syntax error: ${message}` : `syntax error at ${at[1] ?? ''}: ${at[2] ?? ''}`);
  }
  const variables = new Set<ConditionVariable>();
  checkExpr(parsed.expr, new Set(), variables);
  const kind = resultKind(parsed.expr);
  if (kind !== 'bool' && kind !== 'dyn') {
    throw new ConditionError(`must be a boolean expression, but it yields ${kind}`);
  }
  meterComprehensions(parsed.expr, { next: maxId(parsed.expr) + 1n });
  const program = plan(env, parsed);

  return {
    source,
    variables,
    evaluate(bindings: ConditionBindings, budget: StepBudget): ConditionResult {
      let value: CelValue;
      const evaluation: Evaluation = { budget, overrun: false };
      active = evaluation;
      try {
        const result = program(bindings);
        if (evaluation.overrun) return { ok: false, message: OVERRUN };
        if (isCelError(result)) return { ok: false, message: result.message };
        value = result;
      } catch (err) {
        // plan() turns throws into errors; this is for anything that escapes it (e.g. a stack overflow).
        return { ok: false, message: err instanceof Error ? err.message : String(err) };
      } finally {
        active = undefined;
      }
      if (typeof value !== 'boolean') return { ok: false, message: `the condition yielded ${describeValue(value)}, not a bool` };
      return { ok: true, value };
    },
  };
}

function describeValue(v: CelValue): string {
  if (v === null) return 'null';
  if (typeof v === 'bigint') return 'an int';
  if (typeof v === 'number') return 'a double';
  if (typeof v === 'string') return 'a string';
  return 'a non-boolean value';
}

// ——— static checks ———

function checkExpr(expr: Expr, bound: ReadonlySet<string>, free: Set<ConditionVariable>): void {
  const k = expr.exprKind;
  switch (k.case) {
    case 'identExpr': {
      const name = k.value.name.replace(/^\./, '');
      if (bound.has(name) || TYPE_NAMES.has(name)) return;
      const variable = CONDITION_VARIABLES.find((v) => v === name);
      if (variable === undefined) {
        throw new ConditionError(`unknown identifier "${name}" (conditions can read ${CONDITION_VARIABLES.join(', ')})`);
      }
      free.add(variable);
      return;
    }
    case 'selectExpr':
      if (k.value.operand !== undefined) checkExpr(k.value.operand, bound, free);
      return;
    case 'callExpr':
      checkCall(k.value);
      if (k.value.target !== undefined) checkExpr(k.value.target, bound, free);
      for (const a of k.value.args) checkExpr(a, bound, free);
      return;
    case 'listExpr':
      for (const e of k.value.elements) checkExpr(e, bound, free);
      return;
    case 'structExpr':
      if (k.value.messageName !== '') throw new ConditionError(`message construction (${k.value.messageName}{…}) is not supported`);
      for (const e of k.value.entries) {
        if (e.keyKind.case === 'mapKey') checkExpr(e.keyKind.value, bound, free);
        if (e.value !== undefined) checkExpr(e.value, bound, free);
      }
      return;
    case 'comprehensionExpr': {
      const c = k.value;
      if (c.iterRange !== undefined) checkExpr(c.iterRange, bound, free);
      if (c.accuInit !== undefined) checkExpr(c.accuInit, bound, free);
      // The loop variables are visible in the condition and step, only the accumulator in the result.
      const inLoop = new Set([...bound, c.iterVar, c.iterVar2, c.accuVar].filter((v) => v !== ''));
      if (c.loopCondition !== undefined) checkExpr(c.loopCondition, inLoop, free);
      if (c.loopStep !== undefined) checkExpr(c.loopStep, inLoop, free);
      if (c.result !== undefined) checkExpr(c.result, new Set([...bound, c.accuVar]), free);
      return;
    }
    case 'constExpr':
      return;
    default:
      throw new ConditionError('unsupported expression');
  }
}

function checkCall(call: CallValue): void {
  if (BUILTIN_CALLS.has(call.function)) return;
  const group = env.funcs.find(call.function);
  if (group === undefined) throw new ConditionError(`unknown function "${call.function}"`);
  const asMethod = call.target !== undefined;
  const fits = [...group].some((f) => (f.target !== undefined) === asMethod && f.arguments.length === call.args.length);
  if (!fits) {
    const shape = asMethod ? `x.${call.function}(…${call.args.length} argument(s))` : `${call.function}(…${call.args.length} argument(s))`;
    throw new ConditionError(`no overload of "${call.function}" can be called as ${shape}`);
  }
}

/** What an expression yields, when that is known from its shape: `bool`, `dyn` (unknown) or a description. */
function resultKind(expr: Expr): string {
  const k = expr.exprKind;
  switch (k.case) {
    case 'constExpr':
      switch (k.value.constantKind.case) {
        case 'boolValue':
          return 'bool';
        case 'nullValue':
          return 'null';
        case 'stringValue':
          return 'a string';
        case 'bytesValue':
          return 'bytes';
        default:
          return 'a number';
      }
    case 'listExpr':
      return 'a list';
    case 'structExpr':
      return 'a map';
    case 'selectExpr':
      return k.value.testOnly ? 'bool' : 'dyn';
    case 'comprehensionExpr': {
      const c = k.value;
      // all/exists return the accumulator (a bool); map/filter too (a list); exists_one compares it.
      const r = c.result;
      if (r?.exprKind.case === 'identExpr' && r.exprKind.value.name === c.accuVar && c.accuInit !== undefined) {
        return resultKind(c.accuInit);
      }
      return r === undefined ? 'dyn' : resultKind(r);
    }
    case 'callExpr': {
      const fn = k.value.function;
      if (fn === '_&&_' || fn === '_||_' || fn === '@not_strictly_false') return 'bool';
      if (fn === '_?_:_') {
        const kinds = k.value.args.slice(1).map(resultKind);
        return kinds.find((x) => x !== 'bool' && x !== 'dyn') ?? (kinds.includes('dyn') ? 'dyn' : 'bool');
      }
      const group = env.funcs.find(fn);
      if (group === undefined) return 'dyn';
      const results = [...group].map((f) => f.result.name);
      if (results.every((r) => r === 'bool')) return 'bool';
      if (results.some((r) => r === 'bool' || r === 'dyn')) return 'dyn';
      const op = /^-?_.*_$|^-_$/.test(fn) ? `"${fn.replace(/_/g, '')}"` : `${fn}()`;
      return `the non-boolean result of ${op}`;
    }
    default:
      return 'dyn';
  }
}

// ——— step metering ———

function maxId(expr: Expr): bigint {
  let max = expr.id;
  forEachChild(expr, (c) => {
    const m = maxId(c);
    if (m > max) max = m;
  });
  return max;
}

/** Wraps every comprehension's range `r` as `@range(r)` (a name the parser cannot produce). */
function meterComprehensions(expr: Expr, ids: { next: bigint }): void {
  forEachChild(expr, (c) => {
    meterComprehensions(c, ids);
  });
  if (expr.exprKind.case !== 'comprehensionExpr') return;
  const c = expr.exprKind.value;
  if (c.iterRange === undefined) return;
  const id = ids.next;
  ids.next += 1n;
  c.iterRange = {
    $typeName: 'cel.expr.Expr',
    id,
    exprKind: {
      case: 'callExpr',
      value: { $typeName: 'cel.expr.Expr.Call', target: undefined, function: RANGE_FUNC, args: [c.iterRange] },
    },
  };
}

function forEachChild(expr: Expr, f: (child: Expr) => void): void {
  const k = expr.exprKind;
  const each = (e: Expr | undefined): void => {
    if (e !== undefined) f(e);
  };
  switch (k.case) {
    case 'selectExpr':
      each(k.value.operand);
      return;
    case 'callExpr':
      each(k.value.target);
      k.value.args.forEach(each);
      return;
    case 'listExpr':
      k.value.elements.forEach(each);
      return;
    case 'structExpr':
      for (const e of k.value.entries) {
        if (e.keyKind.case === 'mapKey') each(e.keyKind.value);
        each(e.value);
      }
      return;
    case 'comprehensionExpr':
      each(k.value.iterRange);
      each(k.value.accuInit);
      each(k.value.loopCondition);
      each(k.value.loopStep);
      each(k.value.result);
      return;
    default:
      return;
  }
}
