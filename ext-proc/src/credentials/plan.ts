// What each MCP server gets in place of the caller's token, compiled from servers[].credential:
//
//   none               nothing (the caller's Authorization is removed, as always)
//   staticSecret       a secret from the environment or a mounted file, in a configured header
//   tokenExchange      RFC 8693: the caller's token exchanged at the IdP for one made for this server
//   clientCredentials  the gateway's own token for this server (optionally naming the user in a header)

import type { IssuerSpec } from '../identity/verifier.ts';
import { Secret, type SecretRef } from './secret.ts';
import { TokenEndpoint, type ClientAuthMethod } from './token-endpoint.ts';

interface HeaderInput {
  readonly header?: string;
  readonly prefix?: string;
}

interface OAuthInput extends HeaderInput {
  readonly issuer?: string;
  readonly tokenEndpoint?: string;
  readonly audience?: string;
  readonly resource?: string;
  readonly scopes?: readonly string[];
  readonly client: {
    readonly id: string;
    readonly authMethod?: ClientAuthMethod;
    readonly secret?: SecretRef;
    readonly privateKey?: SecretRef;
    readonly keyId?: string;
    readonly algorithm?: string;
  };
  readonly timeoutMs?: number;
  readonly refreshBeforeExpirySeconds?: number;
  readonly defaultLifetimeSeconds?: number;
}

export type CredentialInput =
  | { readonly type: 'none' }
  | (HeaderInput & { readonly type: 'staticSecret'; readonly secret: SecretRef })
  | (OAuthInput & { readonly type: 'tokenExchange'; readonly subjectTokenType?: 'access_token' | 'jwt'; readonly actorTokenHeader?: string })
  | (OAuthInput & { readonly type: 'clientCredentials'; readonly userHeader?: { readonly name: string; readonly value?: 'subject' | 'email' } });

export type CredentialKind = CredentialInput['type'];

interface Injected {
  /** Lower-case header name the credential goes in. */
  readonly header: string;
  /** Put before the value ("Bearer " for Authorization). */
  readonly prefix: string;
}

export interface OAuthPlan extends Injected {
  readonly endpoint: TokenEndpoint;
  readonly audience: string | undefined;
  readonly resource: string | undefined;
  readonly scopes: readonly string[];
  readonly timeoutMs: number;
  readonly marginMs: number;
  /** What makes two configurations' credentials different (part of every cache key). */
  readonly fingerprint: readonly string[];
}

export type CredentialPlan =
  | { readonly kind: 'none' }
  | (Injected & { readonly kind: 'staticSecret'; readonly secret: Secret })
  | (OAuthPlan & { readonly kind: 'tokenExchange'; readonly subjectTokenType: string; readonly actorTokenHeader: string | undefined })
  | (OAuthPlan & { readonly kind: 'clientCredentials'; readonly userHeader: { readonly name: string; readonly value: 'subject' | 'email' } | undefined });

export const NO_CREDENTIAL: CredentialPlan = { kind: 'none' };

const TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:';

function injected(input: HeaderInput): Injected {
  const header = (input.header ?? 'authorization').toLowerCase();
  return { header, prefix: input.prefix ?? (header === 'authorization' ? 'Bearer ' : '') };
}

/** `at` names the field in messages, e.g. `servers[2].credential`. Throws an Error naming what is wrong. */
export function compileCredential(input: CredentialInput | undefined, at: string, issuers: readonly IssuerSpec[], authenticates: boolean): CredentialPlan {
  if (input === undefined || input.type === 'none') return NO_CREDENTIAL;
  if (input.type === 'staticSecret') return { kind: 'staticSecret', ...injected(input), secret: new Secret(input.secret, `static secret of ${at}`) };
  if (input.type === 'tokenExchange' && !authenticates) {
    throw new Error(`${at}: tokenExchange needs an authenticated caller (an identity section, and authentication not "none")`);
  }
  const oauth = compileOAuth(input, at, issuers);
  if (input.type === 'tokenExchange') {
    return { kind: 'tokenExchange', ...oauth, subjectTokenType: TOKEN_TYPE + (input.subjectTokenType ?? 'access_token'), actorTokenHeader: input.actorTokenHeader?.toLowerCase() };
  }
  if (input.userHeader !== undefined && !authenticates) throw new Error(`${at}.userHeader: needs an authenticated caller`);
  const userHeader = input.userHeader === undefined ? undefined : { name: input.userHeader.name.toLowerCase(), value: input.userHeader.value ?? 'subject' };
  return { kind: 'clientCredentials', ...oauth, userHeader };
}

function compileOAuth(input: OAuthInput & { readonly type: 'tokenExchange' | 'clientCredentials' }, at: string, issuers: readonly IssuerSpec[]): OAuthPlan {
  let issuer: string | undefined;
  if (input.tokenEndpoint === undefined) {
    const named = input.issuer === undefined ? (issuers.length === 1 ? issuers[0] : undefined) : issuers.find((i) => i.name === input.issuer);
    if (named === undefined) {
      throw new Error(input.issuer === undefined ? `${at}: name the issuer (identity.issuers[].name) or give a tokenEndpoint` : `${at}.issuer: no issuer named "${input.issuer}" in identity.issuers`);
    }
    issuer = named.issuer;
  }
  if (input.type === 'tokenExchange' && input.audience === undefined && input.resource === undefined) {
    throw new Error(`${at}: tokenExchange needs an audience or a resource (what the exchanged token is for)`);
  }
  const client = input.client;
  const authMethod = client.authMethod ?? (client.privateKey !== undefined ? 'private_key_jwt' : 'client_secret_basic');
  if (authMethod === 'private_key_jwt' && client.privateKey === undefined) throw new Error(`${at}.client.privateKey: required for private_key_jwt`);
  if (authMethod !== 'private_key_jwt' && client.secret === undefined) throw new Error(`${at}.client.secret: required for ${authMethod}`);
  const timeoutMs = input.timeoutMs ?? 3000;
  const endpoint = new TokenEndpoint({
    issuer,
    url: input.tokenEndpoint,
    client: {
      id: client.id,
      authMethod,
      secret: client.secret === undefined ? undefined : new Secret(client.secret, `client secret of ${at}.client`),
      privateKey: client.privateKey === undefined ? undefined : new Secret(client.privateKey, `private key of ${at}.client`),
      keyId: client.keyId,
      algorithm: client.algorithm ?? 'RS256',
    },
    timeoutMs,
    defaultLifetimeSeconds: input.defaultLifetimeSeconds ?? 300,
  });
  const scopes = [...(input.scopes ?? [])].sort();
  return {
    ...injected(input),
    endpoint,
    audience: input.audience,
    resource: input.resource,
    scopes,
    timeoutMs,
    marginMs: (input.refreshBeforeExpirySeconds ?? 30) * 1000,
    fingerprint: [input.type, input.tokenEndpoint ?? issuer ?? '', client.id, input.audience ?? '', input.resource ?? '', scopes.join(' ')],
  };
}
