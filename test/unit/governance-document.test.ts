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

describe('servers[].credential', () => {
  const OKTA = 'identity:\n  issuers:\n    - { name: okta, issuer: https://okta.example.com }\n';
  const TWO_ISSUERS = `${OKTA}    - { name: entra, issuer: https://login.example.net/tenant/v2.0 }\n`;
  const CLIENT = 'client: { id: mcp-gateway, secret: { env: MCP_GATEWAY_CLIENT_SECRET } }';

  /** One server `a` (authenticated when an identity section is given) with this credential. */
  function doc(credential: string, options: { identity?: string; server?: string } = {}): string {
    const identity = options.identity ?? '';
    const server = options.server ?? (identity === '' ? '' : 'resource: https://mcp.example.com/a/mcp, ');
    return `apiVersion: mcp-ext-proc/v1\n${identity}servers:\n  - { name: a, ${server}credential: ${credential} }\n`;
  }

  function plan(text: string) {
    const server = parse(text).servers.get('a');
    if (server === undefined) throw new Error('server a missing');
    return server.credential;
  }

  it('gives a server without a credential, or with type none, nothing', () => {
    expect(parse('apiVersion: mcp-ext-proc/v1\nservers: [{ name: a }]\n').servers.get('a')?.credential).toEqual({ kind: 'none' });
    expect(plan(doc('{ type: none }'))).toEqual({ kind: 'none' });
  });

  it('compiles a static secret into Authorization with a Bearer prefix by default, without reading it', () => {
    const p = plan(doc('{ type: staticSecret, secret: { env: MCP_EXT_PROC_TEST_NEVER_SET } }'));
    expect(p).toMatchObject({ kind: 'staticSecret', header: 'authorization', prefix: 'Bearer ' });
    if (p.kind !== 'staticSecret') throw new Error(p.kind);
    expect(p.secret.describe()).toBe('environment variable MCP_EXT_PROC_TEST_NEVER_SET');
  });

  it('puts a static secret in a custom header as is, the header name lower-cased', () => {
    expect(plan(doc('{ type: staticSecret, secret: { file: /var/run/secrets/weather/key }, header: X-Api-Key }'))).toMatchObject({
      kind: 'staticSecret',
      header: 'x-api-key',
      prefix: '',
    });
    expect(plan(doc('{ type: staticSecret, secret: { env: K }, header: Authorization, prefix: "Token " }'))).toMatchObject({ header: 'authorization', prefix: 'Token ' });
  });

  it('compiles a token exchange with the only issuer, its target, sorted scopes and the default timings', () => {
    const p = plan(doc(`{ type: tokenExchange, audience: api://github-mcp, resource: https://github-mcp.internal/mcp, scopes: [repo.write, repo.read], ${CLIENT} }`, { identity: OKTA }));
    expect(p).toMatchObject({
      kind: 'tokenExchange',
      header: 'authorization',
      prefix: 'Bearer ',
      audience: 'api://github-mcp',
      resource: 'https://github-mcp.internal/mcp',
      scopes: ['repo.read', 'repo.write'],
      timeoutMs: 3000,
      marginMs: 30_000,
      subjectTokenType: 'urn:ietf:params:oauth:token-type:access_token',
    });
    if (p.kind !== 'tokenExchange') throw new Error(p.kind);
    // The issuer's URL (for discovery) and the client are part of what distinguishes cached credentials.
    expect(p.fingerprint).toEqual(expect.arrayContaining(['tokenExchange', 'https://okta.example.com', 'mcp-gateway']));
  });

  it('compiles a token exchange into a custom header, with the jwt subject token type and tuned timings', () => {
    const p = plan(
      doc(`{ type: tokenExchange, issuer: entra, audience: x, header: X-Downstream-Token, subjectTokenType: jwt, timeoutMs: 1500, refreshBeforeExpirySeconds: 5, ${CLIENT} }`, {
        identity: TWO_ISSUERS,
      }),
    );
    expect(p).toMatchObject({ kind: 'tokenExchange', header: 'x-downstream-token', prefix: '', timeoutMs: 1500, marginMs: 5000, subjectTokenType: 'urn:ietf:params:oauth:token-type:jwt' });
    if (p.kind !== 'tokenExchange') throw new Error(p.kind);
    expect(p.fingerprint).toContain('https://login.example.net/tenant/v2.0');
  });

  it('takes a token endpoint instead of an issuer, even with several issuers', () => {
    const p = plan(doc(`{ type: tokenExchange, tokenEndpoint: https://idp.example.com/oauth/token, resource: https://github-mcp.internal/mcp, ${CLIENT} }`, { identity: TWO_ISSUERS }));
    expect(p.kind).toBe('tokenExchange');
    if (p.kind !== 'tokenExchange') throw new Error(p.kind);
    expect(p.fingerprint).toContain('https://idp.example.com/oauth/token');
  });

  it('uses private_key_jwt when only a private key is given', () => {
    const p = plan(doc('{ type: tokenExchange, audience: x, client: { id: gw, privateKey: { file: /var/run/secrets/gw/key.pem }, keyId: gw-1 } }', { identity: OKTA }));
    expect(p).toMatchObject({ kind: 'tokenExchange', header: 'authorization', prefix: 'Bearer ' });
  });

  it('compiles client credentials with a lower-cased user header naming the subject by default', () => {
    const p = plan(doc(`{ type: clientCredentials, resource: https://reporting.internal/mcp, ${CLIENT}, userHeader: { name: X-Mcp-User } }`, { identity: OKTA }));
    expect(p).toMatchObject({ kind: 'clientCredentials', header: 'authorization', prefix: 'Bearer ', resource: 'https://reporting.internal/mcp', userHeader: { name: 'x-mcp-user', value: 'subject' } });
    expect(plan(doc(`{ type: clientCredentials, ${CLIENT}, userHeader: { name: X-Mcp-User, value: email } }`, { identity: OKTA }))).toMatchObject({ userHeader: { name: 'x-mcp-user', value: 'email' } });
  });

  it('compiles client credentials on an open server, with a token endpoint and no user header', () => {
    const p = plan(doc(`{ type: clientCredentials, tokenEndpoint: https://idp.example.com/token, ${CLIENT} }`));
    expect(p).toMatchObject({ kind: 'clientCredentials', header: 'authorization', prefix: 'Bearer ', userHeader: undefined });
  });

  it.each([
    ['an unknown type', doc('{ type: magic }'), 'servers[0].credential.type: must be equal to one of the allowed values'],
    ['an unknown field', doc('{ type: staticSecret, secret: { env: K }, heder: X-Api-Key }'), 'servers[0].credential: unknown field "heder"'],
    ['an unknown client field', doc('{ type: tokenExchange, audience: x, client: { id: gw, secret: { env: S }, scret: x } }', { identity: OKTA }), 'servers[0].credential.client: unknown field "scret"'],
    ['a secret both in the environment and in a file', doc('{ type: staticSecret, secret: { env: K, file: /run/k } }'), 'servers[0].credential.secret: must NOT have more than 1 properties'],
    ['a static secret without its secret', doc('{ type: staticSecret }'), 'servers[0].credential: missing required field "secret"'],
    ['a token exchange without an audience or a resource', doc(`{ type: tokenExchange, ${CLIENT} }`, { identity: OKTA }), 'servers[0].credential: tokenExchange needs an audience or a resource'],
    [
      'a token exchange on a server with authentication none',
      doc(`{ type: tokenExchange, audience: x, ${CLIENT} }`, { identity: OKTA, server: 'authentication: none, ' }),
      'servers[0].credential: tokenExchange needs an authenticated caller',
    ],
    ['a token exchange without an identity section', doc(`{ type: tokenExchange, audience: x, tokenEndpoint: https://idp.example.com/token, ${CLIENT} }`), 'servers[0].credential: tokenExchange needs an authenticated caller'],
    ['a token exchange naming an unknown issuer', doc(`{ type: tokenExchange, issuer: keycloak, audience: x, ${CLIENT} }`, { identity: OKTA }), 'servers[0].credential.issuer: no issuer named "keycloak" in identity.issuers'],
    ['no issuer and no token endpoint when there are two issuers', doc(`{ type: tokenExchange, audience: x, ${CLIENT} }`, { identity: TWO_ISSUERS }), 'servers[0].credential: name the issuer'],
    ['client credentials with neither an issuer section nor a token endpoint', doc(`{ type: clientCredentials, ${CLIENT} }`), 'servers[0].credential: name the issuer'],
    [
      'private_key_jwt without a private key',
      doc('{ type: tokenExchange, audience: x, client: { id: gw, authMethod: private_key_jwt, secret: { env: S } } }', { identity: OKTA }),
      'servers[0].credential.client.privateKey: required for private_key_jwt',
    ],
    ['client_secret_basic without a secret', doc('{ type: tokenExchange, audience: x, client: { id: gw } }', { identity: OKTA }), 'servers[0].credential.client.secret: required for client_secret_basic'],
    [
      'client_secret_post without a secret',
      doc('{ type: clientCredentials, client: { id: gw, authMethod: client_secret_post, privateKey: { env: K } } }', { identity: OKTA }),
      'servers[0].credential.client.secret: required for client_secret_post',
    ],
    [
      'a user header on an unauthenticated server',
      doc(`{ type: clientCredentials, ${CLIENT}, userHeader: { name: X-Mcp-User } }`, { identity: OKTA, server: 'authentication: none, ' }),
      'servers[0].credential.userHeader: needs an authenticated caller',
    ],
  ])('rejects %s, naming the field', (_what, text, expected) => {
    expect(problem(text)).toContain(`gov.yaml: ${expected}`);
  });

  it('names the right server when the second one is wrong', () => {
    const text = `apiVersion: mcp-ext-proc/v1\n${OKTA}servers:\n  - { name: a, resource: https://mcp.example.com/a/mcp }\n  - { name: b, resource: https://mcp.example.com/b/mcp, credential: { type: tokenExchange, client: { id: gw, secret: { env: S } } } }\n`;
    expect(problem(text)).toContain('servers[1].credential: tokenExchange needs an audience or a resource');
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
