// Revocation semantics over the in-memory store: what is refused, what is not, what the messages say,
// how long records live, and how the local cache is kept honest. The same class over a real Valkey, across
// two "replicas" and through an outage, is in test/e2e/redis-state.test.ts.

import { describe, expect, it } from 'vitest';
import { GatewayError } from '../../ext-proc/src/errors.ts';
import type { Caller } from '../../ext-proc/src/identity/principal.ts';
import { Revocations, type RevocationRecord } from '../../ext-proc/src/identity/revocation.ts';
import { MemoryState, keys } from '../../ext-proc/src/state/store.ts';
import { UnreliableState } from '../support/unreliable-state.ts';

const ISSUER = 'https://idp.example.com';
const T0 = Date.UTC(2026, 0, 15, 9, 0, 0, 500); // revocations are made half-way through a second
const T0_S = Math.floor(T0 / 1000);

function caller(o: { sub?: string; iss?: string; jti?: string; iat?: number | null; clientId?: string; spiffeId?: string } = {}): Caller {
  const spiffeId = o.spiffeId;
  const clientId = o.clientId ?? 'claude-desktop';
  return {
    user: {
      issuerName: 'corp',
      issuer: o.iss ?? ISSUER,
      subject: o.sub ?? 'alice',
      email: undefined,
      groups: [],
      scopes: [],
      tokenId: o.jti,
      issuedAt: o.iat === null ? undefined : (o.iat ?? T0_S - 600),
      expiresAt: T0_S + 3600,
      claims: {},
    },
    agent: { clientId, spiffeId, id: spiffeId ?? clientId },
  };
}

function clock(start = T0): { now: () => number; advance: (ms: number) => void } {
  let t = start;
  return {
    now: () => t,
    advance: (ms) => {
      t += ms;
    },
  };
}

async function refusal(p: Promise<unknown>): Promise<GatewayError> {
  const err: unknown = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(err instanceof GatewayError)) throw new Error(`expected a GatewayError, got ${String(err)}`);
  return err;
}

/** The in-memory store, made unreachable or slow on demand (the real outage is tested against Valkey). */

