// Tool / prompt arguments as the audit trail may show them: shaped by the governance document's
// `audit.arguments` rules (keep some paths, drop, or hash), and never carrying secrets, whatever the
// rules say. Compiled once per document; `redact()` runs once per audited message.
// Pure: no I/O.
//
// Order of work for one value:
//   1. rule: the first rule whose server and tool globs match decides the mode (else the section's mode);
//   2. walk: depth ≤ maxDepth, at most maxNodes values visited, input never mutated; on the way
//      - values under secret-looking keys → "[REDACTED]" (in every mode, also inside kept paths),
//      - secret-looking substrings of strings (and keys) → "[REDACTED]",
//      - keep+paths: only the listed paths survive; hash: every leaf → "sha256:<hex>";
//      - strings longer than maxValueBytes → cut, with a marker carrying the full length and SHA-256;
//   3. the whole result longer than maxValueBytes (as JSON) → cut the same way, entry by entry.
//
// Why a hand-written scanner instead of one big RegExp per credential shape: the strings are
// client-controlled and can be as long as the request body. Each pattern below either runs anchored on
// one token (a maximal run of credential characters, found by one linear pass) or is found with
// indexOf, so the cost is linear in the string whatever it contains.

import { createHash } from 'node:crypto';
import { compileGlobSet, type GlobSet } from '../policy/glob.ts';
import type { ArgumentsMode, ArgumentsSection } from './record.ts';

export const REDACTED = '[REDACTED]';
export const TRUNCATED_DEPTH = '[TRUNCATED depth]';
export const TRUNCATED_NODES = '[TRUNCATED nodes]';
/** Key added to an object cut to fit maxValueBytes; its value says how big the whole was, and its hash. */
export const TRUNCATED_KEY = '[TRUNCATED]';
const UNREDACTABLE = '[REDACTED unreadable arguments]';

export const DEFAULT_MAX_VALUE_BYTES = 2048;
export const DEFAULT_MAX_DEPTH = 16;
export const DEFAULT_MAX_NODES = 10_000;

export interface Redactor {
  /**
   * The arguments of one message as the audit record may carry them; undefined when the rule drops
   * them (or there were none). Never throws and never mutates `args`.
   */
  redact(server: string, name: string | undefined, args: unknown): unknown;
}

/** Bounds on the work of one redact() call (not part of the document; tests and embedders tune them). */
export interface RedactionLimits {
  /** Containers nested deeper than this become "[TRUNCATED depth]" (default 16). */
  readonly maxDepth?: number;
  /** Values visited per call; the rest become "[TRUNCATED nodes]" (default 10000). */
  readonly maxNodes?: number;
}

// ---------------------------------------------------------------------------------------------------
// Secret-looking keys

type KeyKind = 'strong' | 'weak' | undefined;

// Matched anywhere in the key once lower-cased with separators removed (`x-api-key` → `xapikey`).
const STRONG_STEMS = [
  'password', 'passwd', 'passphrase', 'secret', 'apikey', 'privatekey', 'credential', 'authorization',
  'cookie', 'accesskey', 'signingkey', 'encryptionkey',
];
// Matched as whole words (`authToken` → auth, token; `author` is not `auth`).
const STRONG_WORDS = new Set(['pwd', 'pass', 'auth', 'oauth', 'bearer', 'jwt', 'otp', 'totp', 'pin']);
// Weak words name things that are secrets when they are strings (`token`, `sessionId`) but counts or
// flags when they are numbers (`max_tokens: 100`, `sessionTimeout: 30`), so only strings and
// containers under them are redacted.
const WEAK_WORDS = new Set(['token', 'tokens', 'session', 'sessions', 'sid', 'sessionid']);
const KEY_CLASSIFY_CHARS = 256;

function words(key: string): string[] {
  return key
    .replace(/([a-z0-9])([A-Z])/g, '$1 $2')
    .replace(/([A-Z]+)([A-Z][a-z])/g, '$1 $2')
    .toLowerCase()
    .split(/[^a-z0-9]+/)
    .filter((w) => w !== '');
}

// Keys repeat (the same few names in every call, and hostile input repeats one name many times).
const kindCache = new Map<string, KeyKind>();
const KIND_CACHE_MAX = 1024;

