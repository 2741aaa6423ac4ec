// The gRPC side: Envoy's ExternalProcessor/Process stream loop, the health service, and shutdown.
// Messages of one call are handled strictly in order: in STREAMED mode Envoy sends the next chunk
// without waiting for our answer, and an await inside a data handler would otherwise reorder replies.

import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { toGatewayError } from '../errors.ts';
import { parseJsonRpc } from '../mcp/jsonrpc.ts';
import { errorResponse } from './error-response.ts';
import { Exchange, type ProcessorContext } from './exchange.ts';
import { EXT_PROC_SERVICE, loadExternalProcessor } from './protos.ts';
import { onRequestBody } from './request-body.ts';
import { onRequestHeaders, ROUTE_SERVER_HEADER } from './request-headers.ts';
import { onResponseBody } from './response-body.ts';
import { onResponseHeaders } from './response-headers.ts';
import type { ProcessingRequest, ProcessingResponse } from './types.ts';

type ProcessCall = grpc.ServerDuplexStream<ProcessingRequest, ProcessingResponse>;

/** Test seam: lets a test run a handler that fails, to see how failures reach the client. */
export type Dispatch = (ex: Exchange, req: ProcessingRequest) => ProcessingResponse | Promise<ProcessingResponse>;

export function dispatch(ex: Exchange, req: ProcessingRequest): ProcessingResponse | Promise<ProcessingResponse> {
  switch (req.request) {
    case 'request_headers':
      return onRequestHeaders(ex, req.request_headers ?? {}, req.attributes);
    case 'request_body':
      return onRequestBody(ex, req.request_body ?? {});
    case 'response_headers':
      return onResponseHeaders(ex, req.response_headers ?? {});
    case 'response_body':
      return onResponseBody(ex, req.response_body ?? {});
    // Trailers are not requested (mode SKIP); if a configuration sends them anyway, pass them on.
    case 'request_trailers':
      return { request_trailers: {} };
    case 'response_trailers':
      return { response_trailers: {} };
    case undefined:
      throw new Error('ProcessingRequest without a message');
  }
}

/** Streams whose exchange has not closed yet; shutdown waits for them so that their records are written. */
export class OpenStreams {
  #count = 0;
  #waiters: (() => void)[] = [];

  opened(): void {
    this.#count++;
  }

