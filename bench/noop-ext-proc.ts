// The benchmark's baseline: an ext_proc server in the same language and on the same gRPC stack as
// mcp-ext-proc (grpc-js, the same Envoy protos via loadExternalProcessor()) that does nothing.
//
// To be a fair baseline it must see exactly the message flow the real processor sees, so it answers every
// message with the empty response of the same phase and, on response headers, sends the same
// mode_override the real processor would (both body modes always stated):
//   request BUFFERED; response BUFFERED for application/json, STREAMED for text/event-stream (unless the
//   body is compressed), NONE otherwise (and when the response has no body).
// That way Envoy sends it the same buffered request body, the same buffered JSON body and the same SSE
// chunks; only the work done on them differs.
//
// Usage: node bench/noop-ext-proc.ts [--port N] [--host 127.0.0.1]
// Prints one line of JSON on stdout when listening: {"port": N}.

import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { loadExternalProcessor } from '../ext-proc/src/envoy/protos.ts';
import { allowEnvoyStreamResets } from '../ext-proc/src/envoy/server.ts';
import type { BodySendMode, HttpHeaders, ProcessingRequest, ProcessingResponse } from '../ext-proc/src/envoy/types.ts';

/** The response body mode the real processor picks for these response headers. */
export function responseBodyMode(msg: HttpHeaders | undefined): BodySendMode {
  if (msg?.end_of_stream === true) return 'NONE';
  let type: string | undefined;
  let encoding: string | undefined;
  for (const h of msg?.headers?.headers ?? []) {
    if (h.key !== 'content-type' && h.key !== 'content-encoding') continue;
    const value = h.raw_value !== undefined && h.raw_value.length > 0 ? h.raw_value.toString('latin1') : (h.value ?? '');
    if (h.key === 'content-type') type = value;
    else encoding = value.trim().toLowerCase();
  }
  const semi = type?.indexOf(';') ?? -1;
  const media = (semi < 0 ? type : type?.slice(0, semi))?.trim().toLowerCase();
  if (media === 'application/json') return 'BUFFERED';
  if (media === 'text/event-stream' && (encoding === undefined || encoding === '' || encoding === 'identity')) return 'STREAMED';
  return 'NONE';
}

export function answer(req: ProcessingRequest): ProcessingResponse {
  switch (req.request) {
    case 'request_headers':
      return { request_headers: {} };
    case 'request_body':
      return { request_body: {} };
    case 'response_headers':
      return {
        response_headers: {},
        mode_override: { request_body_mode: 'BUFFERED', response_body_mode: responseBodyMode(req.response_headers) },
      };
    case 'response_body':
      return { response_body: {} };
    case 'request_trailers':
      return { request_trailers: {} };
    case 'response_trailers':
      return { response_trailers: {} };
    case undefined:
      return {};
  }
}

type ProcessCall = grpc.ServerDuplexStream<ProcessingRequest, ProcessingResponse>;

function process_(call: ProcessCall): void {
  // Answers are written synchronously as each message arrives, so they stay in order.
  call.on('data', (req: ProcessingRequest) => {
    call.write(answer(req));
  });
  call.on('end', () => {
    call.end();
  });
  call.on('error', () => undefined);
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { port: { type: 'string', default: '0' }, host: { type: 'string', default: '127.0.0.1' } } });
  // The same server options as mcp-ext-proc (ext-proc/src/envoy/server.ts), at its default message size.
  const server = new grpc.Server({
    'grpc.max_receive_message_length': 64 * 1024 * 1024,
    'grpc.max_send_message_length': 64 * 1024 * 1024,
    'grpc.keepalive_time_ms': 60_000,
    'grpc.keepalive_timeout_ms': 20_000,
  });
  allowEnvoyStreamResets(server);
  server.addService(loadExternalProcessor(), { Process: process_ });
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(`${values.host}:${values.port}`, grpc.ServerCredentials.createInsecure(), (err, p) => {
      if (err !== null) reject(err);
      else resolve(p);
    });
  });
  process.stdout.write(`${JSON.stringify({ port })}\n`);
  const stop = (): void => {
    server.forceShutdown();
    process.exit(0);
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

if (import.meta.main) await main();
