// The downstream credential cache on its own: sealing, the two levels, collapsing concurrent misses,
// shared state failing, revocation. Shared state here is the in-memory store presented as Redis (the
// Redis-backed behaviour is exercised against Valkey in test/e2e/token-swap.test.ts).

import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { cacheKey, CredentialCache, type CacheKey } from '../../ext-proc/src/credentials/cache.ts';
import { parseKeyRing, seal, unseal } from '../../ext-proc/src/credentials/seal.ts';
import type { IssuedToken } from '../../ext-proc/src/credentials/token-endpoint.ts';
import type { RevocationRecord } from '../../ext-proc/src/identity/revocation.ts';
import { keys } from '../../ext-proc/src/state/store.ts';
import { UnreliableState } from '../support/unreliable-state.ts';

const KEY_A = randomBytes(32).toString('base64');
const KEY_B = randomBytes(32).toString('base64');
const RING = parseKeyRing(`a:${KEY_A}`);

function owner(subject = 'alice', agent = 'agent-a', token = 'jti-1'): { principal: string; agent: string; token: string } {
  return { principal: `https://idp|${subject}`, agent, token };
}

/** A token source that counts its calls and can be made slow or failing. */
function source(lifetimeMs = 300_000): { calls: () => number; fetch: () => Promise<IssuedToken>; delayMs: number; fail: Error | undefined } {
  let n = 0;
  const s = {
    delayMs: 0,
    fail: undefined as Error | undefined,
    calls: () => n,
    fetch: async (): Promise<IssuedToken> => {
      n++;
      if (s.delayMs > 0) await new Promise((r) => setTimeout(r, s.delayMs));
      if (s.fail !== undefined) throw s.fail;
      return { accessToken: `downstream-token-${n}`, expiresAtMs: Date.now() + lifetimeMs };
    },
  };
  return s;
}

const MARGIN = 30_000;
const WAIT = 2_000;

describe('sealing credentials at rest', () => {
  it('opens what it sealed and nothing else', () => {
    const sealed = seal(RING, 'secret-token', 'key-1');
    expect(sealed).not.toContain('secret-token');
    expect(sealed.startsWith('v1.a.')).toBe(true);
    expect(unseal(RING, sealed, 'key-1')).toBe('secret-token');
    // Bound to its key: copied under another key it does not open.
    expect(unseal(RING, sealed, 'key-2')).toBeUndefined();
    const parts = sealed.split('.');
    const flipped = Buffer.from(parts[3] ?? '', 'base64url');
    flipped[0] = (flipped[0] ?? 0) ^ 1;
    expect(unseal(RING, [...parts.slice(0, 3), flipped.toString('base64url'), parts[4]].join('.'), 'key-1')).toBeUndefined();
    expect(unseal(RING, 'not sealed at all', 'key-1')).toBeUndefined();
  });

  it('rotates keys: the new first key seals, the old one still opens', () => {
    const old = seal(RING, 'v', 'k');
    const rotated = parseKeyRing(`b:${KEY_B},a:${KEY_A}`);
    expect(unseal(rotated, old, 'k')).toBe('v');
    expect(seal(rotated, 'v', 'k').startsWith('v1.b.')).toBe(true);
    // A ring without the sealing key cannot open it.
    expect(unseal(parseKeyRing(`b:${KEY_B}`), old, 'k')).toBeUndefined();
  });

  it('refuses key rings it cannot use, without echoing key material', () => {
    expect(() => parseKeyRing('')).toThrow(/expected "<id>:<base64 key>"/);
    expect(() => parseKeyRing('a:c2hvcnQ=')).toThrow(/32 random bytes.*got 5 bytes/);
    expect(() => parseKeyRing(`a:${KEY_A},a:${KEY_B}`)).toThrow(/listed twice/);
    try {
      parseKeyRing(`x y:${KEY_A}`);
    } catch (err) {
      expect((err as Error).message).not.toContain(KEY_A);
    }
  });
});