  closed(): void {
    this.#count--;
    if (this.#count === 0) for (const w of this.#waiters.splice(0)) w();
  }

  /** Resolves when none are open, or after timeoutMs. */
  drained(timeoutMs: number): Promise<void> {
    if (this.#count === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      this.#waiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}

export function processHandler(ctx: ProcessorContext, handle: Dispatch = dispatch, open = new OpenStreams()): grpc.handleBidiStreamingCall<ProcessingRequest, ProcessingResponse> {
  return (call: ProcessCall) => {
    open.opened();
    const routeServer = call.metadata.get(ROUTE_SERVER_HEADER)[0];
    const ex = new Exchange(ctx, typeof routeServer === 'string' ? routeServer : undefined);
    ex.askForTime = (ms) => {
      if (!call.cancelled && call.writable) call.write({ override_message_timeout: { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 } });
    };
    ctx.observer.streamOpened();
    let chain: Promise<void> = Promise.resolve();
    let answeredWithError = false;
    let closed = false;

    const handleOne = async (req: ProcessingRequest): Promise<void> => {
      // After an ImmediateResponse Envoy has finished with this exchange; late messages need no answer.
      if (answeredWithError || closed) return;
      let res: ProcessingResponse;
      const started = process.hrtime.bigint();
      try {
        res = await handle(ex, req);
      } catch (err) {
        const gerr = toGatewayError(err);
        ex.auditRefusal(gerr);
        if (gerr.spec.fault === 'server') ctx.log.error({ err, server: ex.serverName, phase: req.request }, 'processor failure');
        else ctx.log.debug({ code: gerr.code, server: ex.serverName, phase: req.request }, gerr.message);
        ctx.observer.rejected(gerr.code, ex.server?.name);
        res = errorResponse(gerr, ex.meta, gerr.rpcId ?? requestIdOf(req));
        answeredWithError = true;
      }
      ctx.observer.phase(req.request ?? 'other', Number(process.hrtime.bigint() - started) / 1e9);
      // The call may have been cancelled while the handler awaited.
      if (!call.cancelled && call.writable) call.write(res);
    };

    const finish = (reason: 'ended' | 'cancelled'): void => {
      if (closed) return;
      closed = true;
      ex.close(reason)
        .catch((err: unknown) => ctx.log.warn({ err }, 'could not hand pending requests to shared state'))
        .finally(() => open.closed());
    };

    call.on('data', (req: ProcessingRequest) => {
      chain = chain.then(() => handleOne(req)).catch((err: unknown) => {
        // Even building the error answer failed: end with a gRPC error, never cleanly (that fails open).
        ctx.log.error({ err }, 'could not answer Envoy');
        const status: Partial<grpc.StatusObject> = { code: grpc.status.INTERNAL, details: 'mcp-ext-proc could not process the message' };
        call.emit('error', status);
        closed = true;
      });
    });
    call.on('end', () => {
      // Envoy half-closed: answer what is queued, then close our side.
      void chain.then(() => {
        finish('ended');
        call.end();
      });
    });
    // The queue still runs to the end, so every message read is answered or recorded before close.
    call.on('cancelled', () => void chain.then(() => finish('cancelled')));
    call.on('error', () => void chain.then(() => finish('cancelled')));
  };
}

/** Best effort, for an error answer: the id of a single request in a request body that failed later on. */
function requestIdOf(req: ProcessingRequest): string | undefined {
  if (req.request !== 'request_body' || req.request_body?.body === undefined) return undefined;
  try {
    const { messages, batch } = parseJsonRpc(req.request_body.body.toString('utf8'));
    return batch ? undefined : messages[0]?.id;
  } catch {
    return undefined;
  }
}

/**
 * Envoy resets (RST_STREAM) its ext_proc stream at the end of nearly every HTTP request. Node's HTTP/2
 * server counts those as a "rapid reset" attack (CVE-2023-44487 mitigation: a burst of 1000, then 33 per
 * second) and answers with GOAWAY, which fails every request in flight on that connection with a 500.
 * The peer here is Envoy, not the internet, so the limits are lifted. grpc-js does not expose these
 * options; it passes its `commonServerOptions` to http2.createServer at bind time, so they go there.
 */
export function allowEnvoyStreamResets(server: grpc.Server): void {
  const internals = server as unknown as { commonServerOptions?: Record<string, unknown> };
  if (typeof internals.commonServerOptions !== 'object') {
    throw new Error('@grpc/grpc-js no longer has Server.commonServerOptions; the HTTP/2 stream reset limits cannot be raised');
  }
  internals.commonServerOptions['streamResetBurst'] = 1_000_000;
  internals.commonServerOptions['streamResetRate'] = 1_000_000;
}

export interface ProcessorServer {
  readonly port: number;
  readonly health: HealthImplementation;
  /** Stops accepting streams, lets in-flight ones finish for up to graceMs, then cancels the rest. */
  shutdown(graceMs: number): Promise<void>;
  /** Resolves once every stream's exchange has closed (its audit records written). */
  readonly streams: OpenStreams;
}

export async function startGrpcServer(
  ctx: ProcessorContext,
  options: { host: string; port: number; maxMessageBytes: number; handle?: Dispatch },
): Promise<ProcessorServer> {
  const server = new grpc.Server({
    'grpc.max_receive_message_length': options.maxMessageBytes,
    'grpc.max_send_message_length': options.maxMessageBytes,
    'grpc.keepalive_time_ms': 60_000,
    'grpc.keepalive_timeout_ms': 20_000,
  });
  allowEnvoyStreamResets(server);
  const streams = new OpenStreams();
  server.addService(loadExternalProcessor(), { Process: processHandler(ctx, options.handle, streams) });
  const health = new HealthImplementation({ '': 'SERVING', [EXT_PROC_SERVICE]: 'SERVING' });
  health.addToServer(server);

  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(`${options.host}:${options.port}`, grpc.ServerCredentials.createInsecure(), (err, p) => {
      if (err !== null) reject(err);
      else resolve(p);
    });
  });

  return {
    port,
    health,
    streams,
    shutdown(graceMs) {
      health.setStatus('', 'NOT_SERVING');
      health.setStatus(EXT_PROC_SERVICE, 'NOT_SERVING');
      return new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, graceMs);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    },
  };
}
