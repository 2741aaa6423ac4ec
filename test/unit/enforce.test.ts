import { describe, expect, it } from 'vitest';
import type { Caller } from '../../ext-proc/src/identity/principal.ts';
import { parseJsonRpc } from '../../ext-proc/src/mcp/jsonrpc.ts';
import { compilePolicy } from '../../ext-proc/src/policy/compile.ts';
import { filterListResult, policyRequestFor } from '../../ext-proc/src/policy/enforce.ts';

const caller: Caller = {
  user: { issuerName: 'idp', issuer: 'https://idp', subject: 'alice', email: undefined, groups: ['analysts'], scopes: [], tokenId: undefined, issuedAt: undefined, expiresAt: 2e9, claims: {} },
  agent: { clientId: 'agent-a', spiffeId: undefined, id: 'agent-a' },
};

const policy = compilePolicy(
  {
    rules: [
      { id: 'public', effect: 'allow', match: { names: ['pub_*', 'file:///public/*', 'greeting'] } },
      { id: 'templates', effect: 'allow', match: { methods: ['resources/read'], names: ['demo://item/{id}'] } },
    ],
  },
  { servers: new Set(['s']) },
);

function request(text: string) {
  const m = parseJsonRpc(text).messages[0];
  if (m === undefined) throw new Error('no message');
  return policyRequestFor(m, 's', caller);
}

describe('which requests the policy governs', () => {
  it('asks about tools, prompts, resources and completions by their name', () => {
    expect(request('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":1}}}')).toMatchObject({ method: 'tools/call', name: 't', arguments: { a: 1 } });
    expect(request('{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p"}}')).toMatchObject({ method: 'prompts/get', name: 'p', arguments: {} });
    expect(request('{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///x"}}')).toMatchObject({ method: 'resources/read', name: 'file:///x' });
    expect(request('{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"greeting"},"argument":{"name":"n","value":"a"}}}')).toMatchObject({
      method: 'completion/complete',
      name: 'greeting',
      arguments: { name: 'n', value: 'a' },
    });
  });

  it('leaves other methods to the server', () => {
    expect(request('{"jsonrpc":"2.0","id":1,"method":"tools/list"}')).toBeUndefined();
    expect(request('{"jsonrpc":"2.0","id":1,"method":"ping"}')).toBeUndefined();
  });
});

describe('list filtering', () => {
  it('keeps only what could be called, and every other field (cursor included)', () => {
    const result = { tools: [{ name: 'pub_a' }, { name: 'secret' }, { name: 'pub_b' }, { nameless: true }], nextCursor: 'c2', _meta: { x: 1 } };
    expect(filterListResult('tools/list', result, 's', caller, policy, { privateCache: false })).toEqual({ tools: [{ name: 'pub_a' }, { name: 'pub_b' }], nextCursor: 'c2', _meta: { x: 1 } });
  });

  it('filters resources by URI, templates by their template, prompts by name', () => {
    const resources = { resources: [{ uri: 'file:///public/a' }, { uri: 'file:///private/b' }] };
    expect(filterListResult('resources/list', resources, 's', caller, policy, { privateCache: false })).toEqual({ resources: [{ uri: 'file:///public/a' }] });
    const templates = { resourceTemplates: [{ uriTemplate: 'demo://item/{id}' }, { uriTemplate: 'other://{x}' }] };
    expect(filterListResult('resources/templates/list', templates, 's', caller, policy, { privateCache: false })).toEqual({ resourceTemplates: [{ uriTemplate: 'demo://item/{id}' }] });
    const prompts = { prompts: [{ name: 'greeting' }, { name: 'summarize' }] };
    expect(filterListResult('prompts/list', prompts, 's', caller, policy, { privateCache: false })).toEqual({ prompts: [{ name: 'greeting' }] });
  });

  it('returns nothing when nothing changes, so the original bytes go through', () => {
    expect(filterListResult('tools/list', { tools: [{ name: 'pub_a' }] }, 's', caller, policy, { privateCache: false })).toBeUndefined();
  });

  it('marks a per-caller list private where the protocol has cacheScope', () => {
    expect(filterListResult('tools/list', { tools: [{ name: 'pub_a' }], cacheScope: 'public', ttlMs: 1000 }, 's', caller, policy, { privateCache: true })).toEqual({
      tools: [{ name: 'pub_a' }],
      cacheScope: 'private',
      ttlMs: 1000,
    });
  });
});
