// Who is calling: the user a verified token speaks for, and the agent (OAuth client or workload) that
// presents it. Built once per token by the verifier; read by policy, session binding and audit.

export interface Principal {
  /** The configured name of the issuer that vouched for this user (identity.issuers[].name). */
  readonly issuerName: string;
  /** `iss` claim. */
  readonly issuer: string;
  /** Subject per the issuer's claim mapping (default `sub`). */
  readonly subject: string;
  readonly email: string | undefined;
  readonly groups: readonly string[];
  readonly scopes: readonly string[];
  /** `jti`, when the token has one (revocation by token id needs it). */
  readonly tokenId: string | undefined;
  /** `iat` and `exp`, seconds since the epoch. */
  readonly issuedAt: number | undefined;
  readonly expiresAt: number;
  /** Every claim of the token, for policy conditions (`user.claims.department`). */
  readonly claims: Readonly<Record<string, unknown>>;
}

export interface Agent {
  /** The OAuth client the token was issued to (`azp` or `client_id`, per the issuer's mapping). */
  readonly clientId: string | undefined;
  /** A workload identity from mTLS (spiffe://…), when Envoy reports one. */
  readonly spiffeId: string | undefined;
  /** What policies name: the SPIFFE ID if there is one, else the client id, else "". */
  readonly id: string;
}

export interface Caller {
  readonly user: Principal;
  readonly agent: Agent;
}

/** A stable key for "the same user" across tokens: issuer and subject. */
export function principalKey(p: Principal): string {
  return `${p.issuer}|${p.subject}`;
}