function keyKind(rawKey: string): KeyKind {
  const cached = kindCache.get(rawKey);
  if (cached !== undefined || kindCache.has(rawKey)) return cached;
  const kind = classifyKey(rawKey);
  if (rawKey.length <= 64) {
    if (kindCache.size >= KIND_CACHE_MAX) kindCache.clear();
    kindCache.set(rawKey, kind);
  }
  return kind;
}

function classifyKey(rawKey: string): KeyKind {
  // Long keys are classified by their start: bounded work, and real secret names are short.
  const key = rawKey.length > KEY_CLASSIFY_CHARS ? rawKey.slice(0, KEY_CLASSIFY_CHARS) : rawKey;
  const ws = words(key);
  const joined = ws.join('');
  if (STRONG_STEMS.some((s) => joined.includes(s))) return 'strong';
  if (ws.some((w) => STRONG_WORDS.has(w))) return 'strong';
  if (ws.some((w) => WEAK_WORDS.has(w))) return 'weak';
  // Compounds written without separators or case: githubtoken, accesstoken, sessionkey.
  if (joined.endsWith('token') || joined.endsWith('tokens') || joined.startsWith('session')) return 'weak';
  return undefined;
}

/** Whether a key's value is hidden whatever the rules say (for callers that log their own maps: headers, claims). */
export function isSecretKey(key: string): boolean {
  return keyKind(key) !== undefined;
}

// ---------------------------------------------------------------------------------------------------
// Secret-looking strings

// Well-known key formats, tried anchored at the start of each segment of a token (so O(1) each).
const KEY_PREFIX = new RegExp(
  '^(?:' +
    [
      'sk-[A-Za-z0-9_-]{16}', // OpenAI, Anthropic (sk-ant-…), many others
      '(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{10}', // Stripe secret / restricted keys
      'gh[pousr]_[A-Za-z0-9]{20}', // GitHub tokens
      'github_pat_[A-Za-z0-9_]{20}',
      'xox[abposr]-[A-Za-z0-9-]{10}', // Slack
      'glpat-[A-Za-z0-9_-]{20}', // GitLab
      'AIza[0-9A-Za-z_-]{35}', // Google API keys
      'npm_[A-Za-z0-9]{36}',
      '(?:AKIA|ASIA)[0-9A-Z]{16}', // AWS access key ids
    ].join('|') +
    ')',
);
const SEGMENT_SPLIT = /[./+~]/;
const B64URL = /^[A-Za-z0-9_-]*$/;

// The shortest shape above (a JWT's header plus a dot and one more character) is 12 characters.
const MIN_CREDENTIAL = 12;

function isCredentialToken(token: string): boolean {
  if (token.length < MIN_CREDENTIAL) return false;
  const segments = token.split(SEGMENT_SPLIT);
  for (const [i, seg] of segments.entries()) {
    if (seg.length < 10) continue;
    if (KEY_PREFIX.test(seg)) return true;
    // JWS / JWE compact form: a base64url JSON header (`eyJ…`) followed by more dot-separated parts.
    if (seg.length >= 10 && seg.startsWith('eyJ') && B64URL.test(seg)) {
      const next = segments[i + 1];
      if (next !== undefined && B64URL.test(next) && token.includes('.')) return true;
    }
  }
  return false;
}

type Range = [start: number, end: number];

function pemRanges(s: string, out: Range[]): void {
  let from = 0;
  for (;;) {
    const begin = s.indexOf('-----BEGIN ', from);
    if (begin < 0) return;
    const headerEnd = s.indexOf('-----', begin + 11);
    if (headerEnd < 0) return;
    const label = s.slice(begin + 11, Math.min(headerEnd, begin + 11 + 64));
    if (!label.includes('PRIVATE KEY')) {
      from = headerEnd + 5;
      continue;
    }
    const endMarker = s.indexOf('-----END ', headerEnd + 5);
    // A block without its END line is redacted to the end of the string.
    const close = endMarker < 0 ? -1 : s.indexOf('-----', endMarker + 9);
    const end = close < 0 ? s.length : close + 5;
    out.push([begin, end]);
    from = end;
  }
}

