// Cached downstream credentials: an in-process LRU (L1) in front of shared state (L2, Redis), so that a
// token is exchanged once per (user token, server, scopes) across every replica, not once per request.
//
//   lookup ─▶ L1 hit ─────────────────────────────────────────────▶ credential
//          └▶ L2 hit (unsealed) ─▶ fill L1 ─────────────────────────▶ credential
//          └▶ miss ─▶ this replica already fetching this key? share it
//                  └▶ lock in shared state (SET NX) ─▶ fetch from the IdP ─▶ seal into L2, fill L1
//                  └▶ another replica holds the lock ─▶ poll L2 until its result appears (or the lock goes)
//
// Entries live until the credential's expiry minus a margin. L2 holds only AES-256-GCM ciphertext
// (seal.ts); without a key ring the cache stays in-process. Shared state that fails makes a miss go
// to the IdP directly (L1 keeps serving what it holds), and an entry that does not open is a miss
// that gets replaced. Keys carry short hashes of the user, agent and token id, so that a revocation
// can find and drop what belongs to it without reading any value.

import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { RevocationRecord } from '../identity/revocation.ts';
import { keys, type SharedState } from '../state/store.ts';
import { seal, unseal, type KeyRing } from './seal.ts';
import type { IssuedToken } from './token-endpoint.ts';

/** Whose credential an entry is, as short hashes (in key names) — the revocation kinds. */
export interface CacheOwner {
  /** issuer|subject of the user, or undefined for the gateway's own credentials. */
  readonly principal: string | undefined;
  readonly agent: string | undefined;
  /** The user token's jti, or the token itself when it has none. */
  readonly token: string | undefined;
}

export interface CacheKey {
  /** The shared-state key; also the AAD of its sealed value. */
  readonly id: string;
}

/** Where a credential came from: L1, L2, the IdP, or another caller's fetch of the same key in this process. */
export type CacheSource = 'l1' | 'l2' | 'fetched' | 'coalesced';

export interface CacheEvents {
  /** Shared state failed for a cache read or write (the lookup went on without it). */
  sharedStateError?(err: unknown): void;
  /** An L2 entry that did not open or parse (wrong key, tampered, foreign format). */
  corrupt?(): void;
}

export interface CredentialCacheOptions {
  readonly state: SharedState;
  /** Without one, nothing goes to shared state. */
  readonly keyRing: KeyRing | undefined;
  readonly maxEntries?: number;
  /** How often a replica waiting for another's exchange looks for the result (default 25 ms). */
  readonly pollMs?: number;
  readonly events?: CacheEvents;
}

interface Entry {
  readonly token: string;
  readonly expiresAtMs: number;
  /** When it stops being handed out (expiry minus the refresh margin). */
  readonly staleAtMs: number;
}

const PART = /^[0-9a-f]{12}$|^-$/;

export function h12(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 12);
}

/**
 * `mcp:cred:<principal>.<agent>.<token>.<sha256 of everything that makes the credential>` — the first
 * three parts are 12-hex hashes (or "-" for none), the way revocations find entries.
 */
export function cacheKey(owner: CacheOwner, material: readonly string[]): CacheKey {
  const part = (v: string | undefined): string => (v === undefined ? '-' : h12(v));
  const digest = createHash('sha256').update(material.join('\u0000')).digest('hex');
  return { id: `${keys.credentialPrefix}${part(owner.principal)}.${part(owner.agent)}.${part(owner.token)}.${digest}` };
}

/** The key pattern (glob with *) that matches every entry a revocation covers. */
export function revocationPattern(r: RevocationRecord): string {
  switch (r.kind) {
    case 'subject':
      return `${keys.credentialPrefix}${h12(`${r.issuer}|${r.subject}`)}.*`;
    case 'agent':
      return `${keys.credentialPrefix}*.${h12(r.agentId)}.*`;
    case 'token':
      return `${keys.credentialPrefix}*.*.${h12(r.tokenId)}.*`;
  }
}

