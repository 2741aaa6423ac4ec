// Globs for names, URIs and identities: `*` matches any run of characters (including `/` and none at
// all), `?` exactly one character; everything else is literal and the whole text must match.
//
// Why not one `^…$` RegExp per glob: the text is client-controlled (a tool name or resource URI can be
// as long as the request body), and a backtracking engine runs `^.*a.*b.*c$` in time polynomial in the
// text. Instead the pattern is split at its stars and each piece is compiled once into its own RegExp;
// the pieces are then found left to right, each at its earliest position (which is always the right
// choice when only stars separate them), so a match costs at most text length × pattern length.

export interface Glob {
  readonly pattern: string;
  test(text: string): boolean;
}

export interface GlobOptions {
  /** Compare case-insensitively (used for e-mail addresses). */
  readonly ignoreCase?: boolean;
}

function pieceSource(piece: string): string {
  let out = '';
  for (const ch of piece) out += ch === '?' ? '.' : ch.replace(/[\\^$.*+?()[\]{}|/]/g, '\\$&');
  return out;
}

export function compileGlob(pattern: string, options: GlobOptions = {}): Glob {
  // `s`: `?` and `*` also match line breaks; `u`: `?` is one code point, not half a surrogate pair.
  const flags = options.ignoreCase === true ? 'sui' : 'su';
  const pieces = pattern.split('*');
  const first = pieces[0] ?? '';

  if (pieces.length === 1) {
    const whole = new RegExp(`^(?:${pieceSource(first)})$`, flags);
    return { pattern, test: (text) => whole.test(text) };
  }

  const last = pieces[pieces.length - 1] ?? '';
  const head = first === '' ? undefined : new RegExp(pieceSource(first), `${flags}y`);
  // Consecutive stars leave empty pieces, which match anywhere: drop them.
  const middle = pieces
    .slice(1, -1)
    .filter((p) => p !== '')
    .map((p) => new RegExp(pieceSource(p), `${flags}g`));
  const tail = last === '' ? undefined : new RegExp(`(?:${pieceSource(last)})$`, `${flags}g`);

  return {
    pattern,
    test(text: string): boolean {
      let at = 0;
      if (head !== undefined) {
        head.lastIndex = 0;
        if (!head.test(text)) return false;
        at = head.lastIndex;
      }
      for (const re of middle) {
        re.lastIndex = at;
        const m = re.exec(text);
        if (m === null) return false;
        at = m.index + m[0].length;
      }
      if (tail === undefined) return true;
      // The tail has a fixed length, so there is at most one suffix it can be; it must start at or after `at`.
      tail.lastIndex = at;
      return tail.exec(text) !== null;
    },
  };
}

/** Any of several globs. */
export interface GlobSet {
  readonly patterns: readonly string[];
  test(text: string): boolean;
}

export function compileGlobSet(patterns: readonly string[], options: GlobOptions = {}): GlobSet {
  const globs = patterns.map((p) => compileGlob(p, options));
  return { patterns, test: (text) => globs.some((g) => g.test(text)) };
}
