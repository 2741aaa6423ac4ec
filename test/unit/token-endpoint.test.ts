// The gateway as an OAuth client of the IdP, on its own: discovery of the token endpoint, the three
// client authentication methods, and how every kind of failure is classified. The happy paths and the
// IdP's own refusals run against the real test IdP (oidc-provider); answers a real IdP would not give
// (5xx, garbage, odd token types, missing lifetimes) come from a small local HTTP server that also
// records what the gateway sent.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { decodeJwt, decodeProtectedHeader, exportJWK, exportPKCS8, generateKeyPair, jwtVerify, SignJWT, type CryptoKey } from 'jose';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Secret } from '../../ext-proc/src/credentials/secret.ts';
import { CredentialError, TokenEndpoint, type ClientAuthMethod, type IssuedToken, type OAuthClient } from '../../ext-proc/src/credentials/token-endpoint.ts';
import { ACCESS_TOKEN_TYPE, DEFAULT_CLIENTS, startIdp, TOKEN_EXCHANGE_GRANT, type Idp } from '../support/idp.ts';

const RESOURCE = 'https://github-mcp.internal/mcp';
const GATEWAY_RESOURCE = 'https://gateway.example.com/github/mcp';
const EXCHANGE_TTL_SECONDS = 600;
const JWT_CLIENT = 'gateway-jwt';
const MISSING_ENV = 'MCP_EXT_PROC_TEST_TOKEN_ENDPOINT_UNSET_SECRET';

let dir: string;
let fileCount = 0;
let idp: Idp;
let gatewayKey: { privateKey: CryptoKey; publicKey: CryptoKey; pem: string };
let otherPem: string;

/** A secret read from a fresh file (the way a mounted Kubernetes Secret is read). */
function fileSecret(value: string, what = 'test secret'): Secret {
  const file = path.join(dir, `secret-${++fileCount}`);
  writeFileSync(file, `${value}\n`);
  return new Secret({ file }, what);
}

function client(id: string, authMethod: ClientAuthMethod, fields: Partial<OAuthClient> = {}): OAuthClient {
  return { id, authMethod, secret: undefined, privateKey: undefined, keyId: undefined, algorithm: 'RS256', ...fields };
}

function endpoint(c: OAuthClient, where: { issuer?: string; url?: string } = {}, timeoutMs = 5_000, defaultLifetimeSeconds = 300): TokenEndpoint {
  return new TokenEndpoint({ issuer: where.issuer, url: where.url, client: c, timeoutMs, defaultLifetimeSeconds });
}

const gatewayClient = (): OAuthClient => client('gateway', 'client_secret_basic', { secret: fileSecret('gateway-secret') });

function exchangeForm(subjectToken: string, target: Record<string, string> = { resource: RESOURCE }): Record<string, string> {
  return {
    grant_type: TOKEN_EXCHANGE_GRANT,
    subject_token: subjectToken,
    subject_token_type: ACCESS_TOKEN_TYPE,
    requested_token_type: ACCESS_TOKEN_TYPE,
    ...target,
  };
}

const aliceToken = (): Promise<string> => idp.userToken({ user: 'alice', client: 'agent-a', resource: GATEWAY_RESOURCE });

/** The CredentialError a request fails with (the test fails if it succeeds or throws anything else). */
async function failure(request: Promise<IssuedToken>): Promise<CredentialError> {
  let outcome: unknown;
  try {
    outcome = await request;
  } catch (err) {
    expect(err).toBeInstanceOf(CredentialError);
    return err as CredentialError;
  }
  throw new Error(`the request succeeded: ${JSON.stringify(outcome)}`);
}