function matches(key: string, r: RevocationRecord): boolean {
  const parts = key.slice(keys.credentialPrefix.length).split('.');
  if (parts.length !== 4 || !parts.slice(0, 3).every((p) => PART.test(p))) return false;
  switch (r.kind) {
    case 'subject':
      return parts[0] === h12(`${r.issuer}|${r.subject}`);
    case 'agent':
      return parts[1] === h12(r.agentId);
    case 'token':
      return parts[2] === h12(r.tokenId);
  }
}

export class CredentialCache {
  readonly #state: SharedState;
  readonly #ring: KeyRing | undefined;
  readonly #l1: LRUCache<string, Entry>;
  readonly #pollMs: number;
  readonly #events: CacheEvents;
  readonly #inflight = new Map<string, Promise<{ token: string; source: CacheSource }>>();
  /** Keys dropped while being fetched: a fetch that began before a drop must not refill the cache after it. */
  readonly #dropped = new Set<string>();

  constructor(options: CredentialCacheOptions) {
    this.#state = options.state;
    // In memory, "shared" state is this process: L1 is the whole cache.
    this.#ring = options.state.kind === 'memory' ? undefined : options.keyRing;
    this.#l1 = new LRUCache<string, Entry>({ max: options.maxEntries ?? 50_000, ttlAutopurge: false });
    this.#pollMs = options.pollMs ?? 25;
    this.#events = options.events ?? {};
  }

  /** Whether entries are shared with other replicas (Redis and a key ring). */
  get shared(): boolean {
    return this.#ring !== undefined;
  }