// scheme://user:password@host → the password.
function userinfoRanges(s: string, out: Range[]): void {
  let from = 0;
  for (;;) {
    const at = s.indexOf('://', from);
    if (at < 0) return;
    const start = at + 3;
    let colon = -1;
    let k = start;
    // Stops at the first character that ends an authority, so consecutive scans never overlap.
    for (; k < s.length && k - start < 512; k++) {
      const c = s.charCodeAt(k);
      if (c === 0x40 /* @ */ || c === 0x2f /* / */ || c === 0x3f /* ? */ || c === 0x23 /* # */ || c <= 0x20) break;
      if (c === 0x3a /* : */ && colon < 0) colon = k;
    }
    if (s.charCodeAt(k) === 0x40 && colon > 0 && k > colon + 1) out.push([colon + 1, k]);
    from = Math.max(k, start);
  }
}

// Characters of a token: A-Z a-z 0-9 _ - . ~ + / (base64, base64url, key prefixes, JWT dots).
const RUN_CHAR = new Uint8Array(128);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.~+/') RUN_CHAR[c.charCodeAt(0)] = 1;
const isRunChar = (c: number): boolean => c < 128 && RUN_CHAR[c] === 1;
const isBlank = (c: number): boolean => c === 0x20 || c === 0x09;
const isQuote = (c: number): boolean => c === 0x22 || c === 0x27;

/** `   ` between a scheme and its credential: 1–8 spaces or tabs. */
function isSpaceGap(s: string, from: number, to: number): boolean {
  if (to - from < 1 || to - from > 8) return false;
  for (let i = from; i < to; i++) if (!isBlank(s.charCodeAt(i))) return false;
  return true;
}

/** What may separate a key from its value: `=`, `: `, `": "`, ` = ` (quote, blanks, one of : =, blanks, quote). */
function isAssignGap(s: string, from: number, to: number): boolean {
  let i = from;
  if (i < to && isQuote(s.charCodeAt(i))) i++;
  while (i < to && isBlank(s.charCodeAt(i))) i++;
  const c = s.charCodeAt(i);
  if (i >= to || (c !== 0x3a && c !== 0x3d)) return false;
  i++;
  while (i < to && isBlank(s.charCodeAt(i))) i++;
  if (i < to && isQuote(s.charCodeAt(i))) i++;
  return i === to;
}

function isAuthScheme(s: string, start: number, end: number): boolean {
  const n = end - start;
  if (n !== 5 && n !== 6) return false;
  const word = s.slice(start, end).toLowerCase();
  return word === 'bearer' || word === 'basic';
}

function isDigits(s: string, start: number, end: number): boolean {
  for (let i = start; i < end; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x30 || c > 0x39) return false;
  }
  return true;
}

function tokenRanges(s: string, out: Range[]): void {
  let prevStart = -1;
  let prevEnd = -1;
  let i = 0;
  const n = s.length;
  while (i < n) {
    if (!isRunChar(s.charCodeAt(i))) {
      i++;
      continue;
    }
    const start = i;
    while (i < n && isRunChar(s.charCodeAt(i))) i++;
    while (i < n && s.charCodeAt(i) === 0x3d) i++; // base64 padding, or the "=" of key=
    const end = i;
    // Only short gaps separate a key from its value or a scheme from its credential; key names are short.
    if (prevStart >= 0 && start - prevEnd <= 12 && prevEnd - prevStart <= 64) {
      if (end - start >= 8 && isSpaceGap(s, prevEnd, start) && isAuthScheme(s, prevStart, prevEnd)) {
        out.push([prevStart, end]); // "Bearer <credential>" as a whole
      } else if ((start === prevEnd && s.charCodeAt(prevEnd - 1) === 0x3d) || isAssignGap(s, prevEnd, start)) {
        // key=value, "key": "value", key: value — where the key looks like a secret.
        let keyEnd = prevEnd;
        while (keyEnd > prevStart && s.charCodeAt(keyEnd - 1) === 0x3d) keyEnd--;
        const kind = keyKind(s.slice(prevStart, keyEnd));
        if (kind === 'strong' || (kind === 'weak' && !isDigits(s, start, end))) out.push([start, end]);
      }
    }
    if (end - start >= MIN_CREDENTIAL && isCredentialToken(s.slice(start, end))) out.push([start, end]);
    prevStart = start;
    prevEnd = end;
  }
}

