// The test IdP (test/support/idp.ts) behaves like the organisation's IdP the processor will trust:
// discovery leads to a JWKS that verifies its JWT access tokens; tokens carry the user's and the agent's
// identity and are bound to the requested resource; it can be made unreachable and brought back; and
// the negative-token helpers never produce something that verifies; and it exchanges a token it issued
// for one aimed at another resource (RFC 8693), for a client authenticated by secret or by signed JWT.
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  decodeJwt,
  decodeProtectedHeader,
  exportJWK,
  generateKeyPair,
  jwtVerify,
  SignJWT,
} from 'jose';
import type { JSONWebKeySet, JWTPayload, JWTVerifyGetKey } from 'jose';
import {
  ACCESS_TOKEN_TYPE,
  CLIENT_ASSERTION_TYPE,
  DEFAULT_CLIENTS,
  DEFAULT_SCOPE,
  forgeToken,
  JWT_TOKEN_TYPE,
  MALFORMED_TOKENS,
  startIdp,
  tamperToken,
  TOKEN_EXCHANGE_GRANT,
  unsignedToken,
  USER_GRANT_TYPE,
} from '../support/idp.ts';
import type { Idp, TokenResponse } from '../support/idp.ts';

const RESOURCE_A = 'http://127.0.0.1:18080/a/mcp';
const RESOURCE_B = 'http://127.0.0.1:18080/b/mcp';

interface Discovery {
  issuer: string;
  jwks_uri: string;
  token_endpoint: string;
  grant_types_supported: string[];
}

async function discover(issuer: string): Promise<Discovery> {
  const res = await fetch(`${issuer}/.well-known/openid-configuration`);
  expect(res.status).toBe(200);
  return (await res.json()) as Discovery;
}

/** A key set as a verifier would build it: from the jwks_uri found in the issuer's metadata. */
async function discoveredJwks(issuer: string): Promise<JWTVerifyGetKey> {
  const { jwks_uri } = await discover(issuer);
  return createRemoteJWKSet(new URL(jwks_uri));
}

/** The JWKS as it is published right now (no caching between calls). */
async function publishedJwks(idp: Idp): Promise<JSONWebKeySet> {
  const res = await fetch(idp.jwksUri);
  return (await res.json()) as JSONWebKeySet;
}

async function verifyNow(idp: Idp, token: string, audience: string): Promise<JWTPayload> {
  const jwks = createLocalJWKSet(await publishedJwks(idp));
  const { payload } = await jwtVerify(token, jwks, { issuer: idp.issuer, audience });
  return payload;
}

/** The jose error code a rejected verification ended with. */
async function rejectionCode(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (err) {
    return (err as { code?: string }).code ?? String(err);
  }
  throw new Error('expected the token to be rejected, but it verified');
}

function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}

/** An RFC 8693 exchange request for an access token, plus `fields` (the target, scope, actor token…). */
function exchangeForm(subjectToken: string, fields: Readonly<Record<string, string>> = {}): Record<string, string> {
  return { grant_type: TOKEN_EXCHANGE_GRANT, subject_token: subjectToken, subject_token_type: ACCESS_TOKEN_TYPE, ...fields };
}

/** The issued token of a successful exchange (fails the test with the IdP's answer otherwise). */
function issuedToken(response: TokenResponse): string {
  expect(response, JSON.stringify(response.body)).toMatchObject({ status: 200 });
  const token = response.body.access_token;
  if (typeof token !== 'string') throw new Error('no access_token in the exchange response');
  return token;
}

type SigningKey = Parameters<SignJWT['sign']>[0];

/** A private_key_jwt client assertion (RFC 7523): iss = sub = the client, a fresh jti, one minute. */
function clientAssertion(clientId: string, key: SigningKey, audience: string | string[], alg = 'ES256'): Promise<string> {
  return new SignJWT({})
    .setProtectedHeader({ alg })
    .setIssuer(clientId)
    .setSubject(clientId)
    .setAudience(audience)
    .setJti(randomUUID())
    .setIssuedAt()
    .setExpirationTime('1m')
    .sign(key);
}