  /**
   * The cached credential for `key`, or the one `fetch` gets (once per key across concurrent callers and,
   * with shared state, across replicas). `marginMs` is how long before expiry an entry stops being used.
   * `waitMs` bounds how long this replica waits for another replica's fetch before fetching itself.
   */
  get(key: CacheKey, marginMs: number, waitMs: number, fetch: () => Promise<IssuedToken>): Promise<{ token: string; source: CacheSource }> {
    const now = Date.now();
    const hit = this.#l1.get(key.id);
    if (hit !== undefined && hit.staleAtMs > now) return Promise.resolve({ token: hit.token, source: 'l1' });
    const running = this.#inflight.get(key.id);
    if (running !== undefined) return running.then((r) => ({ token: r.token, source: 'coalesced' }));
    const pending = this.#miss(key, marginMs, waitMs, fetch).finally(() => {
      this.#inflight.delete(key.id);
      this.#dropped.delete(key.id);
    });
    this.#inflight.set(key.id, pending);
    return pending;
  }

  /** This replica's cached token for `key`, if it is still to be used; nothing else is tried. */
  peek(key: CacheKey): string | undefined {
    const hit = this.#l1.get(key.id);
    return hit !== undefined && hit.staleAtMs > Date.now() ? hit.token : undefined;
  }

  /** Forgets one credential everywhere (the server rejected it). */
  async drop(key: CacheKey): Promise<void> {
    this.#l1.delete(key.id);
    if (this.#inflight.has(key.id)) this.#dropped.add(key.id);
    if (this.#ring !== undefined) await this.#state.delete(key.id).catch((err: unknown) => this.#events.sharedStateError?.(err));
  }

  /**
   * Forgets every credential a revocation covers: this replica's L1 at once; shared state by a scan
   * (every replica hears the revocation, and deleting twice is harmless). Returns how many L1 entries went.
   */
  async dropRevoked(r: RevocationRecord): Promise<number> {
    let dropped = 0;
    for (const id of new Set([...this.#l1.keys(), ...this.#inflight.keys()])) {
      if (!matches(id, r)) continue;
      if (this.#l1.delete(id)) dropped++;
      if (this.#inflight.has(id)) this.#dropped.add(id);
    }
    if (this.#ring !== undefined) {
      try {
        const found = await this.#state.keysMatching(revocationPattern(r));
        await Promise.all(found.map((id) => this.#state.delete(id)));
      } catch (err) {
        this.#events.sharedStateError?.(err);
      }
    }
    return dropped;
  }

  async #miss(key: CacheKey, marginMs: number, waitMs: number, fetch: () => Promise<IssuedToken>): Promise<{ token: string; source: CacheSource }> {
    const shared = await this.#readShared(key);
    if (shared !== undefined && shared.staleAtMs > Date.now()) {
      this.#remember(key, shared);
      return { token: shared.token, source: 'l2' };
    }
    let locked = false;
    if (this.#ring !== undefined) {
      const lock = keys.credentialLock(key.id);
      try {
        locked = await this.#state.setIfAbsent(lock, String(process.pid), Math.max(1, Math.ceil(waitMs / 1000)));
        if (!locked) {
          const theirs = await this.#awaitOther(key, lock, waitMs);
          if (theirs !== undefined) {
            this.#remember(key, theirs);
            return { token: theirs.token, source: 'l2' };
          }
        }
      } catch (err) {
        this.#events.sharedStateError?.(err);
      }
    }
    try {
      const issued = await fetch();
      const entry: Entry = { token: issued.accessToken, expiresAtMs: issued.expiresAtMs, staleAtMs: staleAt(issued.expiresAtMs, marginMs) };
      if (this.#remember(key, entry)) await this.#writeShared(key, entry);
      return { token: entry.token, source: 'fetched' };
    } finally {
      if (locked) await this.#state.delete(keys.credentialLock(key.id)).catch((err: unknown) => this.#events.sharedStateError?.(err));
    }
  }

  /** Another replica is fetching: its result appears in L2, or its lock goes (it failed), or time is up. */
  async #awaitOther(key: CacheKey, lock: string, waitMs: number): Promise<Entry | undefined> {
    const deadline = Date.now() + waitMs;
    while (Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, this.#pollMs));
      const entry = await this.#readShared(key);
      if (entry !== undefined && entry.staleAtMs > Date.now()) return entry;
      if ((await this.#state.get(lock)) === undefined) return this.#readShared(key);
    }
    return undefined;
  }

  /** Keeps an entry in L1, unless it was dropped while it was being fetched; false then. */
  #remember(key: CacheKey, entry: Entry): boolean {
    // Dropped meanwhile (a revocation, a 401): the result serves the callers waiting, not the next ones.
    if (this.#dropped.has(key.id)) return false;
    const ttl = entry.staleAtMs - Date.now();
    if (ttl > 0) this.#l1.set(key.id, entry, { ttl });
    return true;
  }

  async #readShared(key: CacheKey): Promise<Entry | undefined> {
    const ring = this.#ring;
    if (ring === undefined) return undefined;
    let sealed: string | undefined;
    try {
      sealed = await this.#state.get(key.id);
    } catch (err) {
      this.#events.sharedStateError?.(err);
      return undefined;
    }
    if (sealed === undefined) return undefined;
    const entry = parseEntry(unseal(ring, sealed, key.id));
    if (entry === undefined) this.#events.corrupt?.();
    return entry;
  }

  async #writeShared(key: CacheKey, entry: Entry): Promise<void> {
    const ring = this.#ring;
    const ttlSeconds = (entry.staleAtMs - Date.now()) / 1000;
    if (ring === undefined || ttlSeconds <= 0) return;
    try {
      await this.#state.set(key.id, seal(ring, JSON.stringify({ t: entry.token, e: entry.expiresAtMs, s: entry.staleAtMs }), key.id), ttlSeconds);
    } catch (err) {
      this.#events.sharedStateError?.(err);
    }
  }
}

/** Stop using a credential `marginMs` before it expires; a short-lived one at half its remaining life. */
function staleAt(expiresAtMs: number, marginMs: number): number {
  const now = Date.now();
  const life = expiresAtMs - now;
  return now + Math.max(0, life > 2 * marginMs ? life - marginMs : life / 2);
}

function parseEntry(text: string | undefined): Entry | undefined {
  if (text === undefined) return undefined;
  try {
    const v = JSON.parse(text) as { t?: unknown; e?: unknown; s?: unknown };
    if (typeof v.t === 'string' && typeof v.e === 'number' && typeof v.s === 'number') return { token: v.t, expiresAtMs: v.e, staleAtMs: v.s };
  } catch {
    // Falls through: unreadable.
  }
  return undefined;
}
