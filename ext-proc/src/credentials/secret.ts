// Secrets named by the governance document: an environment variable, or a file (a mounted Kubernetes
// Secret). The document holds only the reference, never the value. A file is read again at most every
// FILE_RECHECK_MS, so a rotated secret is picked up without a restart.

import { readFileSync } from 'node:fs';
import { GatewayError } from '../errors.ts';

export type SecretRef = { readonly env: string } | { readonly file: string };

const FILE_RECHECK_MS = 10_000;

export class Secret {
  readonly #ref: SecretRef;
  readonly #what: string;
  #value: string | undefined;
  #readAt = Number.NEGATIVE_INFINITY;

  constructor(ref: SecretRef, what: string) {
    this.#ref = ref;
    this.#what = what;
  }

  /** Where the value comes from, for messages (never the value). */
  describe(): string {
    return 'env' in this.#ref ? `environment variable ${this.#ref.env}` : `file ${this.#ref.file}`;
  }

  /** The value, without a trailing newline; ERR_CREDENTIAL_UNAVAILABLE when it is missing or empty. */
  value(): string {
    if ('env' in this.#ref) return this.#check(process.env[this.#ref.env]);
    const now = Date.now();
    if (this.#value === undefined || now - this.#readAt >= FILE_RECHECK_MS) {
      try {
        this.#value = readFileSync(this.#ref.file, 'utf8').replace(/\r?\n$/, '');
        this.#readAt = now;
      } catch (err) {
        // A secret that could once be read stays usable while its file is briefly away (an atomic swap).
        if (this.#value === undefined) {
          throw new GatewayError('ERR_CREDENTIAL_UNAVAILABLE', `the ${this.#what} cannot be read from ${this.describe()}`, { cause: err });
        }
      }
    }
    return this.#check(this.#value);
  }

  #check(value: string | undefined): string {
    if (value === undefined || value === '') throw new GatewayError('ERR_CREDENTIAL_UNAVAILABLE', `the ${this.#what} is not set (${this.describe()})`);
    return value;
  }
}
