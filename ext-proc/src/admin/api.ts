// The admin API on the admin port: revocation (by token id, subject or agent) and explain. Every call
// carries a bearer token for identity.adminAudience from a user in one of identity.adminGroups.

import type { IncomingMessage, ServerResponse } from 'node:http';
import type { CompiledDocument } from '../config/document.ts';
import { GatewayError } from '../errors.ts';
import type { Caller } from '../identity/principal.ts';
import type { Revocation, Revocations } from '../identity/revocation.ts';
import type { TokenVerifier } from '../identity/verifier.ts';
import { ExplainInputError, toPolicyRequest } from '../policy/explain-input.ts';

export interface AdminApiContext {
  readonly document: () => CompiledDocument;
  readonly verifier: () => TokenVerifier | undefined;
  readonly revocations: Revocations;
  /** Called after a revocation was recorded (the audit trail and logs hear of it). */
  readonly revoked: (r: Revocation, by: Caller) => void;
}

const MAX_BODY_BYTES = 64 * 1024;

class HttpError extends Error {
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.status = status;
  }
}

function send(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' }).end(`${JSON.stringify(body)}\n`);
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) throw new HttpError(413, `request body over ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk as Buffer);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
  } catch {
    throw new HttpError(400, 'request body is not JSON');
  }
}

async function admin(ctx: AdminApiContext, req: IncomingMessage): Promise<Caller> {
  const identity = ctx.document().identity;
  const verifier = ctx.verifier();
  if (identity?.adminAudience === undefined || verifier === undefined || identity.adminGroups.length === 0) {
    throw new HttpError(403, 'the admin API needs identity.adminAudience and identity.adminGroups in the governance document');
  }
  const m = /^Bearer\s+(\S+)$/i.exec(req.headers.authorization ?? '');
  if (m?.[1] === undefined) throw new HttpError(401, 'a bearer token is required');
  let caller: Caller;
  try {
    caller = await verifier.verify(m[1], identity.adminAudience);
    await ctx.revocations.check(caller);
  } catch (err) {
    if (err instanceof GatewayError) throw new HttpError(err.spec.httpStatus === 401 ? 401 : err.spec.httpStatus, `${err.message} (${err.code})`);
    throw err;
  }
  if (!caller.user.groups.some((g) => identity.adminGroups.includes(g))) {
    throw new HttpError(403, `user ${caller.user.subject} is in none of the admin groups`);
  }
  return caller;
}

function revocationOf(body: unknown): Revocation {
  const b = (typeof body === 'object' && body !== null ? body : {}) as Record<string, unknown>;
  const s = (k: string): string => {
    const v = b[k];
    if (typeof v !== 'string' || v === '') throw new HttpError(400, `"${k}" must be a non-empty string`);
    return v;
  };
  switch (b['kind']) {
    case 'token':
      return { kind: 'token', tokenId: s('tokenId') };
    case 'subject':
      return { kind: 'subject', issuer: s('issuer'), subject: s('subject') };
    case 'agent':
      return { kind: 'agent', agentId: s('agentId') };
    default:
      throw new HttpError(400, '"kind" must be "token", "subject" or "agent"');
  }
}

/** Handles /revocations and /explain; returns false for other paths. */
export async function handleAdminApi(ctx: AdminApiContext, req: IncomingMessage, res: ServerResponse, path: string): Promise<boolean> {
  if (path !== '/revocations' && path !== '/explain') return false;
  try {
    if (path === '/revocations' && req.method === 'POST') {
      const by = await admin(ctx, req);
      const r = revocationOf(await readJson(req));
      await ctx.revocations.revoke(r);
      ctx.revoked(r, by);
      send(res, 201, { revoked: r });
    } else if (path === '/revocations' && req.method === 'GET') {
      await admin(ctx, req);
      send(res, 200, { revocations: await ctx.revocations.list() });
    } else if (path === '/explain' && req.method === 'POST') {
      await admin(ctx, req);
      const policy = ctx.document().policy;
      if (policy === undefined) throw new HttpError(404, 'the governance document has no policy: every authenticated caller may use every server');
      send(res, 200, policy.explain(toPolicyRequest(await readJson(req))));
    } else {
      send(res, 405, { error: `${req.method ?? ''} is not supported on ${path}` });
    }
  } catch (err) {
    if (err instanceof HttpError) send(res, err.status, { error: err.message });
    else if (err instanceof ExplainInputError) send(res, 400, { error: err.message });
    else if (err instanceof GatewayError) send(res, err.spec.httpStatus, { error: `${err.message} (${err.code})` });
    else send(res, 500, { error: 'internal error' });
  }
  return true;
}
