// The test IdP (test/support/idp.ts) behaves like the organisation's IdP the processor will trust:
// discovery leads to a JWKS that verifies its JWT access tokens; tokens carry the user's and the agent's
// identity and are bound to the requested resource; it can be made unreachable and brought back; and
// the negative-token helpers never produce something that verifies.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  decodeJwt,
  decodeProtectedHeader,
  jwtVerify,
} from 'jose';
import type { JSONWebKeySet, JWTPayload, JWTVerifyGetKey } from 'jose';
import {
  DEFAULT_SCOPE,
  forgeToken,
  MALFORMED_TOKENS,
  startIdp,
  tamperToken,
  unsignedToken,
  USER_GRANT_TYPE,
} from '../support/idp.ts';
import type { Idp } from '../support/idp.ts';

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
