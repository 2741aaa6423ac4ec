import { createHash } from 'node:crypto';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { describe, expect, it } from 'vitest';
import auditSchema from '../../ext-proc/src/audit/audit.schema.json' with { type: 'json' };
import {
  REDACTED,
  TRUNCATED_DEPTH,
  TRUNCATED_KEY,
  TRUNCATED_NODES,
  compileRedaction,
  scrubSecrets,
} from '../../ext-proc/src/audit/redact.ts';

const sha256 = (s: string): string => createHash('sha256').update(s, 'utf8').digest('hex');
const json = (v: unknown): string => JSON.stringify(v);

const BEARER = 'Bearer 9f8e7d6c5b4a39281706f5e4d3c2b1a0';
const API_KEY = 'sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34';
const JWT =
  'eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImF1ZCI6Im1jcCJ9.c2lnbmF0dXJlLWJ5dGVzLWhlcmUtMDEyMzQ1Njc4OQ';
const PASSWORD = 'correct-horse-battery-staple';

const plain = compileRedaction(undefined);

describe('secrets never reach the record', () => {
  it('removes a bearer token, an API key, a JWT under an innocent key and a password from a tool call', () => {
    const args = {
      query: 'open issues about login',
      headers: { Authorization: BEARER },
      apiKey: API_KEY,
      note: JWT, // the key says nothing; the value is a JWT
      password: PASSWORD,
      page: 2,
    };
    const out = json(plain.redact('github', 'search_issues', args));
    for (const secret of [BEARER, '9f8e7d6c5b4a39281706f5e4d3c2b1a0', API_KEY, JWT, JWT.split('.')[1] ?? JWT, PASSWORD]) {
      expect(out).not.toContain(secret);
    }
    expect(JSON.parse(out)).toEqual({
      query: 'open issues about login',
      headers: { Authorization: REDACTED },
      apiKey: REDACTED,
      note: REDACTED,
      password: REDACTED,
      page: 2,
    });
  });

  it.each([
    'password', 'PASSWORD', 'passwd', 'db_password', 'client_secret', 'secretValue', 'githubToken', 'access_token',
    'refreshToken', 'x-api-key', 'api_key', 'apiKey', 'APIKey', 'apikey', 'Authorization', 'auth', 'x-auth', 'cookie',
    'Set-Cookie', 'private_key', 'privateKey', 'credentials', 'credential', 'sessionId', 'mcp-session-id', 'session',
    'pwd', 'otp',
  ])('redacts the value under the key %s', (key) => {
    expect(plain.redact('s', 't', { [key]: 'plain-looking-value' })).toEqual({ [key]: REDACTED });
  });

  it.each(['author', 'authority', 'title', 'keyboard', 'monkey', 'passage', 'tokenizer', 'description', 'path'])(
    'keeps the value under the innocent key %s',
    (key) => {
      expect(plain.redact('s', 't', { [key]: 'plain-looking-value' })).toEqual({ [key]: 'plain-looking-value' });
    },
  );

  it('keeps counts under token-ish keys but not strings or objects', () => {
    expect(plain.redact('s', 't', { max_tokens: 100, sessionTimeout: 30, tokens: ['a', 'b'], session: { id: 'x' } })).toEqual({
      max_tokens: 100,
      sessionTimeout: 30,
      tokens: REDACTED,
      session: REDACTED,
    });
  });

  it.each([
    ['a bearer header value', BEARER, REDACTED],
    ['basic credentials', 'Basic dXNlcjpwYXNzd29yZDEyMw==', REDACTED],
    ['a JWT', JWT, REDACTED],
    ['an OpenAI-style key', API_KEY, REDACTED],
    ['an Anthropic-style key', 'sk-ant-api03-AbCdEfGhIjKlMnOpQrStUv', REDACTED],
    ['a GitHub personal token', 'ghp_0123456789abcdefghijABCDEFGHIJ012345', REDACTED],
    ['a GitHub OAuth token', 'gho_0123456789abcdefghijABCDEFGHIJ012345', REDACTED],
    ['a Slack bot token', 'xoxb-1234567890-abcdefghijkl', REDACTED],
    ['an AWS access key id', 'AKIAIOSFODNN7EXAMPLE', REDACTED],
    ['a PEM private key', '-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----', REDACTED],
    ['a PEM key cut before its END line', 'key: -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1r', 'key: [REDACTED]'],
    ['a command with a header', `curl -H "Authorization: ${BEARER}" https://api`, 'curl -H "Authorization: [REDACTED]" https://api'],
    ['a URL with a password', 'postgres://app:s3cr3t-pw@db:5432/main', 'postgres://app:[REDACTED]@db:5432/main'],
    ['a query string token', 'https://x/cb?code=1&access_token=abc123def&state=2', 'https://x/cb?code=1&access_token=[REDACTED]&state=2'],
    ['an env dump', 'HOME=/root PASSWORD=hunter2 TERM=xterm', 'HOME=/root PASSWORD=[REDACTED] TERM=xterm'],
    ['JSON inside a string', '{"client_secret": "zzz", "ok": 1}', '{"client_secret": "[REDACTED]", "ok": 1}'],
  ])('redacts %s even under an innocent key', (_what, value, expected) => {
    expect(plain.redact('s', 't', { text: value })).toEqual({ text: expected });
  });

  it.each([
    'a public certificate: -----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----',
    'tasks-are-done and task-1234567890abcdefghij',
    'https://example.com/path?q=1',
    'Bearer tokens are explained in RFC 6750',
  ])('leaves innocent text alone: %s', (text) => {
    expect(scrubSecrets(text)).toBe(text);
  });

  it('redacts secret-looking keys themselves', () => {
    expect(json(plain.redact('s', 't', { [API_KEY]: true }))).not.toContain(API_KEY);
  });
});

