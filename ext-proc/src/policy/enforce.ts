// Where MCP messages meet the policy: which requests are governed, and how list results are cut down
// with the same predicate that authorizes calls, so a client is never shown what calling would deny.
// Pure: no I/O.

import type { Caller } from '../identity/principal.ts';
import type { RpcMessage } from '../mcp/jsonrpc.ts';
import type { CompiledPolicy, Decision, GovernedMethod, PolicyRequest } from './types.ts';

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The policy question a client request asks, or undefined for methods the policy does not govern. */
export function policyRequestFor(m: RpcMessage, server: string, caller: Caller): PolicyRequest | undefined {
  const params = m.params;
  switch (m.method) {
    case 'tools/call':
    case 'prompts/get': {
      const args = params?.['arguments'];
      return { server, method: m.method, name: m.name ?? '', arguments: isRecord(args) ? args : {}, caller };
    }
    case 'resources/read':
      return { server, method: 'resources/read', name: m.name ?? '', arguments: {}, caller };
    case 'completion/complete': {
      // Completing an argument of a prompt or resource template reveals what it accepts: governed by name.
      const ref = params?.['ref'];
      const name = isRecord(ref) ? (ref['name'] ?? ref['uri']) : undefined;
      const argument = params?.['argument'];
      return { server, method: 'completion/complete', name: typeof name === 'string' ? name : '', arguments: isRecord(argument) ? argument : {}, caller };
    }
    default:
      return undefined;
  }
}

/** For each list method: the array in its result, the call that item stands for, and the item's name. */
const LISTS: Record<string, { field: string; method: GovernedMethod; key: string }> = {
  'tools/list': { field: 'tools', method: 'tools/call', key: 'name' },
  'prompts/list': { field: 'prompts', method: 'prompts/get', key: 'name' },
  'resources/list': { field: 'resources', method: 'resources/read', key: 'uri' },
  'resources/templates/list': { field: 'resourceTemplates', method: 'resources/read', key: 'uriTemplate' },
};

export function isFilteredList(method: string | undefined): boolean {
  return method !== undefined && method in LISTS;
}

/**
 * The list result with only the items the caller could use (arguments unknown: "could a call be
 * allowed?"), or undefined when nothing had to go. Cursors and every other field stay as they were.
 */
export function filterListResult(
  method: string,
  result: unknown,
  server: string,
  caller: Caller,
  policy: CompiledPolicy,
  options: { privateCache: boolean },
): Record<string, unknown> | undefined {
  const list = LISTS[method];
  if (list === undefined || !isRecord(result)) return undefined;
  const items = result[list.field];
  if (!Array.isArray(items)) return undefined;
  const kept = items.filter((item: unknown) => {
    const name = isRecord(item) ? item[list.key] : undefined;
    if (typeof name !== 'string') return false; // an item we cannot name cannot be authorized
    return policy.decide({ server, method: list.method, name, arguments: undefined, caller }).effect === 'allow';
  });
  const cacheMarked = options.privateCache && result['cacheScope'] !== 'private';
  if (kept.length === items.length && !cacheMarked) return undefined;
  // Per-caller lists must not be served from shared caches (2026-07-28 caching rules).
  return { ...result, [list.field]: kept, ...(options.privateCache ? { cacheScope: 'private' } : {}) };
}

/** A denial's answer to the client: the rule and the reason, never the arguments. */
export function denialMessage(d: Decision, request: PolicyRequest): string {
  const what = `${request.method} ${request.name}`.trim();
  return `denied by policy${d.ruleId === undefined ? '' : ` rule "${d.ruleId}"`}: ${d.reason} (${what} on ${request.server})`;
}