describe('credential cache', () => {
  it('fetches once for 100 concurrent first lookups and answers later ones from L1', async () => {
    const cache = new CredentialCache({ state: new UnreliableState('redis'), keyRing: RING });
    const idp = source();
    const key = cacheKey(owner(), ['srv', 'user-token']);
    const results = await Promise.all(Array.from({ length: 100 }, () => cache.get(key, MARGIN, WAIT, idp.fetch)));
    expect(idp.calls()).toBe(1);
    expect(new Set(results.map((r) => r.token))).toEqual(new Set(['downstream-token-1']));
    expect(results.filter((r) => r.source === 'fetched')).toHaveLength(1);
    expect(results.filter((r) => r.source === 'coalesced')).toHaveLength(99);
    expect((await cache.get(key, MARGIN, WAIT, idp.fetch)).source).toBe('l1');
    expect(idp.calls()).toBe(1);
  });

  it('keeps different users, servers and scopes apart', async () => {
    const cache = new CredentialCache({ state: new UnreliableState('redis'), keyRing: RING });
    const idp = source();
    await cache.get(cacheKey(owner('alice'), ['srv', 't1']), MARGIN, WAIT, idp.fetch);
    await cache.get(cacheKey(owner('bob'), ['srv', 't2']), MARGIN, WAIT, idp.fetch);
    await cache.get(cacheKey(owner('alice'), ['other', 't1']), MARGIN, WAIT, idp.fetch);
    await cache.get(cacheKey(owner('alice'), ['srv', 't1', 'scope-b']), MARGIN, WAIT, idp.fetch);
    expect(idp.calls()).toBe(4);
  });

  it('shares a credential with another replica through shared state, as ciphertext only', async () => {
    const state = new UnreliableState('redis');
    const one = new CredentialCache({ state, keyRing: RING });
    const two = new CredentialCache({ state, keyRing: RING });
    const idp = source();
    const key = cacheKey(owner(), ['srv', 'user-token']);
    const first = await one.get(key, MARGIN, WAIT, idp.fetch);
    const second = await two.get(key, MARGIN, WAIT, idp.fetch);
    expect(second).toEqual({ token: first.token, source: 'l2' });
    expect(idp.calls()).toBe(1);
    const raw = await state.inner.get(key.id);
    expect(raw).toBeDefined();
    expect(raw).not.toContain(first.token);
    expect(key.id.startsWith(keys.credentialPrefix)).toBe(true);
  });

  it('lets one replica exchange while the other waits for its result', async () => {
    const state = new UnreliableState('redis');
    const one = new CredentialCache({ state, keyRing: RING, pollMs: 5 });
    const two = new CredentialCache({ state, keyRing: RING, pollMs: 5 });
    const idp = source();
    idp.delayMs = 100;
    const key = cacheKey(owner(), ['srv', 'user-token']);
    const [a, b] = await Promise.all([one.get(key, MARGIN, WAIT, idp.fetch), two.get(key, MARGIN, WAIT, idp.fetch)]);
    expect(idp.calls()).toBe(1);
    expect(a.token).toBe(b.token);
    expect([a.source, b.source].sort()).toEqual(['fetched', 'l2']);
    expect(await state.inner.get(keys.credentialLock(key.id))).toBeUndefined();
  });

  it('fetches itself when the replica holding the lock fails', async () => {
    const state = new UnreliableState('redis');
    const one = new CredentialCache({ state, keyRing: RING, pollMs: 5 });
    const two = new CredentialCache({ state, keyRing: RING, pollMs: 5 });
    const failing = source();
    failing.delayMs = 50;
    failing.fail = new Error('IdP said no');
    const working = source();
    const key = cacheKey(owner(), ['srv', 'user-token']);
    const [a, b] = await Promise.allSettled([one.get(key, MARGIN, WAIT, failing.fetch), new Promise((r) => setTimeout(r, 10)).then(() => two.get(key, MARGIN, WAIT, working.fetch))]);
    expect(a.status).toBe('rejected');
    expect(b.status === 'fulfilled' ? b.value.source : b.reason).toBe('fetched');
    expect(working.calls()).toBe(1);
  });

  it('treats an entry that does not open as a miss and replaces it', async () => {
    const state = new UnreliableState('redis');
    let corrupt = 0;
    const cache = new CredentialCache({ state, keyRing: RING, events: { corrupt: () => corrupt++ } });
    const idp = source();
    const key = cacheKey(owner(), ['srv', 'user-token']);
    await state.inner.set(key.id, 'v1.a.garbage.garbage.garbage', 60);
    const got = await cache.get(key, MARGIN, WAIT, idp.fetch);
    expect(got.source).toBe('fetched');
    expect(corrupt).toBe(1);
    expect(unseal(RING, (await state.inner.get(key.id)) ?? '', key.id)).toContain(got.token);
    // Sealed under a key this replica does not have: also a miss.
    const foreign = new CredentialCache({ state, keyRing: parseKeyRing(`b:${KEY_B}`), events: { corrupt: () => corrupt++ } });
    expect((await foreign.get(key, MARGIN, WAIT, idp.fetch)).source).toBe('fetched');
    expect(corrupt).toBe(2);
  });

  it('keeps serving from L1 and goes straight to the IdP when shared state is down', async () => {
    const state = new UnreliableState('redis');
    let errors = 0;
    const cache = new CredentialCache({ state, keyRing: RING, events: { sharedStateError: () => errors++ } });
    const idp = source();
    const cached = cacheKey(owner('alice'), ['srv', 't1']);
    await cache.get(cached, MARGIN, WAIT, idp.fetch);
    state.down = true;
    expect((await cache.get(cached, MARGIN, WAIT, idp.fetch)).source).toBe('l1');
    const fresh = await cache.get(cacheKey(owner('bob'), ['srv', 't2']), MARGIN, WAIT, idp.fetch);
    expect(fresh.source).toBe('fetched');
    expect(idp.calls()).toBe(2);
    expect(errors).toBeGreaterThan(0);
  });

  it('stops handing out a credential before it expires', async () => {
    const cache = new CredentialCache({ state: new UnreliableState('redis'), keyRing: RING });
    // Lives 300 ms; with a 30 s margin it is used for half its life.
    const idp = source(300);
    const key = cacheKey(owner(), ['srv', 'user-token']);
    await cache.get(key, MARGIN, WAIT, idp.fetch);
    expect((await cache.get(key, MARGIN, WAIT, idp.fetch)).source).toBe('l1');
    await new Promise((r) => setTimeout(r, 200));
    expect((await cache.get(key, MARGIN, WAIT, idp.fetch)).source).toBe('fetched');
    expect(idp.calls()).toBe(2);
  });

  it('drops a credential the server rejected, on every level', async () => {
    const state = new UnreliableState('redis');
    const cache = new CredentialCache({ state, keyRing: RING });
    const idp = source();
    const key = cacheKey(owner(), ['srv', 'user-token']);
    await cache.get(key, MARGIN, WAIT, idp.fetch);
    await cache.drop(key);
    expect(await state.inner.get(key.id)).toBeUndefined();
    expect((await cache.get(key, MARGIN, WAIT, idp.fetch)).token).toBe('downstream-token-2');
  });

  it('drops what a revocation of a subject, an agent or a token covers, and nothing else', async () => {
    const state = new UnreliableState('redis');
    const cache = new CredentialCache({ state, keyRing: RING });
    const idp = source();
    const entries: Record<string, CacheKey> = {
      alice: cacheKey(owner('alice', 'agent-a', 'jti-a'), ['srv', 'ta']),
      bob: cacheKey(owner('bob', 'agent-b', 'jti-b'), ['srv', 'tb']),
      carol: cacheKey(owner('carol', 'agent-c', 'jti-c'), ['srv', 'tc']),
      gateway: cacheKey({ principal: undefined, agent: undefined, token: undefined }, ['srv']),
    };
    for (const k of Object.values(entries)) await cache.get(k, MARGIN, WAIT, idp.fetch);
    const at = { revokedAtMs: Date.now(), lapsesAtMs: Date.now() + 60_000 };
    const revocations: RevocationRecord[] = [
      { kind: 'subject', issuer: 'https://idp', subject: 'alice', ...at },
      { kind: 'agent', agentId: 'agent-b', ...at },
      { kind: 'token', tokenId: 'jti-c', ...at },
    ];
    const remaining = async (): Promise<string[]> => (await state.inner.keysWithPrefix(keys.credentialPrefix)).sort();
    expect(await remaining()).toHaveLength(4);
    const dropped = [];
    for (const r of revocations) dropped.push(await cache.dropRevoked(r));
    expect(dropped).toEqual([1, 1, 1]);
    expect(await remaining()).toEqual([entries['gateway']?.id]);
    const before = idp.calls();
    expect((await cache.get(entries['alice'] as CacheKey, MARGIN, WAIT, idp.fetch)).source).toBe('fetched');
    expect((await cache.get(entries['gateway'] as CacheKey, MARGIN, WAIT, idp.fetch)).source).toBe('l1');
    expect(idp.calls()).toBe(before + 1);
  });

  it('does not refill the cache with a fetch that a revocation overtook', async () => {
    const cache = new CredentialCache({ state: new UnreliableState('redis'), keyRing: RING });
    const idp = source();
    idp.delayMs = 50;
    const key = cacheKey(owner('alice'), ['srv', 't1']);
    const pending = cache.get(key, MARGIN, WAIT, idp.fetch);
    await new Promise((r) => setTimeout(r, 10));
    await cache.dropRevoked({ kind: 'subject', issuer: 'https://idp', subject: 'alice', revokedAtMs: Date.now(), lapsesAtMs: Date.now() + 60_000 });
    await pending;
    idp.delayMs = 0;
    expect((await cache.get(key, MARGIN, WAIT, idp.fetch)).source).toBe('fetched');
    expect(idp.calls()).toBe(2);
  });
});
