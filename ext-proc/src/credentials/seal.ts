// Downstream credentials at rest in shared state: AES-256-GCM under a key ring, so that whoever can read
// Redis reads only ciphertext. The stored value names the key that sealed it, so keys can rotate: the
// first key of the ring seals, every key of the ring opens. The cache key is the additional
// authenticated data, so an entry copied under another key does not open.
//
//   v1.<key id>.<iv>.<ciphertext>.<tag>      (base64url parts; iv 12 bytes, tag 16 bytes)

import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';

export interface KeyRing {
  /** Seals new values. */
  readonly currentId: string;
  readonly keys: ReadonlyMap<string, Buffer>;
}

const KEY_ID = /^[A-Za-z0-9_-]{1,32}$/;

/**
 * `id:base64key[,id:base64key…]`, the first sealing (each key 32 bytes, base64 or base64url). Throws a
 * RangeError naming the entry that is wrong; never echoes key material.
 */
export function parseKeyRing(text: string): KeyRing {
  const keys = new Map<string, Buffer>();
  let currentId: string | undefined;
  for (const [i, entry] of text.split(',').entries()) {
    const colon = entry.indexOf(':');
    const id = entry.slice(0, colon).trim();
    if (colon < 0 || !KEY_ID.test(id)) throw new RangeError(`key ${i + 1}: expected "<id>:<base64 key>" with an id of letters, digits, _ or -`);
    const key = Buffer.from(entry.slice(colon + 1).trim(), 'base64');
    if (key.length !== 32) throw new RangeError(`key "${id}": must be 32 random bytes in base64 (got ${key.length} bytes); e.g. openssl rand -base64 32`);
    if (keys.has(id)) throw new RangeError(`key "${id}" is listed twice`);
    keys.set(id, key);
    currentId ??= id;
  }
  if (currentId === undefined) throw new RangeError('no key given');
  return { currentId, keys };
}

export function seal(ring: KeyRing, plaintext: string, aad: string): string {
  const key = ring.keys.get(ring.currentId);
  if (key === undefined) throw new Error('key ring without its current key');
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  cipher.setAAD(Buffer.from(aad, 'utf8'));
  const ciphertext = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()]);
  return ['v1', ring.currentId, iv.toString('base64url'), ciphertext.toString('base64url'), cipher.getAuthTag().toString('base64url')].join('.');
}

/** The plaintext, or undefined for anything that does not open: unknown key, wrong format, tampering. */
export function unseal(ring: KeyRing, sealed: string, aad: string): string | undefined {
  const [version, id, iv, ciphertext, tag, extra] = sealed.split('.');
  if (version !== 'v1' || id === undefined || iv === undefined || ciphertext === undefined || tag === undefined || extra !== undefined) return undefined;
  const key = ring.keys.get(id);
  if (key === undefined) return undefined;
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, Buffer.from(iv, 'base64url'), { authTagLength: 16 });
    decipher.setAAD(Buffer.from(aad, 'utf8'));
    decipher.setAuthTag(Buffer.from(tag, 'base64url'));
    return Buffer.concat([decipher.update(Buffer.from(ciphertext, 'base64url')), decipher.final()]).toString('utf8');
  } catch {
    return undefined;
  }
}
