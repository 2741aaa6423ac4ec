// The processor alone: two running processors fed the same ext_proc exchange by an Envoy-like gRPC
// client (test/support/ext-proc-client.ts), interleaved — each batch sends N exchanges to each at the
// same time — so both see the same machine. CPU per exchange of each process comes from /proc over the
// same window. Through Envoy a difference of a few percent drowns in the noise of a shared machine (the
// Envoy and upstream processes, vegeta, scheduling); this measures the processors' own work.

import type { ProcessingRequest } from '../ext-proc/src/envoy/types.ts';
import { connect, envoy, type ExtProcClient } from '../test/support/ext-proc-client.ts';
import { cpuMicros } from './procs.ts';

export interface PairSide {
  readonly grpcPort: number;
  readonly pid: number;
}

export interface ProcessorPairResult {
  /** CPU µs per exchange, per round. */
  readonly a: readonly number[];
  readonly b: readonly number[];
  /** b ÷ a per round. */
  readonly ratios: readonly number[];
  readonly exchangesPerRound: number;
}

/** The four messages Envoy sends for one buffered JSON exchange. */
export interface ExchangeMessages {
  readonly requestHeaders: ProcessingRequest;
  readonly requestBody: ProcessingRequest;
  readonly responseHeaders: ProcessingRequest;
  readonly responseBody: ProcessingRequest;
}

export function jsonExchange(path: string, headers: Record<string, string>, body: string, responseBody: string): ExchangeMessages {
  return {
    requestHeaders: envoy.requestHeaders({ ':method': 'POST', ':path': path, ':authority': 'bench', 'content-length': String(Buffer.byteLength(body)), ...headers }),
    requestBody: envoy.requestBody(body),
    responseHeaders: envoy.responseHeaders({ ':status': '200', 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(responseBody)) }),
    responseBody: envoy.responseBody(responseBody, true),
  };
}

async function one(client: ExtProcClient, m: ExchangeMessages): Promise<void> {
  const stream = client.open();
  for (const req of [m.requestHeaders, m.requestBody, m.responseHeaders, m.responseBody]) {
    const answer = await stream.exchange(req);
    if (answer.immediate_response !== undefined) {
      stream.cancel();
      throw new Error(`the processor refused the exchange: ${answer.immediate_response.status.code} ${answer.immediate_response.body?.toString() ?? ''}`);
    }
  }
  stream.halfClose();
  await stream.status;
}

export async function measureProcessorPair(a: PairSide, b: PairSide, messages: ExchangeMessages, opts: { rounds: number; exchanges: number; concurrency: number }): Promise<ProcessorPairResult> {
  const ca = connect(a.grpcPort);
  const cb = connect(b.grpcPort);
  try {
    const round = async (): Promise<[number, number]> => {
      const before = [cpuMicros(a.pid), cpuMicros(b.pid)] as const;
      for (let i = 0; i < opts.exchanges; i += opts.concurrency) {
        await Promise.all(Array.from({ length: opts.concurrency }, (_, k) => one(k % 2 === 0 ? ca : cb, messages).then(() => one(k % 2 === 0 ? cb : ca, messages))));
      }
      // Each client sent `exchanges` exchanges to each processor (half the slots start with a, half with b).
      return [(cpuMicros(a.pid) - before[0]) / opts.exchanges, (cpuMicros(b.pid) - before[1]) / opts.exchanges];
    };
    await round(); // warm-up, not recorded
    const ra: number[] = [];
    const rb: number[] = [];
    for (let i = 0; i < opts.rounds; i++) {
      const [x, y] = await round();
      ra.push(x);
      rb.push(y);
    }
    return { a: ra, b: rb, ratios: ra.map((x, i) => (rb[i] ?? Number.NaN) / x), exchangesPerRound: opts.exchanges };
  } finally {
    ca.close();
    cb.close();
  }
}
