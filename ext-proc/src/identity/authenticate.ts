// Verify → revocation check → Caller, or a typed error carrying the challenge a client needs to
// (re)authorize. Framework-free: the Envoy phase turns the error into the 401/503 answer.

import type { ServerSpec } from '../config/document.ts';
import { GatewayError } from '../errors.ts';
import type { Caller } from './principal.ts';
import { resourceMetadataUrl } from './resource-metadata.ts';
import type { Revocations } from './revocation.ts';
import type { TokenVerifier } from './verifier.ts';

const BEARER = /^Bearer[ \t]+([A-Za-z0-9\-._~+/]+=*)[ \t]*$/i;

export interface AuthenticationInput {
  readonly server: ServerSpec & { resource: string };
  readonly authorization: string | undefined;
  /** spiffe://… of the peer workload, when Envoy terminated mTLS. */
  readonly spiffeId: string | undefined;
}

export type RevocationCheckResult = 'passed' | 'revoked' | 'unavailable' | 'skipped';

export async function authenticate(
  input: AuthenticationInput,
  verifier: TokenVerifier,
  revocations: Revocations,
  onRevocationCheck: (r: RevocationCheckResult) => void = () => undefined,
): Promise<Caller> {
  const resourceMetadata = resourceMetadataUrl(input.server.resource);
  const scope = input.server.scopes.join(' ');
  const match = input.authorization === undefined ? null : BEARER.exec(input.authorization);
  if (match?.[1] === undefined) {
    const message = input.authorization === undefined ? 'a bearer token is required' : 'the Authorization header is not a bearer token';
    // No error code in the challenge when no token came: RFC 6750 §3.1.
    throw new GatewayError(input.authorization === undefined ? 'ERR_IDENTITY_MISSING' : 'ERR_IDENTITY_INVALID', message, {
      challenge: { resourceMetadata, scope, error: input.authorization === undefined ? undefined : 'invalid_token' },
    });
  }
  let caller: Caller;
  try {
    caller = await verifier.verify(match[1], input.server.resource, input.spiffeId);
  } catch (err) {
    if (err instanceof GatewayError && err.spec.httpStatus === 401) {
      throw err.with({ challenge: { resourceMetadata, scope, error: 'invalid_token' } });
    }
    throw err;
  }
  try {
    const check = await revocations.check(caller);
    onRevocationCheck(check.checked ? 'passed' : 'skipped');
  } catch (err) {
    onRevocationCheck(err instanceof GatewayError && err.code === 'ERR_IDENTITY_REVOKED' ? 'revoked' : 'unavailable');
    if (err instanceof GatewayError && err.spec.httpStatus === 401) {
      throw err.with({ challenge: { resourceMetadata, scope, error: 'invalid_token' } });
    }
    throw err;
  }
  return caller;
}
