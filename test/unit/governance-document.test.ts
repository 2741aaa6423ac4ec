import { describe, expect, it } from 'vitest';
import { ConfigError, parseGovernance } from '../../ext-proc/src/config/document.ts';

const parse = (text: string) => parseGovernance(text, 'gov.yaml');

function problem(text: string): string {
  try {
    parse(text);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message;
  }
  throw new Error('document was accepted');
}

describe('governance document', () => {
  it('finds a server by the longest matching path prefix', () => {
    const doc = parse(`
apiVersion: mcp-ext-proc/v1
servers:
  - { name: a, pathPrefixes: [/mcp] }
  - { name: b, pathPrefixes: [/mcp/b/] }
`);
    expect(doc.serverForPath('/mcp/b/x')?.name).toBe('b');
    expect(doc.serverForPath('/mcp/c')?.name).toBe('a');
    expect(doc.serverForPath('/other')).toBeUndefined();
    expect(doc.maxRequestBodyBytes).toBe(1048576);
  });

  it.each([
    ['an unknown field, naming it and where it is', 'apiVersion: mcp-ext-proc/v1\nservers:\n  - { name: a, pathPrefx: [/a] }\n', 'gov.yaml: servers[0]: unknown field "pathPrefx"'],
    ['a missing apiVersion', 'servers:\n  - { name: a }\n', '(document): missing required field "apiVersion"'],
    ['a wrong apiVersion', 'apiVersion: v2\nservers:\n  - { name: a }\n', 'apiVersion: must be "mcp-ext-proc/v1"'],
    ['a prefix that is not a path', 'apiVersion: mcp-ext-proc/v1\nservers:\n  - { name: a, pathPrefixes: [mcp] }\n', 'servers[0].pathPrefixes[0]: must match pattern'],
    ['a limit of the wrong type', 'apiVersion: mcp-ext-proc/v1\nservers: [{ name: a }]\nlimits: { maxRequestBodyBytes: big }\n', 'limits.maxRequestBodyBytes: must be integer'],
    ['a server listed twice', 'apiVersion: mcp-ext-proc/v1\nservers: [{ name: a }, { name: a }]\n', 'servers[1].name: "a" is listed twice'],
    ['a prefix claimed by two servers', 'apiVersion: mcp-ext-proc/v1\nservers: [{ name: a, pathPrefixes: [/x] }, { name: b, pathPrefixes: [/x] }]\n', 'servers[1].pathPrefixes: "/x" is already a prefix of server "a"'],
    ['YAML that does not parse', 'apiVersion: [unclosed\n', 'gov.yaml: YAML syntax error'],
    ['a key given twice', 'apiVersion: mcp-ext-proc/v1\napiVersion: mcp-ext-proc/v1\nservers: [{ name: a }]\n', 'YAML syntax error'],
  ])('rejects %s', (_what, text, expected) => {
    expect(problem(text)).toContain(expected);
  });

  it('accepts the example document shipped with the project', async () => {
    const { loadGovernance } = await import('../../ext-proc/src/config/document.ts');
    const doc = loadGovernance(new URL('../../ext-proc/examples/governance.yaml', import.meta.url).pathname);
    expect(doc.servers.size).toBeGreaterThan(0);
  });
});

describe('the README', () => {
  it('shows a worked example document that compiles', async () => {
    const { readFileSync } = await import('node:fs');
    const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
    const example = /A worked example[^\n]*\n\n```yaml\n([\s\S]*?)```/.exec(readme)?.[1];
    expect(example).toBeDefined();
    const doc = parse(example ?? '');
    expect([...doc.servers.keys()]).toEqual(['weather', 'github', 'docs']);
    expect(doc.policy).toBeDefined();
    expect(doc.identity?.issuers.map((i) => i.name)).toEqual(['okta', 'entra']);
  });

  it('shows an audit section that validates', async () => {
    const { readFileSync } = await import('node:fs');
    const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
    const example = /### Where records go\n\n```yaml\n([\s\S]*?)```/.exec(readme)?.[1];
    expect(example).toBeDefined();
    const doc = parse(`apiVersion: mcp-ext-proc/v1\nservers: [{ name: github }, { name: crm }]\n${example ?? ''}`);
    expect(doc.audit.format).toBe('native');
    expect(doc.audit.redactor.redact('crm', 'x', { a: 'b' })).not.toEqual({ a: 'b' });
  });

  it('rejects a policy with an unknown field or a condition that does not parse, naming the rule', () => {
    const base = 'apiVersion: mcp-ext-proc/v1\nservers: [{ name: a }]\npolicy:\n  rules:\n';
    expect(problem(`${base}    - { id: r1, effect: allow, match: { toolz: [x] } }\n`)).toContain('unknown field "toolz"');
    expect(problem(`${base}    - { id: r1, effect: allow, when: "arguments.x +" }\n`)).toContain('policy.rules[0] (id "r1").when');
    expect(problem(`${base}    - { id: r1, effect: allow, match: { servers: [nope] } }\n`)).toContain('nope');
  });
});
