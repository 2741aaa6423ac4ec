// JSON-RPC 2.0 as MCP uses it: the message model, a parser that keeps ids exact, and error bodies.
// Pure: no I/O.

import { GatewayError } from '../errors.ts';

export type RpcKind = 'request' | 'notification' | 'result' | 'error';

export interface RpcMessage {
  readonly kind: RpcKind;
  /** The id as JSON text (`7`, `"7"`, `12345678901234567890`): 1 and "1" differ, and big integers stay exact. */
  readonly id: string | undefined;
  readonly method: string | undefined;
  readonly params: Readonly<Record<string, unknown>> | undefined;
  readonly result: unknown;
  readonly error: { readonly code: number; readonly message: string } | undefined;
  /** tools/call and prompts/get: params.name; resources/read and subscriptions: params.uri. */
  readonly name: string | undefined;
}

export interface ParsedBody {
  readonly batch: boolean;
  readonly messages: readonly RpcMessage[];
  /** The parsed document, for handlers that rewrite it. */
  readonly value: unknown;
}

const NAMED_BY_NAME = new Set(['tools/call', 'prompts/get']);
const NAMED_BY_URI = new Set(['resources/read', 'resources/subscribe', 'resources/unsubscribe']);

/** The params field that names what a request acts on, if the method has one. */
export function nameOf(method: string, params: Readonly<Record<string, unknown>> | undefined): string | undefined {
  if (params === undefined) return undefined;
  const field = NAMED_BY_NAME.has(method) ? params['name'] : NAMED_BY_URI.has(method) ? params['uri'] : undefined;
  return typeof field === 'string' ? field : undefined;
}

/** JSON.parse's reviver receives the source text of primitives (Node ≥ 21); lib.d.ts does not type it yet. */
type SourceReviver = (this: unknown, key: string, value: unknown, context?: { source?: string }) => unknown;

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function idText(raw: unknown, source: string | undefined): string | undefined | null {
  if (typeof raw === 'string') return JSON.stringify(raw);
  if (typeof raw === 'number' && Number.isInteger(raw)) return source ?? String(raw);
  if (raw === undefined) return undefined;
  return null; // present but not an id MCP allows
}

function toMessage(v: unknown, idSource: string | undefined): RpcMessage | string {
  if (!isRecord(v)) return 'a JSON-RPC message must be an object';
  if (v['jsonrpc'] !== '2.0') return 'jsonrpc must be "2.0"';
  const method = v['method'];
  const rawId = v['id'];
  const paramsValue = v['params'];
  if (paramsValue !== undefined && typeof paramsValue !== 'object') return 'params must be an object';
  const params = isRecord(paramsValue) ? paramsValue : undefined;
  if (typeof method === 'string') {
    const id = idText(rawId, idSource);
    if (id === null) return 'id must be a string or an integer';
    return {
      kind: id === undefined ? 'notification' : 'request',
      id,
      method,
      params,
      result: undefined,
      error: undefined,
      name: nameOf(method, params),
    };
  }
  if (method !== undefined) return 'method must be a string';
  // A response. Errors may carry a null id when the request could not be read.
  const id = rawId === null ? undefined : idText(rawId, idSource);
  if (id === null) return 'id must be a string or an integer';
  const error = v['error'];
  if (isRecord(error)) {
    const code = error['code'];
    const message = error['message'];
    if (typeof code !== 'number' || typeof message !== 'string') return 'error needs a numeric code and a message';
    return { kind: 'error', id, method: undefined, params: undefined, result: undefined, error: { code, message }, name: undefined };
  }
  if (!('result' in v) || id === undefined) return 'a message needs a method, or an id with a result or an error';
  return { kind: 'result', id, method: undefined, params: undefined, result: v['result'], error: undefined, name: undefined };
}

/**
 * Parses a JSON-RPC document (one message or a batch). Throws ERR_JSONRPC_PARSE for text that is not
 * JSON and ERR_JSONRPC_INVALID for JSON that is not JSON-RPC.
 */
export function parseJsonRpc(text: string): ParsedBody {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new GatewayError('ERR_JSONRPC_PARSE', `body is not valid JSON: ${(err as Error).message}`);
  }
  const elements = Array.isArray(value) ? (value as unknown[]) : [value];
  if (elements.length === 0) throw new GatewayError('ERR_JSONRPC_INVALID', 'an empty JSON-RPC batch is not allowed');

  // Integers beyond 2^53 lose precision in JSON.parse; only then parse again, reading the ids' source text.
  let idSources: (string | undefined)[] | undefined;
  if (elements.some((e) => isRecord(e) && typeof e['id'] === 'number' && !Number.isSafeInteger(e['id']))) {
    idSources = idSourcesOf(text, Array.isArray(value));
  }

  const messages: RpcMessage[] = [];
  for (const [i, element] of elements.entries()) {
    const m = toMessage(element, idSources?.[i]);
    if (typeof m === 'string') {
      const where = Array.isArray(value) ? `batch element ${i}: ` : '';
      const id = isRecord(element) ? idText(element['id'], idSources?.[i]) : undefined;
      throw new GatewayError('ERR_JSONRPC_INVALID', `${where}${m}`, { rpcId: id ?? undefined });
    }
    messages.push(m);
  }
  return { batch: Array.isArray(value), messages, value };
}

function idSourcesOf(text: string, batch: boolean): (string | undefined)[] {
  const found: (string | undefined)[] = [];
  const reviver: SourceReviver = function (key, value, context) {
    // `this` is the object holding the key; only top-level messages' ids matter.
    if (key === 'id' && context?.source !== undefined && typeof value === 'number') {
      (this as Record<string, unknown>)['__idSource'] = context.source;
    }
    return value;
  };
  const v: unknown = JSON.parse(text, reviver as Parameters<typeof JSON.parse>[1]);
  const elements = batch ? (v as unknown[]) : [v];
  for (const e of elements) {
    const s = isRecord(e) ? e['__idSource'] : undefined;
    found.push(typeof s === 'string' ? s : undefined);
  }
  return found;
}

/** A JSON-RPC error response as bytes; `id` is JSON text (or undefined → null). */
export function errorBody(id: string | undefined, code: number, message: string, data?: Record<string, unknown>): string {
  const error = data === undefined ? { code, message } : { code, message, data };
  // The id is spliced in as text so that big integers keep every digit.
  return `{"jsonrpc":"2.0","id":${id ?? 'null'},"error":${JSON.stringify(error)}}`;
}

/**
 * A rewritten message as JSON text, its id spliced in from the original's id text so that big integers
 * keep every digit. `message` is the parsed message with its fields changed as wanted.
 */
export function serializeWithId(message: Readonly<Record<string, unknown>>, id: string | undefined): string {
  const { id: _parsedId, ...rest } = message;
  const body = JSON.stringify(rest);
  const idPart = `"id":${id ?? 'null'}`;
  return body === '{}' ? `{${idPart}}` : `{${idPart},${body.slice(1)}`;
}
