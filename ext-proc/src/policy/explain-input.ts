// The shape of an "explain" question as people write it (CLI flags, admin API JSON), turned into the
// policy's request. Shared by the CLI (offline) and the admin endpoint (live document).

import type { Caller } from '../identity/principal.ts';
import type { GovernedMethod, PolicyRequest } from './types.ts';

const METHODS: readonly GovernedMethod[] = ['tools/call', 'prompts/get', 'resources/read', 'completion/complete'];

export class ExplainInputError extends Error {
  override readonly name = 'ExplainInputError';
}

function str(v: unknown, field: string): string {
  if (typeof v !== 'string' || v === '') throw new ExplainInputError(`${field} must be a non-empty string`);
  return v;
}

function strings(v: unknown, field: string): string[] {
  if (v === undefined) return [];
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) throw new ExplainInputError(`${field} must be a list of strings`);
  return v;
}

/**
 * Validates a question from outside (JSON) and builds the policy request. Shape:
 * `{ server, method? (default tools/call), name, arguments?, user: { subject, issuer?, issuerName?,
 * email?, groups?, scopes?, claims? }, agent?: { id?, clientId?, spiffeId? } }`.
 */
export function toPolicyRequest(input: unknown): PolicyRequest {
  if (typeof input !== 'object' || input === null) throw new ExplainInputError('the question must be a JSON object');
  const q = input as Record<string, unknown>;
  const method = q['method'] ?? 'tools/call';
  if (!METHODS.includes(method as GovernedMethod)) throw new ExplainInputError(`method must be one of ${METHODS.join(', ')}`);
  const args = q['arguments'];
  if (args !== undefined && (typeof args !== 'object' || args === null || Array.isArray(args))) throw new ExplainInputError('arguments must be a JSON object');
  const user = q['user'];
  if (typeof user !== 'object' || user === null) throw new ExplainInputError('user must be an object with at least a subject');
  const u = user as Record<string, unknown>;
  const a = (q['agent'] ?? {}) as Record<string, unknown>;
  const clientId = typeof a['clientId'] === 'string' ? a['clientId'] : undefined;
  const spiffeId = typeof a['spiffeId'] === 'string' ? a['spiffeId'] : undefined;
  const claims = typeof u['claims'] === 'object' && u['claims'] !== null ? (u['claims'] as Record<string, unknown>) : {};
  const caller: Caller = {
    user: {
      issuerName: typeof u['issuerName'] === 'string' ? u['issuerName'] : '',
      issuer: typeof u['issuer'] === 'string' ? u['issuer'] : '',
      subject: str(u['subject'], 'user.subject'),
      email: typeof u['email'] === 'string' ? u['email'] : undefined,
      groups: strings(u['groups'], 'user.groups'),
      scopes: strings(u['scopes'], 'user.scopes'),
      tokenId: undefined,
      issuedAt: undefined,
      expiresAt: Number.MAX_SAFE_INTEGER,
      claims,
    },
    agent: { clientId, spiffeId, id: typeof a['id'] === 'string' ? a['id'] : (spiffeId ?? clientId ?? '') },
  };
  return {
    server: str(q['server'], 'server'),
    method: method as GovernedMethod,
    name: str(q['name'], 'name'),
    arguments: (args as Record<string, unknown> | undefined) ?? {},
    caller,
  };
}