describe('rules', () => {
  const redactor = compileRedaction({
    mode: 'keep',
    rules: [
      { servers: ['github'], tools: ['create_*'], mode: 'keep', paths: ['repo', 'title', 'labels', 'config.visibility'] },
      { tools: ['login'], mode: 'drop' },
      { servers: ['crm'], mode: 'hash' },
      { servers: ['db-?'], mode: 'drop' },
    ],
  });

  it('keeps only the listed paths for a keep rule, secrets inside them still redacted', () => {
    const args = {
      repo: 'acme/app',
      title: 'Crash',
      body: 'long text nobody should log',
      labels: ['bug', { name: 'p1', token: 'ghp_0123456789abcdefghijABCDEFGHIJ012345' }],
      config: { visibility: 'private', webhookSecret: 'x' },
    };
    expect(redactor.redact('github', 'create_issue', args)).toEqual({
      repo: 'acme/app',
      title: 'Crash',
      labels: ['bug', { name: 'p1', token: REDACTED }],
      config: { visibility: 'private' },
    });
  });

  it('matches servers and tools by glob, first rule winning', () => {
    // Not create_*: falls through to the section's mode (keep everything).
    expect(redactor.redact('github', 'list_issues', { body: 'b' })).toEqual({ body: 'b' });
    // login on any server: dropped, even on crm where a later rule would hash.
    expect(redactor.redact('crm', 'login', { user: 'u' })).toBeUndefined();
    expect(redactor.redact('db-1', 'query', { sql: 'select 1' })).toBeUndefined();
    expect(redactor.redact('db-10', 'query', { sql: 'select 1' })).toEqual({ sql: 'select 1' });
    // A rule naming tools never matches a message without a name.
    expect(redactor.redact('github', undefined, { a: 1 })).toEqual({ a: 1 });
  });

  it('drops the arguments of a drop rule', () => {
    expect(redactor.redact('any', 'login', { user: 'alice', password: 'x' })).toBeUndefined();
  });

  it('hashes every leaf for a hash rule, so equal values correlate, and still redacts secrets', () => {
    const out = redactor.redact('crm', 'find_customer', {
      email: 'bob@example.com',
      ids: [42, 'x'],
      vip: true,
      note: null,
      password: 'p',
      bio: `contact ${API_KEY}`,
    });
    expect(out).toEqual({
      email: `sha256:${sha256('bob@example.com')}`,
      ids: [`sha256:${sha256('42')}`, `sha256:${sha256('x')}`],
      vip: `sha256:${sha256('true')}`,
      note: `sha256:${sha256('null')}`,
      password: REDACTED,
      bio: REDACTED,
    });
    expect(json(out)).not.toContain('bob@example.com');
  });

  it('applies the section mode to arguments no rule matches', () => {
    expect(compileRedaction({ mode: 'drop' }).redact('s', 't', { a: 1 })).toBeUndefined();
    expect(compileRedaction({ mode: 'hash' }).redact('s', 't', { a: 'x' })).toEqual({ a: `sha256:${sha256('x')}` });
  });

  it('refuses paths on a rule that does not keep, naming the rule', () => {
    expect(() => compileRedaction({ rules: [{ mode: 'hash', paths: ['a'] }] })).toThrow(
      'audit.arguments.rules[0].paths: only a rule with mode "keep" lists paths (this one is "hash")',
    );
    expect(() => compileRedaction({ rules: [{ mode: 'keep', paths: ['a..b'] }] })).toThrow('audit.arguments.rules[0].paths[0]');
    expect(() => compileRedaction({ maxValueBytes: 10 })).toThrow('audit.arguments.maxValueBytes: must be at least 128');
  });
});

