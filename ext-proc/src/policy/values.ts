// JSON values (tool arguments, token claims) → CEL inputs, with a bound on the work.
//
// Numbers: JSON has one number type, CEL has int and double, and CEL does no arithmetic across them
// (`1.0 + 1` is an error). A JSON number that is a safe integer becomes a CEL int, anything else a
// double, so `arguments.count > 3`, `arguments.count + 1 <= 10` and `arguments.ratio < 0.5` all work
// (CEL compares int and double with each other; only arithmetic mixing them fails).
//
// Objects become Maps (not plain objects) so that keys such as `__proto__` or `constructor` are plain data.

import type { CelInput } from '@bufbuild/cel';

export interface ValueLimits {
  /** Deepest nesting accepted; the top-level object is level 1. */
  readonly maxValueDepth: number;
  /** Most values (objects, arrays and scalars, each counted once) accepted in one conversion. */
  readonly maxValueCount: number;
}

/** A value too large or too deep to give to a condition. The message names the limit, never a value. */
export class ValueLimitError extends Error {
  override readonly name = 'ValueLimitError';
}

/** Converts a JSON object (tool arguments, token claims) into a CEL map, or throws ValueLimitError. */
export function toCelMap(record: Readonly<Record<string, unknown>>, limits: ValueLimits, what: string): Map<string, CelInput> {
  // Counted across the whole conversion (one budget, so width and depth together are bounded),
  // starting with the top-level object itself.
  let nodes = 1;
  const tooMany = (): ValueLimitError => new ValueLimitError(`${what} have more than ${limits.maxValueCount} values`);

  const convertObject = (obj: object, depth: number): Map<string, CelInput> => {
    const out = new Map<string, CelInput>();
    for (const [k, item] of Object.entries(obj)) out.set(k, convert(item, depth + 1));
    return out;
  };

  const convert = (v: unknown, depth: number): CelInput => {
    nodes += 1;
    if (nodes > limits.maxValueCount) throw tooMany();
    switch (typeof v) {
      case 'string':
      case 'boolean':
      case 'bigint':
        return v;
      case 'number':
        return Number.isSafeInteger(v) ? BigInt(v) : v;
      case 'object': {
        if (v === null) return null;
        // Checked before descending, so the recursion itself is at most maxDepth frames deep.
        if (depth > limits.maxValueDepth) throw new ValueLimitError(`${what} nest deeper than ${limits.maxValueDepth} levels`);
        if (Array.isArray(v)) {
          const items = v as readonly unknown[];
          if (nodes + items.length > limits.maxValueCount) throw tooMany();
          return items.map((item) => convert(item, depth + 1));
        }
        return convertObject(v, depth);
      }
      default:
        // undefined, functions, symbols: not JSON.
        throw new ValueLimitError(`${what} contain a value that is not JSON (${typeof v})`);
    }
  };

  return convertObject(record, 1);
}