/** `text` with every secret-looking part replaced by "[REDACTED]" (linear in the length of `text`). */
export function scrubSecrets(text: string): string {
  const pem: Range[] = [];
  const userinfo: Range[] = [];
  const tokens: Range[] = [];
  pemRanges(text, pem);
  userinfoRanges(text, userinfo);
  tokenRanges(text, tokens);
  if (pem.length + userinfo.length + tokens.length === 0) return text;
  // Each list is in order already; merge them instead of sorting (hostile input makes many ranges).
  const lists = [pem, userinfo, tokens];
  const at = [0, 0, 0];
  let out = '';
  let done = 0;
  for (;;) {
    let pick = -1;
    let best: Range | undefined;
    for (let l = 0; l < 3; l++) {
      const r = lists[l]?.[at[l] ?? 0];
      if (r !== undefined && (best === undefined || r[0] < best[0])) {
        best = r;
        pick = l;
      }
    }
    if (best === undefined) break;
    at[pick] = (at[pick] ?? 0) + 1;
    const [start, end] = best;
    if (end <= done) continue; // inside a range already replaced
    if (start >= done) out += text.slice(done, start) + REDACTED;
    done = end;
  }
  return out + text.slice(done);
}

// ---------------------------------------------------------------------------------------------------
// Sizes and hashes

const encoder = new TextEncoder();