describe('bounded output and work', () => {
  it('cuts a long string with a marker carrying its full size and SHA-256', () => {
    const long = 'x'.repeat(10_000);
    const out = compileRedaction({ maxValueBytes: 512 }).redact('s', 't', long) as string;
    expect(Buffer.byteLength(out)).toBeLessThanOrEqual(512);
    expect(out.startsWith('xxxx')).toBe(true);
    expect(out).toMatch(new RegExp(`…\\[TRUNCATED 10000 bytes sha256:${sha256(long)}\\]$`));
  });

  it('cuts a string without splitting a multi-byte character', () => {
    const out = compileRedaction({ maxValueBytes: 256 }).redact('s', 't', 'é'.repeat(1000)) as string;
    expect(out).toMatch(/^(é)+…\[TRUNCATED 2000 bytes/);
    expect(out).not.toContain('\uFFFD');
  });

  it('hashes the redacted value, not the secret it held, when it cuts', () => {
    const value = `${'a'.repeat(3000)} password=${PASSWORD}`;
    const out = compileRedaction({ maxValueBytes: 1024 }).redact('s', 't', value) as string;
    expect(out).toContain(`sha256:${sha256(`${'a'.repeat(3000)} password=${REDACTED}`)}`);
  });

  it('cuts a whole argument object longer than maxValueBytes, keeping leading entries and a marker', () => {
    const args: Record<string, string> = {};
    for (let i = 0; i < 500; i++) args[`k${i}`] = `value-${i}`;
    const out = compileRedaction({ maxValueBytes: 1024 }).redact('s', 't', args) as Record<string, unknown>;
    expect(Buffer.byteLength(json(out))).toBeLessThanOrEqual(1024);
    expect(out['k0']).toBe('value-0');
    expect(out['k499']).toBeUndefined();
    expect(out[TRUNCATED_KEY]).toBe(`[TRUNCATED ${Buffer.byteLength(json(args))} bytes sha256:${sha256(json(args))}]`);
  });

  it('keeps the start of one huge field rather than dropping it whole', () => {
    const out = plain.redact('s', 't', { text: 'y'.repeat(100_000) }) as Record<string, unknown>;
    expect(Buffer.byteLength(json(out))).toBeLessThanOrEqual(2048);
    expect(out['text']).toMatch(/^y{1000,}…\[TRUNCATED 100000 bytes sha256:[0-9a-f]{64}\]$/);
  });

  it('replaces containers nested deeper than 16 levels with a marker', () => {
    let deep: unknown = 'leaf';
    for (let i = 0; i < 5000; i++) deep = { d: deep };
    const out = json(compileRedaction({ maxValueBytes: 1_000_000 }).redact('s', 't', deep));
    expect(out).toContain(TRUNCATED_DEPTH);
    expect(out.match(/\{/g)?.length).toBe(16);
    expect(out).not.toContain('leaf');
  });

  it('survives a cycle (hostile embedder input) by hitting the depth limit', () => {
    const a: Record<string, unknown> = { name: 'a' };
    a['self'] = a;
    expect(json(plain.redact('s', 't', a))).toContain(TRUNCATED_DEPTH);
  });

  it('visits at most maxNodes values, marking where it stopped', () => {
    const wide = Array.from({ length: 100_000 }, (_, i) => i);
    const out = compileRedaction({ maxValueBytes: 1_000_000 }, { maxNodes: 100 }).redact('s', 't', wide) as unknown[];
    expect(out).toHaveLength(100);
    expect(out[out.length - 1]).toBe(TRUNCATED_NODES);
  });

  it('scans hostile strings in linear time', () => {
    // Shapes that make backtracking patterns quadratic: repeated prefixes, dots, scheme separators.
    const hostile = ['eyJ'.repeat(300_000), 'a.'.repeat(500_000), '://'.repeat(300_000), '-----BEGIN '.repeat(90_000), 'token: '.repeat(140_000)];
    for (const text of hostile) {
      const started = performance.now();
      plain.redact('s', 't', { text });
      // About 100 ms on a laptop; a quadratic scan of 1 MB takes minutes.
      expect(performance.now() - started).toBeLessThan(2000);
    }
  });

  it('never mutates its input', () => {
    const args = {
      password: 'x',
      nested: { token: 'ghp_0123456789abcdefghijABCDEFGHIJ012345', list: [1, 'Bearer abcdefghijkl'] },
      long: 'z'.repeat(5000),
    };
    const before = structuredClone(args);
    const outputs = [
      plain.redact('s', 't', args),
      compileRedaction({ mode: 'hash' }).redact('s', 't', args),
      compileRedaction({ rules: [{ mode: 'keep', paths: ['nested.list'] }] }).redact('s', 't', args),
    ];
    expect(args).toStrictEqual(before);
    for (const out of outputs) {
      expect(typeof out).toBe('object');
      expect(out).not.toBe(args);
      expect((out as { nested: unknown }).nested).not.toBe(args.nested);
    }
  });

  it('keeps a "__proto__" key as data instead of changing the prototype', () => {
    const args = JSON.parse('{"__proto__": {"polluted": true}, "a": 1}') as unknown;
    const out = plain.redact('s', 't', args) as Record<string, unknown>;
    expect(Object.getPrototypeOf(out)).toBe(Object.prototype);
    expect(json(out)).toBe('{"__proto__":{"polluted":true},"a":1}');
  });

  it('turns what JSON cannot carry into what JSON.stringify would write', () => {
    expect(plain.redact('s', 't', { n: Number.NaN, big: 10n ** 30n, f: () => 1, u: undefined })).toEqual({
      n: null,
      big: '1000000000000000000000000000000',
    });
  });
});

describe('audit.schema.json', () => {
  const ajv = new Ajv2020({ allErrors: true, useDefaults: true, strict: true });
  addFormats.default(ajv);
  const validate = ajv.compile(auditSchema);

  const errors = (doc: unknown): string[] =>
    validate(structuredClone(doc)) ? [] : (validate.errors ?? []).map((e) => `${e.instancePath} ${e.message ?? ''}`);

  it('accepts the documented example and fills in defaults', () => {
    const doc = {
      format: 'ocsf',
      sink: { type: 'file', path: '/var/log/mcp-ext-proc/audit.jsonl', maxBytes: 104857600, maxFiles: 10 },
      includeEmail: false,
      arguments: {
        mode: 'keep',
        maxValueBytes: 2048,
        rules: [
          { servers: ['github'], tools: ['create_*'], mode: 'keep', paths: ['repo', 'title', 'labels'] },
          { tools: ['login'], mode: 'drop' },
          { servers: ['crm'], mode: 'hash' },
        ],
      },
    };
    expect(errors(doc)).toEqual([]);
    const withDefaults: Record<string, unknown> = { arguments: {} };
    expect(validate(withDefaults)).toBe(true);
    expect(withDefaults).toEqual({ format: 'native', includeEmail: true, includeGroups: true, arguments: { mode: 'keep', maxValueBytes: 2048 } });
  });

  it.each([
    ['an unknown field', { sink: { type: 'stdout', colour: 'red' } }, 'must NOT have additional properties'],
    ['an unknown format', { format: 'cef' }, '/format must be equal to one of the allowed values'],
    ['a file sink without a path', { sink: { type: 'file' } }, "must have required property 'path'"],
    ['a stdout sink with file settings', { sink: { type: 'stdout', maxFiles: 3 } }, '/sink must NOT be valid'],
    ['paths on a hash rule', { arguments: { rules: [{ mode: 'hash', paths: ['a'] }] } }, '/arguments/rules/0/mode must be equal to constant'],
    ['a rule without a mode', { arguments: { rules: [{ tools: ['x'] }] } }, "must have required property 'mode'"],
    ['an empty path segment', { arguments: { rules: [{ mode: 'keep', paths: ['a..b'] }] } }, '/arguments/rules/0/paths/0 must match pattern'],
    ['a tiny maxValueBytes', { arguments: { maxValueBytes: 16 } }, '/arguments/maxValueBytes must be >= 128'],
  ])('rejects %s', (_what, doc, message) => {
    expect(errors(doc).join('\n')).toContain(message);
  });

  it('describes every field and allows no other', () => {
    const missing: string[] = [];
    // Subschemas of if/then/else/not/anyOf restate fields to test them; the fields' own schemas describe them.
    const visit = (node: unknown, where: string, restating: boolean): void => {
      if (typeof node !== 'object' || node === null) return;
      const n = node as Record<string, unknown>;
      if (!restating && n['properties'] !== undefined && n['additionalProperties'] !== false) missing.push(`${where} (additionalProperties)`);
      for (const [name, child] of Object.entries((n['properties'] ?? {}) as Record<string, unknown>)) {
        if (!restating && typeof (child as Record<string, unknown>)['description'] !== 'string') missing.push(`${where}/${name}`);
        visit(child, `${where}/${name}`, restating);
      }
      for (const [name, child] of Object.entries((n['$defs'] ?? {}) as Record<string, unknown>)) visit(child, `#/$defs/${name}`, false);
      visit(n['items'], `${where}[]`, restating);
      for (const key of ['if', 'then', 'else', 'not']) visit(n[key], `${where}/${key}`, true);
      for (const sub of (n['anyOf'] ?? []) as unknown[]) visit(sub, `${where}/anyOf`, true);
    };
    visit(auditSchema, '#', false);
    expect(missing).toEqual([]);
  });
});