describe('test IdP', () => {
  let idp: Idp;

  beforeAll(async () => {
    idp = await startIdp();
  });

  afterAll(async () => {
    await idp.stop();
  });

  describe('discovery and tokens', () => {
    it('publishes discovery metadata naming its issuer, JWKS, token endpoint and both grants', async () => {
      const meta = await discover(idp.issuer);
      expect(meta.issuer).toBe(idp.issuer);
      expect(meta.jwks_uri).toBe(idp.jwksUri);
      expect(meta.token_endpoint).toBe(idp.tokenEndpoint);
      expect(meta.grant_types_supported).toEqual(expect.arrayContaining(['client_credentials', USER_GRANT_TYPE]));
      expect(idp.issuer).toBe(`http://127.0.0.1:${idp.port}`);

      const jwks = await publishedJwks(idp);
      expect(jwks.keys.map((k) => k.alg).sort()).toEqual(['ES256', 'RS256']);
      for (const key of jwks.keys) expect(key).not.toHaveProperty('d');
    });

    it("issues a user token that the discovered JWKS verifies, carrying the user's and the agent's identity", async () => {
      const before = nowSeconds();
      const token = await idp.userToken({
        user: 'alice',
        client: 'agent-a',
        resource: RESOURCE_A,
        scope: 'mcp tools:read',
      });

      const { payload, protectedHeader } = await jwtVerify(token, await discoveredJwks(idp.issuer), {
        issuer: idp.issuer,
        audience: RESOURCE_A,
        typ: 'at+jwt',
      });
      expect(protectedHeader.alg).toBe('RS256');
      expect(protectedHeader.kid).toBe(idp.signingKid());
      expect(payload.iss).toBe(idp.issuer);
      expect(payload.aud).toBe(RESOURCE_A);
      expect(payload.sub).toBe('alice');
      expect(payload.email).toBe('alice@example.com');
      expect(payload.groups).toEqual(['analysts']);
      expect(payload.scope).toBe('mcp tools:read');
      expect(payload.client_id).toBe('agent-a');
      expect(payload.azp).toBe('agent-a');
      expect(payload.jti).toMatch(/^[\w-]{16,}$/);
      expect(payload.iat).toBeGreaterThanOrEqual(before);
      expect(payload.iat).toBeLessThanOrEqual(nowSeconds());
      expect((payload.exp ?? 0) - (payload.iat ?? 0)).toBe(300);
    });

    it('gives each user their own subject, email and groups', async () => {
      const claimsOf = async (user: string): Promise<JWTPayload> =>
        verifyNow(idp, await idp.userToken({ user, client: 'agent-b', resource: RESOURCE_A }), RESOURCE_A);
      const [alice, bob, admin] = await Promise.all([claimsOf('alice'), claimsOf('bob'), claimsOf('admin')]);

      expect(alice).toMatchObject({ sub: 'alice', email: 'alice@example.com', groups: ['analysts'] });
      expect(bob).toMatchObject({ sub: 'bob', email: 'bob@example.com', groups: ['engineering'] });
      expect(admin).toMatchObject({ sub: 'admin', groups: ['mcp-admins'] });
      expect(bob.client_id).toBe('agent-b');
      expect(alice.scope).toBe(DEFAULT_SCOPE);
    });

    it('issues a distinct jti for every token, even for identical requests', async () => {
      const request = { user: 'alice', client: 'agent-a', resource: RESOURCE_A };
      const [first, second] = await Promise.all([idp.userToken(request), idp.userToken(request)]);
      expect(decodeJwt(first).jti).not.toBe(decodeJwt(second).jti);
    });

    it("issues an agent's own token with client_credentials: subject and client id are the agent, no user claims", async () => {
      // agent-b authenticates with client_secret_post, agent-a with client_secret_basic.
      for (const client of ['agent-a', 'agent-b']) {
        const token = await idp.clientToken({ client, resource: RESOURCE_B, scope: 'mcp tools:call' });
        const payload = await verifyNow(idp, token, RESOURCE_B);
        expect(payload).toMatchObject({ iss: idp.issuer, sub: client, client_id: client, aud: RESOURCE_B });
        expect(payload.scope).toBe('mcp tools:call');
        expect(payload).not.toHaveProperty('email');
        expect(payload).not.toHaveProperty('groups');
        expect(typeof payload.jti).toBe('string');
        expect(typeof payload.exp).toBe('number');
      }
    });

    it('binds a token to the resource it was asked for: aud A verifies for A and is refused for B', async () => {
      const forA = await idp.userToken({ user: 'bob', client: 'agent-a', resource: RESOURCE_A });
      const forB = await idp.clientToken({ client: 'agent-a', resource: RESOURCE_B });
      expect(decodeJwt(forA).aud).toBe(RESOURCE_A);
      expect(decodeJwt(forB).aud).toBe(RESOURCE_B);

      await expect(verifyNow(idp, forA, RESOURCE_A)).resolves.toMatchObject({ sub: 'bob' });
      expect(await rejectionCode(verifyNow(idp, forA, RESOURCE_B))).toBe('ERR_JWT_CLAIM_VALIDATION_FAILED');
      expect(await rejectionCode(verifyNow(idp, forB, RESOURCE_A))).toBe('ERR_JWT_CLAIM_VALIDATION_FAILED');
    });

    it('honours a requested lifetime', async () => {
      const token = await idp.userToken({ user: 'alice', client: 'agent-a', resource: RESOURCE_A, ttlSeconds: 7 });
      const payload = await verifyNow(idp, token, RESOURCE_A);
      expect((payload.exp ?? 0) - (payload.iat ?? 0)).toBe(7);
    });

    it('issues a genuinely signed token that is already expired', async () => {
      const token = await idp.expiredToken({ user: 'alice', client: 'agent-a', resource: RESOURCE_A });
      const { exp } = decodeJwt(token);
      expect(exp).toBeLessThanOrEqual(nowSeconds() - 600);

      expect(await rejectionCode(verifyNow(idp, token, RESOURCE_A))).toBe('ERR_JWT_EXPIRED');
      // The signature and every other claim are the IdP's own: verified as of a moment before exp, it passes.
      const jwks = createLocalJWKSet(await publishedJwks(idp));
      const { payload } = await jwtVerify(token, jwks, {
        issuer: idp.issuer,
        audience: RESOURCE_A,
        currentDate: new Date(((exp ?? 0) - 10) * 1000),
      });
      expect(payload).toMatchObject({ sub: 'alice', groups: ['analysts'] });
    });

    it("refuses a user token for an unknown user, and a token request without resource doesn't yield a JWT", async () => {
      const unknown = await idp.tokenRequest('agent-a', {
        grant_type: USER_GRANT_TYPE,
        username: 'mallory',
        resource: RESOURCE_A,
      });
      expect(unknown.status).toBe(400);
      expect(unknown.body.error).toBe('invalid_grant');

      await expect(idp.userToken({ user: 'mallory', client: 'agent-a', resource: RESOURCE_A })).rejects.toThrow(
        /invalid_grant/,
      );

      // oidc-provider 9 picks the token format per resource server: no resource, no JWT.
      const noResource = await idp.tokenRequest('agent-a', { grant_type: 'client_credentials' });
      expect(noResource.status).toBe(200);
      expect(String(noResource.body.access_token).split('.')).toHaveLength(1);
    });
  });

  describe('counting', () => {
    it('counts token endpoint requests by grant type, failed ones included', async () => {
      const users = idp.tokenRequests(USER_GRANT_TYPE);
      const agents = idp.tokenRequests('client_credentials');
      const total = idp.tokenRequests();

      await idp.userToken({ user: 'alice', client: 'agent-a', resource: RESOURCE_A });
      await idp.userToken({ user: 'bob', client: 'agent-b', resource: RESOURCE_A });
      await idp.clientToken({ client: 'agent-a', resource: RESOURCE_A });
      await idp.tokenRequest('agent-a', { grant_type: USER_GRANT_TYPE, username: 'nobody', resource: RESOURCE_A });
      await fetch(idp.jwksUri); // not a token request

      expect(idp.tokenRequests(USER_GRANT_TYPE)).toBe(users + 3);
      expect(idp.tokenRequests('client_credentials')).toBe(agents + 1);
      expect(idp.tokenRequests('refresh_token')).toBe(0);
      expect(idp.tokenRequests()).toBe(total + 4);
    });

    it('counts token exchanges under their grant type, refused ones included', async () => {
      const subject = await idp.userToken({ user: 'alice', client: 'agent-a', resource: RESOURCE_A });
      const exchanges = idp.tokenRequests(TOKEN_EXCHANGE_GRANT);
      const total = idp.tokenRequests();

      issuedToken(await idp.tokenRequest('gateway', exchangeForm(subject, { resource: RESOURCE_B })));
      await idp.tokenRequest('gateway', exchangeForm('not-a-jwt', { resource: RESOURCE_B }));
      await idp.tokenRequest('gateway', exchangeForm(subject));

      expect(idp.tokenRequests(TOKEN_EXCHANGE_GRANT)).toBe(exchanges + 3);
      expect(idp.tokenRequests()).toBe(total + 3);
    });

    it('counts a token request it cannot parse under "(none)", and answers unknown paths with 404', async () => {
      const unparsed = idp.tokenRequests('(none)');
      const res = await fetch(idp.tokenEndpoint, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: '{"grant_type":"client_credentials"}',
      });
      expect(res.status).toBe(400);
      expect(idp.tokenRequests('(none)')).toBe(unparsed + 1);

      const total = idp.tokenRequests();
      expect((await fetch(`${idp.issuer}/no-such-endpoint`)).status).toBe(404);
      expect(idp.tokenRequests()).toBe(total);
    });
  });

  describe('token exchange (RFC 8693)', () => {
    it('advertises the exchange grant, and the gateway may use it', async () => {
      const meta = await discover(idp.issuer);
      expect(meta.grant_types_supported).toContain(TOKEN_EXCHANGE_GRANT);
      expect(idp.clients.map((c) => c.clientId)).toContain('gateway');
    });

    it("exchanges alice's token for one bound to another resource: same user and claims, the agent as actor, the requested scope", async () => {
      const subject = await idp.userToken({ user: 'alice', client: 'agent-a', resource: RESOURCE_A, scope: 'mcp tools:read' });

      const response = await idp.tokenRequest('gateway', exchangeForm(subject, { resource: RESOURCE_B, scope: 'tools:call' }));
      const exchanged = issuedToken(response);
      expect(response.body).toEqual({
        access_token: exchanged,
        issued_token_type: ACCESS_TOKEN_TYPE,
        token_type: 'Bearer',
        expires_in: 300,
        scope: 'tools:call',
      });

      const { payload, protectedHeader } = await jwtVerify(exchanged, await discoveredJwks(idp.issuer), {
        issuer: idp.issuer,
        audience: RESOURCE_B,
        typ: 'at+jwt',
      });
      expect(protectedHeader.kid).toBe(idp.signingKid());
      expect(payload).toMatchObject({
        aud: RESOURCE_B,
        sub: 'alice',
        act: { sub: 'agent-a' },
        scope: 'tools:call',
        email: 'alice@example.com',
        groups: ['analysts'],
        client_id: 'gateway',
        azp: 'gateway',
      });
      expect(payload.jti).not.toBe(decodeJwt(subject).jti);
      expect((payload.exp ?? 0) - (payload.iat ?? 0)).toBe(300);
      // Bound to the new resource only.
      expect(await rejectionCode(verifyNow(idp, exchanged, RESOURCE_A))).toBe('ERR_JWT_CLAIM_VALIDATION_FAILED');
    });

    it("keeps the subject token's scope when none is asked for, and takes `audience` as the target when there is no resource", async () => {
      const subject = await idp.userToken({ user: 'bob', client: 'agent-b', resource: RESOURCE_A, scope: 'mcp tools:read' });
      const response = await idp.tokenRequest('gateway', exchangeForm(subject, { audience: 'billing-api' }));
      const payload = await verifyNow(idp, issuedToken(response), 'billing-api');
      expect(payload).toMatchObject({ sub: 'bob', scope: 'mcp tools:read', act: { sub: 'agent-b' }, groups: ['engineering'] });
      expect(response.body.scope).toBe('mcp tools:read');

      // Both given: resource wins.
      const both = await idp.tokenRequest('gateway', exchangeForm(subject, { resource: RESOURCE_B, audience: 'billing-api' }));
      expect(decodeJwt(issuedToken(both)).aud).toBe(RESOURCE_B);
    });

    it("names the actor token's subject as actor, and nests the act of a subject token that was itself exchanged", async () => {
      const subject = await idp.userToken({ user: 'alice', client: 'agent-a', resource: RESOURCE_A });
      const actorToken = await idp.clientToken({ client: 'agent-b', resource: RESOURCE_A });
      const withActor = issuedToken(
        await idp.tokenRequest(
          'gateway',
          exchangeForm(subject, { resource: RESOURCE_B, actor_token: actorToken, actor_token_type: ACCESS_TOKEN_TYPE }),
        ),
      );
      expect(await verifyNow(idp, withActor, RESOURCE_B)).toMatchObject({ sub: 'alice', act: { sub: 'agent-b' } });

      const once = issuedToken(await idp.tokenRequest('gateway', exchangeForm(subject, { resource: RESOURCE_B })));
      const twice = issuedToken(
        await idp.tokenRequest('agent-b', exchangeForm(once, { subject_token_type: JWT_TOKEN_TYPE, resource: 'urn:downstream' })),
      );
      const payload = await verifyNow(idp, twice, 'urn:downstream');
      expect(payload).toMatchObject({ sub: 'alice', client_id: 'agent-b', email: 'alice@example.com' });
      expect(payload.act).toEqual({ sub: 'gateway', act: { sub: 'agent-a' } });
    });

    it('exchanges an agent\'s own token: the agent is both subject and actor, without user claims', async () => {
      const subject = await idp.clientToken({ client: 'agent-a', resource: RESOURCE_A, scope: 'mcp' });
      const payload = await verifyNow(
        idp,
        issuedToken(await idp.tokenRequest('gateway', exchangeForm(subject, { resource: RESOURCE_B }))),
        RESOURCE_B,
      );
      expect(payload).toMatchObject({ sub: 'agent-a', act: { sub: 'agent-a' }, client_id: 'gateway', scope: 'mcp' });
      expect(payload).not.toHaveProperty('email');
    });

    it('refuses with invalid_grant a subject or actor token it did not issue, or one that expired', async () => {
      const real = await idp.userToken({ user: 'alice', client: 'agent-a', resource: RESOURCE_A });
      const claims = decodeJwt(real);
      const refused: Record<string, string> = {
        forged: await forgeToken(claims, { kid: idp.signingKid() }),
        unknownKid: await forgeToken(claims),
        tampered: tamperToken(real, { sub: 'admin' }),
        unsigned: unsignedToken(claims),
        expired: await idp.expiredToken({ user: 'alice', client: 'agent-a', resource: RESOURCE_A }),
        otherIssuer: tamperToken(real, { iss: 'http://127.0.0.1:1' }),
        notAJwt: MALFORMED_TOKENS.notAJwt ?? 'not-a-jwt',
      };
      for (const [name, token] of Object.entries(refused)) {
        const response = await idp.tokenRequest('gateway', exchangeForm(token, { resource: RESOURCE_B }));
        expect({ name, ...response }).toMatchObject({
          name,
          status: 400,
          body: { error: 'invalid_grant', error_description: expect.stringMatching(/^subject_token rejected: /) as unknown },
        });
        expect(response.body).not.toHaveProperty('access_token');
      }
      const expired = await idp.tokenRequest('gateway', exchangeForm(refused.expired ?? '', { resource: RESOURCE_B }));
      expect(expired.body.error_description).toMatch(/"exp" claim/);

      const badActor = await idp.tokenRequest(
        'gateway',
        exchangeForm(real, { resource: RESOURCE_B, actor_token: refused.forged ?? '', actor_token_type: ACCESS_TOKEN_TYPE }),
      );
      expect(badActor).toMatchObject({ status: 400, body: { error: 'invalid_grant' } });
      expect(badActor.body.error_description).toMatch(/^actor_token rejected: /);
    });

    it('refuses an exchange without a target (invalid_target), or without a known subject_token_type (invalid_request)', async () => {
      const subject = await idp.userToken({ user: 'alice', client: 'agent-a', resource: RESOURCE_A });
      const noTarget = await idp.tokenRequest('gateway', exchangeForm(subject));
      expect(noTarget).toMatchObject({ status: 400, body: { error: 'invalid_target' } });
      const badResource = await idp.tokenRequest('gateway', exchangeForm(subject, { resource: 'not a uri' }));
      expect(badResource).toMatchObject({ status: 400, body: { error: 'invalid_target' } });

      const { subject_token_type: _omitted, ...withoutType } = exchangeForm(subject, { resource: RESOURCE_B });
      expect(await idp.tokenRequest('gateway', withoutType)).toMatchObject({ status: 400, body: { error: 'invalid_request' } });
      for (const form of [
        exchangeForm(subject, { resource: RESOURCE_B, subject_token_type: 'urn:ietf:params:oauth:token-type:id_token' }),
        exchangeForm(subject, { resource: RESOURCE_B, requested_token_type: 'urn:ietf:params:oauth:token-type:refresh_token' }),
        exchangeForm(subject, { resource: RESOURCE_B, actor_token: subject }),
        { grant_type: TOKEN_EXCHANGE_GRANT, subject_token_type: ACCESS_TOKEN_TYPE, resource: RESOURCE_B },
      ]) {
        expect(await idp.tokenRequest('gateway', form)).toMatchObject({ status: 400, body: { error: 'invalid_request' } });
      }
    });

    it('refuses every exchange with the chosen OAuth error after refuseExchanges(), until it is lifted', async () => {
      const subject = await idp.userToken({ user: 'alice', client: 'agent-a', resource: RESOURCE_A });
      const form = exchangeForm(subject, { resource: RESOURCE_B });
      try {
        idp.refuseExchanges('unauthorized_client');
        const unauthorized = await idp.tokenRequest('gateway', form);
        expect(unauthorized.status).toBe(400);
        expect(unauthorized.body).toEqual({ error: 'unauthorized_client', error_description: expect.any(String) as unknown });

        idp.refuseExchanges('invalid_grant');
        const invalid = await idp.tokenRequest('gateway', form);
        expect(invalid.status).toBe(400);
        expect(invalid.body).toEqual({ error: 'invalid_grant', error_description: expect.any(String) as unknown });
        // Other grants are unaffected.
        await expect(idp.userToken({ user: 'bob', client: 'agent-a', resource: RESOURCE_A })).resolves.toEqual(expect.any(String));
      } finally {
        idp.refuseExchanges(undefined);
      }
      expect(decodeJwt(issuedToken(await idp.tokenRequest('gateway', form))).aud).toBe(RESOURCE_B);
    });

    it('still authenticates the exchanging client: a wrong secret is invalid_client', async () => {
      const subject = await idp.userToken({ user: 'alice', client: 'agent-a', resource: RESOURCE_A });
      const res = await fetch(idp.tokenEndpoint, {
        method: 'POST',
        headers: {
          'content-type': 'application/x-www-form-urlencoded',
          authorization: `Basic ${Buffer.from('gateway:wrong').toString('base64')}`,
        },
        body: new URLSearchParams(exchangeForm(subject, { resource: RESOURCE_B })),
      });
      expect(res.status).toBe(401);
      expect(await res.json()).toMatchObject({ error: 'invalid_client' });
    });
  });

  describe('availability', () => {
    it("pause() makes the token endpoint unreachable (connection refused) and resume() brings it back on the same port", async () => {
      const before = await idp.userToken({ user: 'alice', client: 'agent-a', resource: RESOURCE_A });

      await idp.pause();
      const failure = await fetch(idp.tokenEndpoint, { method: 'POST' }).then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(failure).toBeInstanceOf(TypeError);
      expect((failure as { cause?: { code?: string } }).cause?.code).toBe('ECONNREFUSED');
      await expect(idp.userToken({ user: 'alice', client: 'agent-a', resource: RESOURCE_A })).rejects.toThrow();

      await idp.resume();
      const after = await idp.userToken({ user: 'alice', client: 'agent-a', resource: RESOURCE_A });
      expect(decodeJwt(after).iss).toBe(idp.issuer);
      // Same keys after resume: a token from before the outage still verifies.
      await expect(verifyNow(idp, before, RESOURCE_A)).resolves.toMatchObject({ sub: 'alice' });
    });

    it("pause('hang') accepts connections but never answers, until resume()", async () => {
      await idp.pause('hang');
      const failure = await fetch(idp.jwksUri, { signal: AbortSignal.timeout(300) }).then(
        () => undefined,
        (err: unknown) => err,
      );
      expect((failure as { name?: string } | undefined)?.name).toBe('TimeoutError');

      await idp.resume();
      const res = await fetch(idp.jwksUri, { signal: AbortSignal.timeout(5_000) });
      expect(res.status).toBe(200);
    });
  });

  describe('tokens the IdP did not sign', () => {
    let realClaims: JWTPayload;

    beforeAll(async () => {
      realClaims = decodeJwt(await idp.userToken({ user: 'alice', client: 'agent-a', resource: RESOURCE_A }));
    });

    it('refuses a token forged with a throwaway key, whatever kid it names', async () => {
      const unknownKid = await forgeToken(realClaims);
      expect(decodeProtectedHeader(unknownKid)).toMatchObject({ alg: 'RS256', kid: 'forged' });
      expect(decodeJwt(unknownKid)).toEqual(realClaims);
      expect(await rejectionCode(verifyNow(idp, unknownKid, RESOURCE_A))).toBe('ERR_JWKS_NO_MATCHING_KEY');

      const realKid = await forgeToken(realClaims, { kid: idp.signingKid() });
      expect(await rejectionCode(verifyNow(idp, realKid, RESOURCE_A))).toBe('ERR_JWS_SIGNATURE_VERIFICATION_FAILED');

      const es = await forgeToken(realClaims, { alg: 'ES256' });
      expect(decodeProtectedHeader(es).alg).toBe('ES256');
      expect(await rejectionCode(verifyNow(idp, es, RESOURCE_A))).toBe('ERR_JWKS_NO_MATCHING_KEY');

      // HMAC with the public key as secret is the classic confusion attack; a JWKS of public keys has no HS key.
      const hmac = await forgeToken(realClaims, { alg: 'HS256', kid: idp.signingKid() });
      expect(decodeProtectedHeader(hmac).alg).toBe('HS256');
      expect(await rejectionCode(verifyNow(idp, hmac, RESOURCE_A))).toBe('ERR_JOSE_NOT_SUPPORTED');
    });

    it('refuses an unsigned (alg none) token', async () => {
      const token = unsignedToken(realClaims);
      expect(decodeProtectedHeader(token).alg).toBe('none');
      expect(decodeJwt(token)).toEqual(realClaims);
      expect(token.endsWith('.')).toBe(true);
      expect(await rejectionCode(verifyNow(idp, token, RESOURCE_A))).toBe('ERR_JOSE_NOT_SUPPORTED');
      // Also when the verifier pins the IdP's algorithms, as a real verifier should.
      const jwks = createLocalJWKSet(await publishedJwks(idp));
      const pinned = jwtVerify(token, jwks, { issuer: idp.issuer, audience: RESOURCE_A, algorithms: ['RS256', 'ES256'] });
      expect(await rejectionCode(pinned)).toBe('ERR_JOSE_ALG_NOT_ALLOWED');
    });

    it('refuses a real token whose claims were edited', async () => {
      const real = await idp.userToken({ user: 'alice', client: 'agent-a', resource: RESOURCE_A });
      const tampered = tamperToken(real, { groups: ['mcp-admins'], email: undefined });
      expect(decodeJwt(tampered).groups).toEqual(['mcp-admins']);
      expect(decodeJwt(tampered)).not.toHaveProperty('email');
      expect(decodeProtectedHeader(tampered)).toEqual(decodeProtectedHeader(real));
      expect(await rejectionCode(verifyNow(idp, tampered, RESOURCE_A))).toBe('ERR_JWS_SIGNATURE_VERIFICATION_FAILED');
    });

    // jose checks the signature before it parses the payload, so a bad payload behind a junk signature
    // fails as a signature failure; every other case fails as an invalid JWS/JWT.
    it.each(Object.entries(MALFORMED_TOKENS))('refuses a malformed token (%s)', async (name, token) => {
      const expected = name === 'payloadNotJson' ? 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED' : /^ERR_JW[ST]_INVALID$/;
      expect(await rejectionCode(verifyNow(idp, token, RESOURCE_A))).toMatch(expected);
    });
  });
});

