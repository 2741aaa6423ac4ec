// A test client that speaks ext_proc the way Envoy does: one bidi stream per HTTP request, messages in
// Envoy's order, optionally pipelined (the next body chunk sent before the previous answer arrives).
// Enums are decoded as numbers here (HTTP status codes read as 404, not NotFound).

import * as grpc from '@grpc/grpc-js';
import { loadExternalProcessor } from '../../ext-proc/src/envoy/protos.ts';
import type { HttpBody, HttpHeaders, PbStruct, ProcessingRequest, ProcessingResponse } from '../../ext-proc/src/envoy/types.ts';

const ExternalProcessorClient = grpc.makeGenericClientConstructor(loadExternalProcessor(Number), 'ExternalProcessor');

type ProcessCall = grpc.ClientDuplexStream<ProcessingRequest, ProcessingResponse>;

export class ExtProcStream {
  readonly #call: ProcessCall;
  readonly #answers: ProcessingResponse[] = [];
  readonly #waiters: { resolve: (r: ProcessingResponse) => void; reject: (e: Error) => void }[] = [];
  #ended: Error | undefined;
  readonly status: Promise<grpc.StatusObject>;

  constructor(call: ProcessCall) {
    this.#call = call;
    call.on('data', (r: ProcessingResponse) => {
      const w = this.#waiters.shift();
      if (w === undefined) this.#answers.push(r);
      else w.resolve(r);
    });
    this.status = new Promise((resolve) => {
      call.on('status', (s: grpc.StatusObject) => {
        this.#ended = new Error(`stream ended: ${s.code} ${s.details}`);
        for (const w of this.#waiters.splice(0)) w.reject(this.#ended);
        resolve(s);
      });
    });
    call.on('error', () => undefined); // the status carries it
  }

  send(req: ProcessingRequest): void {
    this.#call.write(req);
  }

  next(): Promise<ProcessingResponse> {
    const r = this.#answers.shift();
    if (r !== undefined) return Promise.resolve(r);
    if (this.#ended !== undefined) return Promise.reject(this.#ended);
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  /** Sends a message and waits for its answer. */
  async exchange(req: ProcessingRequest): Promise<ProcessingResponse> {
    this.send(req);
    return this.next();
  }

  halfClose(): void {
    this.#call.end();
  }

  cancel(): void {
    this.#call.cancel();
  }
}

export interface ExtProcClient {
  open(metadata?: Record<string, string>): ExtProcStream;
  close(): void;
}

export function connect(port: number): ExtProcClient {
  const client = new ExternalProcessorClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  return {
    close: () => client.close(),
    open(metadata = {}) {
      const md = new grpc.Metadata();
      for (const [k, v] of Object.entries(metadata)) md.set(k, v);
      // The generic client exposes the service's methods by name; Process is the one bidi method.
      const process = (client as unknown as { Process(md: grpc.Metadata): ProcessCall }).Process.bind(client);
      return new ExtProcStream(process(md));
    },
  };
}

/** Builders for the messages Envoy sends. */
export const envoy = {
  requestHeaders(headers: Record<string, string>, opts: { endOfStream?: boolean; routeServer?: string } = {}): ProcessingRequest {
    const msg: ProcessingRequest = { request: 'request_headers', request_headers: headersMsg(headers, opts.endOfStream ?? false) };
    if (opts.routeServer !== undefined) {
      const attrs: PbStruct = { fields: { "xds.route_metadata.filter_metadata['mcp_ext_proc']['server']": { stringValue: opts.routeServer } } };
      msg.attributes = { 'envoy.filters.http.ext_proc': attrs };
    }
    return msg;
  },
  requestBody(body: string | Buffer, endOfStream = true): ProcessingRequest {
    return { request: 'request_body', request_body: bodyMsg(body, endOfStream) };
  },
  responseHeaders(headers: Record<string, string>, endOfStream = false): ProcessingRequest {
    return { request: 'response_headers', response_headers: headersMsg(headers, endOfStream) };
  },
  responseBody(body: string | Buffer, endOfStream: boolean): ProcessingRequest {
    return { request: 'response_body', response_body: bodyMsg(body, endOfStream) };
  },
};

function headersMsg(headers: Record<string, string>, endOfStream: boolean): HttpHeaders {
  return {
    headers: { headers: Object.entries(headers).map(([key, v]) => ({ key, raw_value: Buffer.from(v, 'latin1') })) },
    end_of_stream: endOfStream,
  };
}

function bodyMsg(body: string | Buffer, endOfStream: boolean): HttpBody {
  return { body: typeof body === 'string' ? Buffer.from(body, 'utf8') : body, end_of_stream: endOfStream };
}

/** What Envoy forwards for one body chunk, given the processor's answer to it. */
export function forwardedBody(original: Buffer, answer: ProcessingResponse): Buffer {
  const mutation = (answer.response_body ?? answer.request_body)?.response?.body_mutation;
  if (mutation === undefined) return original;
  if ('clear_body' in mutation) return Buffer.alloc(0);
  return Buffer.from(mutation.body);
}