describe('Revocations.check', () => {
  it('accepts a caller about whom nothing is revoked', async () => {
    const revocations = new Revocations(new MemoryState(), { now: clock().now });
    await expect(revocations.check(caller({ jti: 'tok-1' }))).resolves.toEqual({ checked: true });
  });

  it('refuses a revoked token by id, naming the token and not the bearer string', async () => {
    const revocations = new Revocations(new MemoryState(), { now: clock().now });
    await revocations.revoke({ kind: 'token', tokenId: 'tok-1' });
    const err = await refusal(revocations.check(caller({ jti: 'tok-1' })));
    expect(err.code).toBe('ERR_IDENTITY_REVOKED');
    expect(err.message).toBe('the token (jti "tok-1") has been revoked');
    // Another token of the same user, and a token without jti, are not affected.
    await expect(revocations.check(caller({ jti: 'tok-2' }))).resolves.toEqual({ checked: true });
    await expect(revocations.check(caller())).resolves.toEqual({ checked: true });
  });

  it('refuses tokens of a revoked subject issued at or before the revocation, and accepts later ones', async () => {
    const revocations = new Revocations(new MemoryState(), { now: clock().now });
    await revocations.revoke({ kind: 'subject', issuer: ISSUER, subject: 'alice' });

    const before = await refusal(revocations.check(caller({ iat: T0_S - 3600 })));
    expect(before.code).toBe('ERR_IDENTITY_REVOKED');
    expect(before.message).toBe(
      'the subject "alice" (issuer "https://idp.example.com") has been revoked: tokens issued at or before 2026-01-15T09:00:00.500Z are refused',
    );
    // iat has one-second resolution: a token stamped with the second of the revocation may predate it.
    expect((await refusal(revocations.check(caller({ iat: T0_S })))).code).toBe('ERR_IDENTITY_REVOKED');
    // No iat: cannot show it was issued afterwards.
    expect((await refusal(revocations.check(caller({ iat: null })))).code).toBe('ERR_IDENTITY_REVOKED');
    // Issued after (a new login): accepted.
    await expect(revocations.check(caller({ iat: T0_S + 1 }))).resolves.toEqual({ checked: true });
    // Same subject name at another issuer, or another subject: unaffected.
    await expect(revocations.check(caller({ iss: 'https://other.example.com' }))).resolves.toEqual({ checked: true });
    await expect(revocations.check(caller({ sub: 'bob' }))).resolves.toEqual({ checked: true });
  });

  it('moves the cut-off by clockSkewSeconds for issuers whose clocks run ahead', async () => {
    const revocations = new Revocations(new MemoryState(), { now: clock().now, clockSkewSeconds: 5 });
    await revocations.revoke({ kind: 'subject', issuer: ISSUER, subject: 'alice' });
    expect((await refusal(revocations.check(caller({ iat: T0_S + 5 })))).code).toBe('ERR_IDENTITY_REVOKED');
    await expect(revocations.check(caller({ iat: T0_S + 6 }))).resolves.toEqual({ checked: true });
  });

  it('refuses tokens presented by a revoked agent, by client id or SPIFFE ID, and names the agent', async () => {
    const revocations = new Revocations(new MemoryState(), { now: clock().now });
    await revocations.revoke({ kind: 'agent', agentId: 'rogue-bot' });
    const err = await refusal(revocations.check(caller({ clientId: 'rogue-bot' })));
    expect(err.code).toBe('ERR_IDENTITY_REVOKED');
    expect(err.message).toBe('the agent "rogue-bot" has been revoked: tokens issued at or before 2026-01-15T09:00:00.500Z are refused');
    // The client id alone suffices even when the agent also has a workload identity (Agent.id is the SPIFFE ID).
    expect((await refusal(revocations.check(caller({ clientId: 'rogue-bot', spiffeId: 'spiffe://corp/ns/a/sa/b' })))).code).toBe(
      'ERR_IDENTITY_REVOKED',
    );
    await revocations.revoke({ kind: 'agent', agentId: 'spiffe://corp/ns/x/sa/y' });
    expect((await refusal(revocations.check(caller({ spiffeId: 'spiffe://corp/ns/x/sa/y' })))).message).toContain(
      'the agent "spiffe://corp/ns/x/sa/y" has been revoked',
    );
    // The same user through another agent, and a token issued to the agent after the revocation: accepted.
    await expect(revocations.check(caller({ clientId: 'good-bot' }))).resolves.toEqual({ checked: true });
    await expect(revocations.check(caller({ clientId: 'rogue-bot', iat: T0_S + 1 }))).resolves.toEqual({ checked: true });
  });

  it('does not confuse subjects whose issuer and subject would concatenate alike', async () => {
    const revocations = new Revocations(new MemoryState(), { now: clock().now });
    await revocations.revoke({ kind: 'subject', issuer: 'https://a|b', subject: 'c' });
    await expect(revocations.check(caller({ iss: 'https://a', sub: 'b|c' }))).resolves.toEqual({ checked: true });
    await expect(revocations.check(caller({ iss: 'https://a:b', sub: 'c' }))).resolves.toEqual({ checked: true });
    expect((await refusal(revocations.check(caller({ iss: 'https://a|b', sub: 'c' })))).code).toBe('ERR_IDENTITY_REVOKED');
  });
});

describe('Revocations across replicas sharing one store', () => {
  it('enforces a revocation made through one instance on another whose cache said "not revoked"', async () => {
    const state = new MemoryState();
    const a = new Revocations(state, { now: clock().now });
    const b = new Revocations(state, { now: clock().now });
    await Promise.all([a.ready(), b.ready()]);
    await expect(b.check(caller({ jti: 'tok-1' }))).resolves.toEqual({ checked: true });
    await a.revoke({ kind: 'token', tokenId: 'tok-1' });
    expect((await refusal(b.check(caller({ jti: 'tok-1' })))).code).toBe('ERR_IDENTITY_REVOKED');
  });

  it('tells onRevoked listeners on every instance what was revoked', async () => {
    const state = new MemoryState();
    const a = new Revocations(state, { now: clock().now });
    const b = new Revocations(state, { now: clock().now });
    const heard: RevocationRecord[] = [];
    const stop = b.onRevoked((r) => heard.push(r));
    await a.revoke({ kind: 'subject', issuer: ISSUER, subject: 'alice' });
    stop();
    await a.revoke({ kind: 'agent', agentId: 'x' });
    expect(heard).toEqual([{ kind: 'subject', issuer: ISSUER, subject: 'alice', revokedAtMs: T0, lapsesAtMs: T0 + 86_400_000 }]);
  });
});