function sha256(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

function byteLength(text: string): number {
  return Buffer.byteLength(text, 'utf8');
}

/** The longest prefix of `text` that fits in `bytes` UTF-8 bytes without splitting a character. */
function utf8Prefix(text: string, bytes: number): string {
  if (bytes <= 0) return '';
  const { read } = encoder.encodeInto(text, new Uint8Array(bytes));
  return text.slice(0, read);
}

function truncationMarker(bytes: number, hash: string): string {
  return `[TRUNCATED ${bytes} bytes sha256:${hash}]`;
}

function cutString(text: string, maxBytes: number): string {
  const bytes = byteLength(text);
  if (bytes <= maxBytes) return text;
  const marker = `…${truncationMarker(bytes, sha256(text))}`;
  return utf8Prefix(text, maxBytes - byteLength(marker)) + marker;
}

const CUT_MARKER = /…\[TRUNCATED \d+ bytes sha256:[0-9a-f]{64}\]$/;
/** Below this, a cut string would be little more than its marker. */
const MIN_CUT_BYTES = 128;

/**
 * A string already in the record cut further to `bytes` of JSON; a string that was cut before keeps its
 * marker (the full value's size and hash), since the full value is no longer at hand.
 */
function shorten(text: string, bytes: number): string | undefined {
  const m = CUT_MARKER.exec(text);
  const marker = m === null ? `…${truncationMarker(byteLength(text), sha256(text))}` : m[0];
  const body = m === null ? text : text.slice(0, m.index);
  let prefix = utf8Prefix(body, bytes - byteLength(marker));
  // JSON escapes (\n, \", control characters) make the serialized text longer than its UTF-8: trim until it fits.
  while (prefix !== '' && jsonBytes(prefix + marker) > bytes) prefix = prefix.slice(0, Math.floor(prefix.length * 0.9));
  const out = prefix + marker;
  return jsonBytes(out) <= bytes ? out : undefined;
}

/** Bytes of a string inside JSON, without its quotes. */
function jsonBytes(text: string): number {
  return byteLength(JSON.stringify(text)) - 2;
}

function hashLeaf(v: string | number | boolean | null): string {
  return `sha256:${sha256(typeof v === 'string' ? v : JSON.stringify(v))}`;
}

function setKey(obj: Record<string, unknown>, key: string, value: unknown): void {
  // JSON.parse makes "__proto__" an own data property; plain assignment would set the prototype instead.
  if (key === '__proto__') Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
  else obj[key] = value;
}

/** The whole result cut to maxBytes of JSON: leading entries that fit, then a marker with the full hash. */
function capWhole(value: unknown, maxBytes: number): unknown {
  if (typeof value !== 'object' || value === null) return value;
  const text = JSON.stringify(value);
  const bytes = byteLength(text);
  if (bytes <= maxBytes) return value;
  const marker = truncationMarker(bytes, sha256(text));
  if (Array.isArray(value)) {
    const out: unknown[] = [];
    let used = 2 + byteLength(JSON.stringify(marker)) + 1;
    for (const item of value) {
      const size = byteLength(JSON.stringify(item)) + 1;
      if (used + size > maxBytes) break;
      out.push(item);
      used += size;
    }
    out.push(marker);
    return out;
  }
  const out: Record<string, unknown> = {};
  let used = 2 + byteLength(JSON.stringify(TRUNCATED_KEY)) + 1 + byteLength(JSON.stringify(marker)) + 1;
  for (const [k, v] of Object.entries(value)) {
    const keyBytes = byteLength(JSON.stringify(k)) + 1;
    let entry: unknown = v;
    let size = keyBytes + byteLength(JSON.stringify(v)) + 1;
    if (used + size > maxBytes && typeof v === 'string') {
      // A long string keeps as much of its start as fits (quotes and escapes cost a few bytes).
      const room = maxBytes - used - keyBytes - 1 - 2;
      const shorter = room >= MIN_CUT_BYTES ? shorten(v, room) : undefined;
      if (shorter !== undefined) {
        entry = shorter;
        size = keyBytes + byteLength(JSON.stringify(shorter)) + 1;
      }
    }
    if (used + size > maxBytes) continue; // a smaller entry further on may still fit
    setKey(out, k, entry);
    used += size;
  }
  setKey(out, TRUNCATED_KEY, marker);
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Paths

interface PathNode {
  /** This path is listed: keep the whole subtree. */
  terminal: boolean;
  readonly children: Map<string, PathNode>;
}

function compilePaths(paths: readonly string[]): PathNode {
  const root: PathNode = { terminal: false, children: new Map() };
  for (const path of paths) {
    let node = root;
    for (const segment of path.split('.')) {
      let child = node.children.get(segment);
      if (child === undefined) {
        child = { terminal: false, children: new Map() };
        node.children.set(segment, child);
      }
      node = child;
    }
    node.terminal = true;
  }
  return root;
}

function selectChild(sel: PathNode, key: string): PathNode | undefined {
  return sel.children.get(key) ?? sel.children.get('*');
}

// ---------------------------------------------------------------------------------------------------
// The walk

const OMIT = Symbol('omit');

interface Walk {
  readonly hashing: boolean;
  readonly maxDepth: number;
  readonly maxValueBytes: number;
  nodesLeft: number;
}

function walkString(w: Walk, s: string): string {
  const scrubbed = scrubSecrets(s);
  if (w.hashing) return scrubbed === s ? hashLeaf(s) : REDACTED;
  return cutString(scrubbed, w.maxValueBytes);
}

/**
 * `sel` undefined: keep everything below; a PathNode: only the listed paths below survive (arrays are
 * transparent: `labels.name` keeps `name` in every element of `labels`).
 */
function walk(w: Walk, v: unknown, depth: number, sel: PathNode | undefined): unknown {
  if (w.nodesLeft <= 0) return TRUNCATED_NODES;
  w.nodesLeft--;
  if (typeof v === 'object' && v !== null) {
    if (depth >= w.maxDepth) return TRUNCATED_DEPTH;
    return Array.isArray(v) ? walkArray(w, v, depth, sel) : walkObject(w, v as Record<string, unknown>, depth, sel);
  }
  if (sel !== undefined) return OMIT; // a listed path goes deeper than the value does
  switch (typeof v) {
    case 'string':
      return walkString(w, v);
    case 'number':
      if (!Number.isFinite(v)) return null; // what JSON.stringify would write
      return w.hashing ? hashLeaf(v) : v;
    case 'boolean':
      return w.hashing ? hashLeaf(v) : v;
    case 'bigint':
      return w.hashing ? hashLeaf(v.toString()) : v.toString();
    case 'object': // null
      return w.hashing ? hashLeaf(null) : null;
    default: // undefined, functions, symbols: not JSON
      return OMIT;
  }
}

function walkArray(w: Walk, v: readonly unknown[], depth: number, sel: PathNode | undefined): unknown[] {
  const out: unknown[] = [];
  for (const item of v) {
    if (w.nodesLeft <= 0) {
      out.push(TRUNCATED_NODES);
      break;
    }
    const r = walk(w, item, depth + 1, sel);
    if (r !== OMIT) out.push(r);
  }
  return out;
}

function walkObject(w: Walk, v: Record<string, unknown>, depth: number, sel: PathNode | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key in v) {
    if (!Object.hasOwn(v, key)) continue;
    if (w.nodesLeft <= 0) {
      setKey(out, TRUNCATED_KEY, TRUNCATED_NODES);
      break;
    }
    let childSel: PathNode | undefined;
    if (sel !== undefined) {
      const node = selectChild(sel, key);
      if (node === undefined) continue; // not a listed path: dropped
      childSel = node.terminal ? undefined : node;
    }
    const outKey = scrubSecrets(key);
    const value = v[key];
    const kind = keyKind(key);
    if (kind === 'strong' || (kind === 'weak' && (typeof value === 'string' || (typeof value === 'object' && value !== null)))) {
      w.nodesLeft--;
      setKey(out, outKey, REDACTED);
      continue;
    }
    const r = walk(w, value, depth + 1, childSel);
    if (r !== OMIT) setKey(out, outKey, r);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Compile

interface CompiledRule {
  readonly servers: GlobSet | undefined;
  readonly tools: GlobSet | undefined;
  readonly mode: ArgumentsMode;
  readonly paths: PathNode | undefined;
}

function positiveInteger(value: number | undefined, fallback: number, field: string): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value < 1) throw new Error(`${field}: must be a positive integer, got ${String(value)}`);
  return value;
}

/**
 * Compiles the governance document's `audit.arguments` section (undefined: keep everything, secrets
 * still redacted). Throws an Error naming the field for what the schema cannot express.
 */
export function compileRedaction(section: ArgumentsSection | undefined, limits: RedactionLimits = {}): Redactor {
  const defaultMode: ArgumentsMode = section?.mode ?? 'keep';
  // The marker alone is ~100 bytes; below 128 a cut value would be all marker.
  const maxValueBytes = positiveInteger(section?.maxValueBytes, DEFAULT_MAX_VALUE_BYTES, 'audit.arguments.maxValueBytes');
  if (maxValueBytes < 128) throw new Error(`audit.arguments.maxValueBytes: must be at least 128, got ${maxValueBytes}`);
  const maxDepth = positiveInteger(limits.maxDepth, DEFAULT_MAX_DEPTH, 'maxDepth');
  const maxNodes = positiveInteger(limits.maxNodes, DEFAULT_MAX_NODES, 'maxNodes');

  const rules: CompiledRule[] = (section?.rules ?? []).map((r, i) => {
    if (r.paths !== undefined && r.mode !== 'keep') {
      throw new Error(`audit.arguments.rules[${i}].paths: only a rule with mode "keep" lists paths (this one is "${r.mode}")`);
    }
    for (const [j, p] of (r.paths ?? []).entries()) {
      if (p === '' || p.split('.').includes('')) throw new Error(`audit.arguments.rules[${i}].paths[${j}]: "${p}" is not a dotted path`);
    }
    return {
      servers: r.servers === undefined ? undefined : compileGlobSet(r.servers),
      tools: r.tools === undefined ? undefined : compileGlobSet(r.tools),
      mode: r.mode,
      paths: r.paths === undefined ? undefined : compilePaths(r.paths),
    };
  });

  function ruleFor(server: string, name: string | undefined): CompiledRule | undefined {
    return rules.find(
      (r) => (r.servers === undefined || r.servers.test(server)) && (r.tools === undefined || (name !== undefined && r.tools.test(name))),
    );
  }

  return {
    redact(server, name, args) {
      if (args === undefined) return undefined;
      try {
        const rule = ruleFor(server, name);
        const mode = rule?.mode ?? defaultMode;
        if (mode === 'drop') return undefined;
        const w: Walk = { hashing: mode === 'hash', maxDepth, maxValueBytes, nodesLeft: maxNodes };
        const r = walk(w, args, 0, rule?.paths);
        if (r === OMIT) return undefined;
        return capWhole(r, maxValueBytes);
      } catch {
        // Exotic input (a throwing getter, a Proxy): record that there were arguments, nothing more.
        return UNREDACTABLE;
      }
    },
  };
}