describe('test IdP key rotation', () => {
  let idp: Idp;

  beforeAll(async () => {
    idp = await startIdp();
  });

  afterAll(async () => {
    await idp.stop();
  });

  it('signs with a new kid after rotateKeys(); the old kid leaves the JWKS', async () => {
    const oldToken = await idp.userToken({ user: 'bob', client: 'agent-a', resource: RESOURCE_A });
    const oldKid = idp.signingKid();
    const port = idp.port;

    await idp.rotateKeys();

    const newToken = await idp.userToken({ user: 'bob', client: 'agent-a', resource: RESOURCE_A });
    const newKid = decodeProtectedHeader(newToken).kid;
    expect(newKid).toBe(idp.signingKid());
    expect(newKid).not.toBe(oldKid);
    expect(idp.port).toBe(port);

    const kids = (await publishedJwks(idp)).keys.map((k) => k.kid);
    expect(kids).toContain(newKid);
    expect(kids).not.toContain(oldKid);
    await expect(verifyNow(idp, newToken, RESOURCE_A)).resolves.toMatchObject({ sub: 'bob', groups: ['engineering'] });
    expect(await rejectionCode(verifyNow(idp, oldToken, RESOURCE_A))).toBe('ERR_JWKS_NO_MATCHING_KEY');
  });

  it('exchanges a subject token signed by a retired key while it is still published, and refuses it once the key is gone', async () => {
    const other = await startIdp();
    try {
      const subject = await other.userToken({ user: 'alice', client: 'agent-a', resource: RESOURCE_A });
      await other.rotateKeys({ keepPrevious: true });
      const exchanged = issuedToken(await other.tokenRequest('gateway', exchangeForm(subject, { resource: RESOURCE_B })));
      expect(decodeProtectedHeader(exchanged).kid).toBe(other.signingKid());
      expect(decodeProtectedHeader(subject).kid).not.toBe(other.signingKid());

      await other.rotateKeys();
      const refused = await other.tokenRequest('gateway', exchangeForm(subject, { resource: RESOURCE_B }));
      expect(refused).toMatchObject({ status: 400, body: { error: 'invalid_grant' } });
    } finally {
      await other.stop();
    }
  });

  it('keeps the previous keys published, no longer signing, with keepPrevious', async () => {
    const oldToken = await idp.clientToken({ client: 'agent-b', resource: RESOURCE_B });
    const oldKid = idp.signingKid();

    await idp.rotateKeys({ keepPrevious: true });

    const newToken = await idp.clientToken({ client: 'agent-b', resource: RESOURCE_B });
    expect(decodeProtectedHeader(newToken).kid).not.toBe(oldKid);
    expect((await publishedJwks(idp)).keys.map((k) => k.kid)).toContain(oldKid);
    await expect(verifyNow(idp, oldToken, RESOURCE_B)).resolves.toMatchObject({ sub: 'agent-b' });
    await expect(verifyNow(idp, newToken, RESOURCE_B)).resolves.toMatchObject({ sub: 'agent-b' });
  });
});