/** Asserts an expiry of about `seconds` from a moment between `before` and `after`. */
function expectExpiresIn(issued: IssuedToken, seconds: number, before: number, after: number): void {
  expect(issued.expiresAtMs).toBeGreaterThanOrEqual(before + seconds * 1000 - 1_000);
  expect(issued.expiresAtMs).toBeLessThanOrEqual(after + seconds * 1000 + 1_000);
}

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'token-endpoint-test-'));
  const pair = await generateKeyPair('RS256', { extractable: true });
  gatewayKey = { ...pair, pem: await exportPKCS8(pair.privateKey) };
  otherPem = await exportPKCS8((await generateKeyPair('RS256', { extractable: true })).privateKey);
  const publicJwk = await exportJWK(pair.publicKey);
  idp = await startIdp({
    clients: [...DEFAULT_CLIENTS, { clientId: JWT_CLIENT, authMethod: 'private_key_jwt', jwks: { keys: [{ ...publicJwk, alg: 'RS256', use: 'sig' }] } }],
    exchangeTokenTtlSeconds: EXCHANGE_TTL_SECONDS,
  });
});

afterAll(async () => {
  await idp.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('token exchange at the real IdP', () => {
  beforeEach(async () => {
    idp.refuseExchanges(undefined);
    await idp.resume();
  });

  it('finds the token endpoint through the issuer metadata when no url is configured', async () => {
    const before = idp.tokenRequests(TOKEN_EXCHANGE_GRANT);
    const issued = await endpoint(gatewayClient(), { issuer: idp.issuer }).request(exchangeForm(await aliceToken()));
    expect(decodeJwt(issued.accessToken).aud).toBe(RESOURCE);
    expect(idp.tokenRequests(TOKEN_EXCHANGE_GRANT)).toBe(before + 1);
  });

  it('exchanges alice\'s token as client_secret_basic for a JWT aimed at the requested resource, expiring after expires_in', async () => {
    const subject = await aliceToken();
    const before = Date.now();
    const issued = await endpoint(gatewayClient(), { url: idp.tokenEndpoint }).request(exchangeForm(subject));
    const after = Date.now();
    const claims = decodeJwt(issued.accessToken);
    expect(issued.accessToken).not.toBe(subject);
    expect(claims.aud).toBe(RESOURCE);
    expect(claims.sub).toBe('alice');
    expect(claims['client_id']).toBe('gateway');
    expectExpiresIn(issued, EXCHANGE_TTL_SECONDS, before, after);
  });

  it('uses audience when that is the target asked for', async () => {
    const issued = await endpoint(gatewayClient(), { issuer: idp.issuer }).request(exchangeForm(await aliceToken(), { audience: 'api://github-mcp' }));
    expect(decodeJwt(issued.accessToken).aud).toBe('api://github-mcp');
  });

  it('authenticates with client_secret_post', async () => {
    // agent-b is registered for client_secret_post, with its default secret.
    const c = client('agent-b', 'client_secret_post', { secret: fileSecret('agent-b-secret') });
    const issued = await endpoint(c, { issuer: idp.issuer }).request(exchangeForm(await aliceToken()));
    expect(decodeJwt(issued.accessToken)['client_id']).toBe('agent-b');
    expect(decodeJwt(issued.accessToken).aud).toBe(RESOURCE);
    const wrong = client('agent-b', 'client_secret_post', { secret: fileSecret('not-agent-b-secret') });
    expect((await failure(endpoint(wrong, { issuer: idp.issuer }).request(exchangeForm(await aliceToken())))).reason).toBe('client_rejected');
  });

  it('authenticates with private_key_jwt, signing with a PKCS#8 key read from a file', async () => {
    const c = client(JWT_CLIENT, 'private_key_jwt', { privateKey: fileSecret(gatewayKey.pem, 'private key') });
    const gateway = endpoint(c, { issuer: idp.issuer });
    const first = await gateway.request(exchangeForm(await aliceToken()));
    expect(decodeJwt(first.accessToken)['client_id']).toBe(JWT_CLIENT);
    // Each assertion has its own jti: the IdP accepts a jti only once, so a second request proves it.
    const second = await gateway.request(exchangeForm(await aliceToken()));
    expect(decodeJwt(second.accessToken).aud).toBe(RESOURCE);
  });

  it('reports a private key the IdP does not know as the gateway\'s own client being rejected', async () => {
    const c = client(JWT_CLIENT, 'private_key_jwt', { privateKey: fileSecret(otherPem, 'private key') });
    const err = await failure(endpoint(c, { issuer: idp.issuer }).request(exchangeForm(await aliceToken())));
    expect(err.code).toBe('ERR_CREDENTIAL_UNAVAILABLE');
    expect(err.reason).toBe('client_rejected');
    expect(err.oauthError).toBe('invalid_client');
  });

  it('reports a wrong client secret as client_rejected', async () => {
    const c = client('gateway', 'client_secret_basic', { secret: fileSecret('not-the-gateway-secret') });
    const err = await failure(endpoint(c, { url: idp.tokenEndpoint }).request(exchangeForm(await aliceToken())));
    expect(err.code).toBe('ERR_CREDENTIAL_UNAVAILABLE');
    expect(err.reason).toBe('client_rejected');
    expect(err.oauthError).toBe('invalid_client');
  });

  it('passes on the IdP\'s refusal of the exchange with its error and description', async () => {
    const subject = await aliceToken();
    idp.refuseExchanges('invalid_grant');
    const err = await failure(endpoint(gatewayClient(), { issuer: idp.issuer }).request(exchangeForm(subject)));
    expect(err.code).toBe('ERR_CREDENTIAL_REFUSED');
    expect(err.reason).toBe('refused');
    expect(err.oauthError).toBe('invalid_grant');
    expect(err.message).toContain('token exchange refused by policy');
  });

  it('refuses a subject token the IdP did not issue, as refused rather than unavailable', async () => {
    const err = await failure(endpoint(gatewayClient(), { url: idp.tokenEndpoint }).request(exchangeForm('not-a-token')));
    expect(err.code).toBe('ERR_CREDENTIAL_REFUSED');
    expect(err.oauthError).toBe('invalid_grant');
  });

  it('reports an IdP whose port is closed as unreachable, at discovery and at the token endpoint', async () => {
    const subject = await aliceToken();
    const discovered = endpoint(gatewayClient(), { issuer: idp.issuer });
    await discovered.request(exchangeForm(subject));
    const undiscovered = endpoint(gatewayClient(), { issuer: idp.issuer });
    await idp.pause('refuse');
    const atToken = await failure(discovered.request(exchangeForm(subject)));
    expect(atToken.code).toBe('ERR_CREDENTIAL_UNAVAILABLE');
    expect(atToken.reason).toBe('unreachable');
    const atDiscovery = await failure(undiscovered.request(exchangeForm(subject)));
    expect(atDiscovery.reason).toBe('unreachable');
    expect(atDiscovery.message).toContain(idp.issuer);
  });

  it('gives up on an IdP that never answers after timeoutMs', async () => {
    const subject = await aliceToken();
    await idp.pause('hang');
    const started = Date.now();
    const err = await failure(endpoint(gatewayClient(), { url: idp.tokenEndpoint }, 300).request(exchangeForm(subject)));
    const elapsed = Date.now() - started;
    expect(err.code).toBe('ERR_CREDENTIAL_UNAVAILABLE');
    expect(err.reason).toBe('timeout');
    expect(elapsed).toBeGreaterThanOrEqual(280);
    expect(elapsed).toBeLessThan(1_500);
  });

  it('counts discovery in the timeout budget', async () => {
    const subject = await aliceToken();
    await idp.pause('hang');
    const started = Date.now();
    const err = await failure(endpoint(gatewayClient(), { issuer: idp.issuer }, 300).request(exchangeForm(subject)));
    expect(err.reason).toBe('timeout');
    expect(Date.now() - started).toBeLessThan(1_500);
  });

  it('reports a client secret whose environment variable is unset as secret_missing, without calling the IdP', async () => {
    Reflect.deleteProperty(process.env, MISSING_ENV);
    const before = idp.tokenRequests();
    const c = client('gateway', 'client_secret_basic', { secret: new Secret({ env: MISSING_ENV }, 'client secret') });
    const err = await failure(endpoint(c, { url: idp.tokenEndpoint }).request(exchangeForm(await aliceToken())));
    expect(err.code).toBe('ERR_CREDENTIAL_UNAVAILABLE');
    expect(err.reason).toBe('secret_missing');
    expect(err.message).toContain(MISSING_ENV);
    // The user token above was one request; the exchange never went out.
    expect(idp.tokenRequests()).toBe(before + 1);
  });

  it('reports a private key file that is missing or not a key as secret_missing', async () => {
    const missing = client(JWT_CLIENT, 'private_key_jwt', { privateKey: new Secret({ file: path.join(dir, 'no-such-key.pem') }, 'private key') });
    const gone = await failure(endpoint(missing, { url: idp.tokenEndpoint }).request(exchangeForm(await aliceToken())));
    expect(gone.code).toBe('ERR_CREDENTIAL_UNAVAILABLE');
    expect(gone.reason).toBe('secret_missing');
    const garbled = client(JWT_CLIENT, 'private_key_jwt', { privateKey: fileSecret('-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----') });
    const bad = await failure(endpoint(garbled, { url: idp.tokenEndpoint }).request(exchangeForm(await aliceToken())));
    expect(bad.reason).toBe('secret_missing');
  });
});

// ---- a broken token endpoint -------------------------------------------------------------------

interface Received {
  readonly method: string;
  readonly path: string;
  readonly headers: IncomingMessage['headers'];
  readonly form: URLSearchParams;
}

interface Reply {
  readonly status: number;
  readonly body: string;
  readonly contentType?: string;
}

describe('token endpoint answers a real IdP would rarely give', () => {
  let server: Server;
  let base: string;
  let url: string;
  let reply: Reply;
  let received: Received[] = [];

  const json = (status: number, value: unknown): Reply => ({ status, body: JSON.stringify(value) });
  const bearer = (fields: Record<string, unknown> = {}): Reply => json(200, { access_token: 'downstream-opaque', token_type: 'Bearer', expires_in: 60, ...fields });
  const basicClient = (): OAuthClient => client('gw', 'client_secret_basic', { secret: fileSecret('s3cret') });
  const last = (): Received => {
    const r = received.at(-1);
    if (r === undefined) throw new Error('the server received nothing');
    return r;
  };

  function handle(req: IncomingMessage, res: ServerResponse): void {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const urlPath = req.url ?? '';
      if (urlPath === '/realm/.well-known/openid-configuration') {
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ issuer: `${base}/realm`, token_endpoint: `${base}/realm/protocol/token` }));
        return;
      }
      if (urlPath === '/other/.well-known/openid-configuration') {
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ issuer: `${base}/realm`, token_endpoint: `${base}/evil/token` }));
        return;
      }
      if (req.method === 'GET') {
        res.writeHead(404).end();
        return;
      }
      received.push({ method: req.method ?? '', path: urlPath, headers: req.headers, form: new URLSearchParams(Buffer.concat(chunks).toString('utf8')) });
      res.writeHead(reply.status, { 'content-type': reply.contentType ?? 'application/json' }).end(reply.body);
    });
  }

  beforeAll(async () => {
    server = createServer(handle);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    url = `${base}/token`;
  });

  afterAll(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  beforeEach(() => {
    received = [];
    reply = bearer();
  });

  it('posts to the token_endpoint the metadata names, and only when the metadata is for the configured issuer', async () => {
    await endpoint(basicClient(), { issuer: `${base}/realm` }).request({ grant_type: 'client_credentials' });
    expect(received.map((r) => `${r.method} ${r.path}`)).toEqual(['POST /realm/protocol/token']);
    const err = await failure(endpoint(basicClient(), { issuer: `${base}/other` }).request({ grant_type: 'client_credentials' }));
    expect(err.reason).toBe('unreachable');
    expect(err.message).toMatch(/names issuer .*, expected/);
    expect(received).toHaveLength(1);
  });

  it('sends the grant as a form, with nothing but the fields asked for and the Basic header', async () => {
    await endpoint(basicClient(), { url }).request({ grant_type: TOKEN_EXCHANGE_GRANT, subject_token: 'user-token', subject_token_type: ACCESS_TOKEN_TYPE, audience: 'api://x', scope: 'a b' });
    const r = last();
    expect(r.method).toBe('POST');
    expect(r.headers['content-type']).toMatch(/^application\/x-www-form-urlencoded\b/);
    expect(Object.fromEntries(r.form)).toEqual({ grant_type: TOKEN_EXCHANGE_GRANT, subject_token: 'user-token', subject_token_type: ACCESS_TOKEN_TYPE, audience: 'api://x', scope: 'a b' });
    expect(r.headers.authorization).toBe(`Basic ${Buffer.from('gw:s3cret').toString('base64')}`);
  });

  it('form-encodes the client id and secret before base64 in the Basic header (RFC 6749 §2.3.1)', async () => {
    const c = client('my:client id', 'client_secret_basic', { secret: fileSecret('p@ss:word with+space') });
    await endpoint(c, { url }).request({ grant_type: 'client_credentials' });
    const header = last().headers.authorization ?? '';
    expect(header.startsWith('Basic ')).toBe(true);
    const decoded = Buffer.from(header.slice('Basic '.length), 'base64').toString('utf8');
    expect(decoded).toBe('my%3Aclient+id:p%40ss%3Aword+with%2Bspace');
    // Exactly one raw colon separates the parts, and each part form-decodes back to the original.
    const [id = '', secret = '', ...rest] = decoded.split(':');
    expect(rest).toEqual([]);
    const formDecode = (s: string): string => decodeURIComponent(s.replace(/\+/g, ' '));
    expect([formDecode(id), formDecode(secret)]).toEqual(['my:client id', 'p@ss:word with+space']);
  });

  it('puts client_id and client_secret in the form for client_secret_post, with no Authorization header', async () => {
    const c = client('my:client id', 'client_secret_post', { secret: fileSecret('p@ss word') });
    await endpoint(c, { url }).request({ grant_type: 'client_credentials' });
    const r = last();
    expect(r.headers.authorization).toBeUndefined();
    expect(r.form.get('client_id')).toBe('my:client id');
    expect(r.form.get('client_secret')).toBe('p@ss word');
  });

  it('sends an RFC 7523 client assertion for private_key_jwt: iss and sub the client, aud the endpoint, short-lived, unique', async () => {
    const c = client('gw-jwt', 'private_key_jwt', { privateKey: fileSecret(gatewayKey.pem), keyId: 'gw-2026' });
    const gateway = endpoint(c, { url });
    await gateway.request({ grant_type: 'client_credentials' });
    await gateway.request({ grant_type: 'client_credentials' });
    const [first, second] = received;
    if (first === undefined || second === undefined) throw new Error('expected two requests');
    expect(first.headers.authorization).toBeUndefined();
    expect(first.form.get('client_id')).toBe('gw-jwt');
    expect(first.form.get('client_assertion_type')).toBe('urn:ietf:params:oauth:client-assertion-type:jwt-bearer');
    const assertion = first.form.get('client_assertion') ?? '';
    const { payload } = await jwtVerify(assertion, gatewayKey.publicKey, { issuer: 'gw-jwt', subject: 'gw-jwt', audience: url, algorithms: ['RS256'] });
    expect(decodeProtectedHeader(assertion)).toMatchObject({ alg: 'RS256', kid: 'gw-2026' });
    expect((payload.exp ?? 0) - (payload.iat ?? 0)).toBeLessThanOrEqual(60);
    expect(payload.jti).toEqual(expect.any(String));
    expect(decodeJwt(second.form.get('client_assertion') ?? '').jti).not.toBe(payload.jti);
  });

  it.each([
    ['HTTP 500', { status: 500, body: '{"error":"server_error"}' }],
    ['HTTP 502 with an HTML page', { status: 502, body: '<html>bad gateway</html>', contentType: 'text/html' }],
    ['200 with a body that is not JSON', { status: 200, body: 'access_token=abc&token_type=bearer', contentType: 'text/plain' }],
    ['200 with a JSON array', { status: 200, body: '[{"access_token":"abc"}]' }],
    ['200 without an access_token', { status: 200, body: '{"token_type":"Bearer","expires_in":60}' }],
    ['200 with an empty access_token', { status: 200, body: '{"access_token":"","token_type":"Bearer"}' }],
    ['a DPoP-bound token', { status: 200, body: '{"access_token":"abc","token_type":"DPoP","expires_in":60}' }],
    ['a redirect', { status: 302, body: '' }],
  ])('reports %s as idp_error', async (_what, r: Reply) => {
    reply = r;
    const err = await failure(endpoint(basicClient(), { url }).request({ grant_type: 'client_credentials' }));
    expect(err.code).toBe('ERR_CREDENTIAL_UNAVAILABLE');
    expect(err.reason).toBe('idp_error');
  });

  it.each(['N_A', 'bearer', 'Bearer'])('accepts token_type %s as a bearer token', async (type) => {
    reply = bearer({ access_token: 'issued-for-server', token_type: type });
    const issued = await endpoint(basicClient(), { url }).request({ grant_type: 'client_credentials' });
    expect(issued.accessToken).toBe('issued-for-server');
  });

  it('takes the expiry from a JWT\'s exp when expires_in is absent', async () => {
    const token = await new SignJWT({}).setProtectedHeader({ alg: 'RS256' }).setExpirationTime(Math.floor(Date.now() / 1000) + 120).sign(gatewayKey.privateKey);
    reply = json(200, { access_token: token, token_type: 'Bearer' });
    const before = Date.now();
    const issued = await endpoint(basicClient(), { url }, 5_000, 300).request({ grant_type: 'client_credentials' });
    expectExpiresIn(issued, 120, before, Date.now());
  });

  it('prefers expires_in over the JWT\'s exp (the gateway\'s clock, not the IdP\'s)', async () => {
    const token = await new SignJWT({}).setProtectedHeader({ alg: 'RS256' }).setExpirationTime(Math.floor(Date.now() / 1000) + 3_600).sign(gatewayKey.privateKey);
    reply = json(200, { access_token: token, token_type: 'Bearer', expires_in: 90 });
    const before = Date.now();
    const issued = await endpoint(basicClient(), { url }).request({ grant_type: 'client_credentials' });
    expectExpiresIn(issued, 90, before, Date.now());
  });

  it('gives an opaque token without expires_in the default lifetime', async () => {
    reply = json(200, { access_token: 'opaque-token', token_type: 'Bearer' });
    const before = Date.now();
    const issued = await endpoint(basicClient(), { url }, 5_000, 77).request({ grant_type: 'client_credentials' });
    expectExpiresIn(issued, 77, before, Date.now());
  });

  it('reports an OAuth error in a 4xx answer as refused, with the error code', async () => {
    reply = json(400, { error: 'invalid_target', error_description: 'unknown audience api://x' });
    const err = await failure(endpoint(basicClient(), { url }).request({ grant_type: 'client_credentials' }));
    expect(err.code).toBe('ERR_CREDENTIAL_REFUSED');
    expect(err.reason).toBe('refused');
    expect(err.oauthError).toBe('invalid_target');
    expect(err.message).toContain('unknown audience api://x');
  });

  it('reports invalid_client as the gateway\'s own client being rejected, not as a refusal', async () => {
    reply = json(401, { error: 'invalid_client' });
    const err = await failure(endpoint(basicClient(), { url }).request({ grant_type: 'client_credentials' }));
    expect(err.code).toBe('ERR_CREDENTIAL_UNAVAILABLE');
    expect(err.reason).toBe('client_rejected');
  });

  it('reports a token endpoint nobody listens on as unreachable', async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const err = await failure(endpoint(basicClient(), { url: `http://127.0.0.1:${port}/token` }).request({ grant_type: 'client_credentials' }));
    expect(err.reason).toBe('unreachable');
  });
});
