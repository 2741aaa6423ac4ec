// Several gateway replicas for end-to-end tests: each a processor behind its own Envoy, all with the same
// governance document and settings (typically one shared Valkey), as a scaled-out deployment runs them.

import type { Settings } from '../../ext-proc/src/config/settings.ts';
import { startEnvoy, type EnvoyInstance, type EnvoyUpstream } from './envoy.ts';
import { startTestProcessor, type TestProcessor } from './processor.ts';

export interface Replica {
  readonly proc: TestProcessor;
  readonly envoy: EnvoyInstance;
}

export interface Replicas {
  /** The i-th replica (throws for one that was not started). */
  at(i: number): Replica;
  stop(): Promise<void>;
}

export async function startReplicas(count: number, governanceYaml: string, settings: Partial<Settings>, upstreams: EnvoyUpstream[]): Promise<Replicas> {
  const started: Replica[] = [];
  for (let i = 0; i < count; i++) {
    const proc = await startTestProcessor(governanceYaml, { settings });
    started.push({ proc, envoy: await startEnvoy({ processor: { port: proc.grpcPort }, upstreams }) });
  }
  return {
    at(i) {
      const r = started[i];
      if (r === undefined) throw new Error(`no replica ${i}`);
      return r;
    },
    async stop() {
      for (const r of started) {
        await r.envoy.stop();
        await r.proc.stop();
      }
    },
  };
}