describe('test IdP options', () => {
  it('signs access tokens with ES256 when asked to', async () => {
    const idp = await startIdp({ accessTokenAlg: 'ES256' });
    try {
      const token = await idp.userToken({ user: 'alice', client: 'agent-a', resource: RESOURCE_A });
      expect(decodeProtectedHeader(token)).toMatchObject({ alg: 'ES256', kid: idp.signingKid() });
      await expect(verifyNow(idp, token, RESOURCE_A)).resolves.toMatchObject({ sub: 'alice' });
    } finally {
      await idp.stop();
    }
  });

  it('gives exchanged tokens their own lifetime when asked to', async () => {
    const idp = await startIdp({ tokenTtlSeconds: 120, exchangeTokenTtlSeconds: 30 });
    try {
      const subject = await idp.userToken({ user: 'alice', client: 'agent-a', resource: RESOURCE_A });
      const response = await idp.tokenRequest('gateway', exchangeForm(subject, { resource: RESOURCE_B }));
      const payload = await verifyNow(idp, issuedToken(response), RESOURCE_B);
      expect((payload.exp ?? 0) - (payload.iat ?? 0)).toBe(30);
      expect(response.body.expires_in).toBe(30);
      const direct = decodeJwt(subject);
      expect((direct.exp ?? 0) - (direct.iat ?? 0)).toBe(120);
    } finally {
      await idp.stop();
    }
  });

  it('serves configured users and clients instead of the defaults', async () => {
    const idp = await startIdp({
      users: [{ username: 'carol', sub: 'u-123', email: 'carol@example.com', groups: ['a', 'b'], claims: { department: 'ops' } }],
      clients: [{ clientId: 'robot', clientSecret: 's3cret', authMethod: 'client_secret_post' }],
      tokenTtlSeconds: 60,
    });
    try {
      const token = await idp.userToken({ user: 'carol', client: 'robot', resource: RESOURCE_A });
      const payload = await verifyNow(idp, token, RESOURCE_A);
      expect(payload).toMatchObject({
        sub: 'u-123',
        email: 'carol@example.com',
        groups: ['a', 'b'],
        department: 'ops',
        client_id: 'robot',
      });
      expect((payload.exp ?? 0) - (payload.iat ?? 0)).toBe(60);
      await expect(idp.userToken({ user: 'alice', client: 'robot', resource: RESOURCE_A })).rejects.toThrow(/invalid_grant/);
      await expect(idp.clientToken({ client: 'agent-a', resource: RESOURCE_A })).rejects.toThrow(/unknown client/);
    } finally {
      await idp.stop();
    }
  });
});