describe('Revocations cache', () => {
  it('answers repeated checks locally', async () => {
    const state = new UnreliableState();
    const revocations = new Revocations(state, { now: clock().now });
    await revocations.ready();
    await revocations.check(caller({ jti: 'tok-1' }));
    const after = state.gets;
    expect(after).toBe(3); // token, subject, agent
    for (let i = 0; i < 10; i++) await revocations.check(caller({ jti: 'tok-1' }));
    expect(state.gets).toBe(after);
  });

  it('trusts a cached "not revoked" for negativeCacheTtlSeconds when no announcement arrives', async () => {
    const state = new UnreliableState();
    const time = clock();
    const revocations = new Revocations(state, { now: time.now, negativeCacheTtlSeconds: 30 });
    await revocations.ready();
    await revocations.check(caller({ jti: 'tok-1' }));
    // A record written without an announcement (a lost message).
    const record: RevocationRecord = { kind: 'token', tokenId: 'tok-1', revokedAtMs: T0, lapsesAtMs: T0 + 3_600_000 };
    await state.inner.set(keys.revokedToken('tok-1'), JSON.stringify(record), 3600);
    time.advance(29_000);
    await expect(revocations.check(caller({ jti: 'tok-1' }))).resolves.toEqual({ checked: true });
    time.advance(1_001);
    expect((await refusal(revocations.check(caller({ jti: 'tok-1' })))).code).toBe('ERR_IDENTITY_REVOKED');
  });

  it('does not let a lookup that started before a revocation cache a stale "not revoked"', async () => {
    const state = new UnreliableState();
    const revocations = new Revocations(state, { now: clock().now });
    await revocations.ready();
    let open = (): void => undefined;
    state.gate = new Promise((resolve) => {
      open = resolve;
    });
    const slow = revocations.check(caller({ jti: 'tok-1' })); // reads "nothing" now, answers later
    state.gate = undefined;
    await revocations.revoke({ kind: 'token', tokenId: 'tok-1' });
    open();
    await expect(slow).resolves.toEqual({ checked: true }); // it was in flight at the moment of revocation
    expect((await refusal(revocations.check(caller({ jti: 'tok-1' })))).code).toBe('ERR_IDENTITY_REVOKED');
  });
});

describe('Revocations when shared state is unreachable', () => {
  it('fails closed by default, with ERR_STATE_UNAVAILABLE', async () => {
    const state = new UnreliableState();
    const revocations = new Revocations(state, { now: clock().now });
    state.down = true;
    const err = await refusal(revocations.check(caller()));
    expect(err.code).toBe('ERR_STATE_UNAVAILABLE');
    expect(err.message).toBe('could not check whether the token is revoked: shared state is unavailable');
    expect((err.cause as Error).message).toContain('ECONNREFUSED');
  });

  it('lets the caller through in open mode, saying that it did not check', async () => {
    const state = new UnreliableState();
    const revocations = new Revocations(state, { now: clock().now, failureMode: 'open' });
    state.down = true;
    const outcome = await revocations.check(caller());
    expect(outcome.checked).toBe(false);
    if (!outcome.checked) expect(outcome.cause.code).toBe('ERR_STATE_UNAVAILABLE');
  });

  it('still answers from its cache, positive and negative', async () => {
    const state = new UnreliableState();
    const revocations = new Revocations(state, { now: clock().now });
    await revocations.ready();
    await revocations.revoke({ kind: 'token', tokenId: 'tok-bad' });
    await revocations.check(caller({ jti: 'tok-good' }));
    await refusal(revocations.check(caller({ jti: 'tok-bad' })));
    state.down = true;
    await expect(revocations.check(caller({ jti: 'tok-good' }))).resolves.toEqual({ checked: true });
    expect((await refusal(revocations.check(caller({ jti: 'tok-bad' })))).code).toBe('ERR_IDENTITY_REVOKED');
    // Unknown before the outage: the failure mode decides.
    expect((await refusal(revocations.check(caller({ jti: 'tok-new' })))).code).toBe('ERR_STATE_UNAVAILABLE');
  });

  it('refuses a known revocation even when another lookup of the same check fails', async () => {
    const state = new UnreliableState();
    const revocations = new Revocations(state, { now: clock().now, failureMode: 'open' });
    await revocations.ready();
    await revocations.revoke({ kind: 'subject', issuer: ISSUER, subject: 'alice' });
    await refusal(revocations.check(caller({ jti: 'tok-1' }))); // caches the subject record
    state.down = true;
    expect((await refusal(revocations.check(caller({ jti: 'tok-2' })))).code).toBe('ERR_IDENTITY_REVOKED');
  });

  it('reports a revocation it could not record as ERR_STATE_UNAVAILABLE', async () => {
    const state = new UnreliableState();
    const revocations = new Revocations(state, { now: clock().now });
    state.down = true;
    expect((await refusal(revocations.revoke({ kind: 'agent', agentId: 'x' }))).code).toBe('ERR_STATE_UNAVAILABLE');
  });
});