describe('test IdP client authentication with private_key_jwt', () => {
  let idp: Idp;
  let clientKey: SigningKey;
  let strangerKey: SigningKey;

  beforeAll(async () => {
    const pair = await generateKeyPair('ES256');
    clientKey = pair.privateKey;
    strangerKey = (await generateKeyPair('ES256')).privateKey;
    const publicJwk = { ...(await exportJWK(pair.publicKey)), alg: 'ES256', use: 'sig', kid: 'gateway-jwt-1' };
    idp = await startIdp({
      clients: [...DEFAULT_CLIENTS, { clientId: 'gateway-jwt', authMethod: 'private_key_jwt', jwks: { keys: [publicJwk] } }],
    });
  });

  afterAll(async () => {
    await idp.stop();
  });

  async function exchangeAs(key: SigningKey, audience: string | string[], subject: string): Promise<TokenResponse> {
    return idp.tokenRequest(
      'gateway-jwt',
      exchangeForm(subject, {
        resource: RESOURCE_B,
        client_assertion_type: CLIENT_ASSERTION_TYPE,
        client_assertion: await clientAssertion('gateway-jwt', key, audience),
      }),
    );
  }

  it('authenticates a client by a JWT signed with its key, addressed to the token endpoint or the issuer', async () => {
    const subject = await idp.userToken({ user: 'alice', client: 'agent-a', resource: RESOURCE_A });
    for (const audience of [idp.tokenEndpoint, idp.issuer, ['https://elsewhere.example', idp.tokenEndpoint]]) {
      const payload = await verifyNow(idp, issuedToken(await exchangeAs(clientKey, audience, subject)), RESOURCE_B);
      expect(payload).toMatchObject({ sub: 'alice', client_id: 'gateway-jwt', act: { sub: 'agent-a' } });
    }
    // Any grant, not only the exchange.
    const own = await idp.tokenRequest('gateway-jwt', {
      grant_type: 'client_credentials',
      resource: RESOURCE_A,
      client_assertion_type: CLIENT_ASSERTION_TYPE,
      client_assertion: await clientAssertion('gateway-jwt', clientKey, idp.tokenEndpoint),
    });
    expect(decodeJwt(issuedToken(own))).toMatchObject({ sub: 'gateway-jwt', aud: RESOURCE_A });
  });

  it('refuses with 401 invalid_client an assertion signed by another key, addressed elsewhere, replayed, or absent', async () => {
    const subject = await idp.userToken({ user: 'alice', client: 'agent-a', resource: RESOURCE_A });
    expect(await exchangeAs(strangerKey, idp.tokenEndpoint, subject)).toMatchObject({ status: 401, body: { error: 'invalid_client' } });
    expect(await exchangeAs(clientKey, 'https://elsewhere.example/token', subject)).toMatchObject({
      status: 401,
      body: { error: 'invalid_client' },
    });

    const assertion = await clientAssertion('gateway-jwt', clientKey, idp.tokenEndpoint);
    const form = exchangeForm(subject, { resource: RESOURCE_B, client_assertion_type: CLIENT_ASSERTION_TYPE, client_assertion: assertion });
    issuedToken(await idp.tokenRequest('gateway-jwt', form));
    expect(await idp.tokenRequest('gateway-jwt', form)).toMatchObject({ status: 401, body: { error: 'invalid_client' } });

    // Only client_id: no authentication at all.
    expect(await idp.tokenRequest('gateway-jwt', exchangeForm(subject, { resource: RESOURCE_B }))).toMatchObject({
      status: 401,
      body: { error: 'invalid_client' },
    });
  });

  it('refuses to start with a private_key_jwt client that has no keys', async () => {
    await expect(startIdp({ clients: [{ clientId: 'keyless', authMethod: 'private_key_jwt' }] })).rejects.toThrow(/no jwks/);
  });
});