describe('Revocations records', () => {
  it('keeps a token revocation until the token expires (plus a margin), else for maxTokenRetentionSeconds', async () => {
    const revocations = new Revocations(new MemoryState(), { now: clock().now, maxTokenRetentionSeconds: 7200 });
    const withExp = await revocations.revoke({ kind: 'token', tokenId: 't1', expiresAt: T0_S + 3600 });
    expect(withExp.lapsesAtMs).toBe(T0 + (3600 + 300) * 1000);
    const withoutExp = await revocations.revoke({ kind: 'token', tokenId: 't2' });
    expect(withoutExp.lapsesAtMs).toBe(T0 + 7200 * 1000);
  });

  it('keeps subject and agent revocations for retentionSeconds', async () => {
    const revocations = new Revocations(new MemoryState(), { now: clock().now, retentionSeconds: 172_800 });
    const subject = await revocations.revoke({ kind: 'subject', issuer: ISSUER, subject: 'alice' });
    const agent = await revocations.revoke({ kind: 'agent', agentId: 'bot' });
    expect(subject).toEqual({ kind: 'subject', issuer: ISSUER, subject: 'alice', revokedAtMs: T0, lapsesAtMs: T0 + 172_800_000 });
    expect(agent.lapsesAtMs).toBe(T0 + 172_800_000);
  });

  it('lists what is in force, newest first', async () => {
    const time = clock();
    const revocations = new Revocations(new MemoryState(), { now: time.now });
    await revocations.revoke({ kind: 'token', tokenId: 'tok-1' });
    time.advance(1000);
    await revocations.revoke({ kind: 'agent', agentId: 'bot' });
    time.advance(1000);
    await revocations.revoke({ kind: 'subject', issuer: ISSUER, subject: 'alice' });
    const listed = await revocations.list();
    expect(listed.map((r) => r.kind)).toEqual(['subject', 'agent', 'token']);
    expect(listed[2]).toEqual({ kind: 'token', tokenId: 'tok-1', revokedAtMs: T0, lapsesAtMs: T0 + 86_400_000 });
  });

  it('rejects malformed revocations and options with messages naming the field', async () => {
    const revocations = new Revocations(new MemoryState());
    await expect(revocations.revoke({ kind: 'subject', issuer: ISSUER, subject: '' })).rejects.toThrow(
      'a subject revocation needs subject (a non-empty string)',
    );
    await expect(revocations.revoke({ kind: 'token', tokenId: 't', expiresAt: Number.NaN })).rejects.toThrow(
      "a token revocation's expiresAt must be seconds since the epoch (got NaN)",
    );
    expect(() => new Revocations(new MemoryState(), { retentionSeconds: 0 })).toThrow(
      'revocation option retentionSeconds must be a positive number (got 0)',
    );
    expect(() => new Revocations(new MemoryState(), { failureMode: 'sometimes' as 'open' })).toThrow(
      'revocation failureMode must be "closed" or "open" (got "sometimes")',
    );
  });
});

describe('MemoryState pub/sub', () => {
  it('delivers to every subscriber of the channel until it unsubscribes', async () => {
    const state = new MemoryState();
    const got: string[] = [];
    const stop = await state.subscribe('c', (m) => got.push(`1:${m}`));
    await state.subscribe('c', (m) => got.push(`2:${m}`));
    await state.subscribe('other', (m) => got.push(`x:${m}`));
    await state.publish('c', 'a');
    await stop();
    await state.publish('c', 'b');
    expect(got).toEqual(['1:a', '2:a', '2:b']);
  });

  it('keeps delivering when a handler throws, and reports the error', async () => {
    const errors: unknown[] = [];
    const state = new MemoryState({ onHandlerError: (e) => errors.push(e) });
    const got: string[] = [];
    await state.subscribe('c', () => {
      throw new Error('boom');
    });
    await state.subscribe('c', (m) => got.push(m));
    await state.publish('c', 'a');
    expect(got).toEqual(['a']);
    expect(errors).toHaveLength(1);
  });
});
