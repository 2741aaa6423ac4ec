import { describe, expect, it } from 'vitest';
import { GatewayError } from '../../ext-proc/src/errors.ts';
import { errorBody, parseJsonRpc, serializeWithId } from '../../ext-proc/src/mcp/jsonrpc.ts';

function code(text: string): string {
  try {
    parseJsonRpc(text);
  } catch (err) {
    return (err as GatewayError).code;
  }
  return 'accepted';
}

describe('JSON-RPC parsing', () => {
  it('reads kind, id, method and the name a request acts on', () => {
    const [m] = parseJsonRpc('{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"echo","arguments":{}}}').messages;
    expect(m).toMatchObject({ kind: 'request', id: '"a"', method: 'tools/call', name: 'echo' });
    const [r] = parseJsonRpc('{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///x"}}').messages;
    expect(r?.name).toBe('file:///x');
  });

  it('tells the id 1 from the id "1"', () => {
    const a = parseJsonRpc('{"jsonrpc":"2.0","id":1,"method":"ping"}').messages[0]?.id;
    const b = parseJsonRpc('{"jsonrpc":"2.0","id":"1","method":"ping"}').messages[0]?.id;
    expect([a, b]).toEqual(['1', '"1"']);
  });

  it('keeps every digit of an integer id beyond 2^53, in a batch too', () => {
    const text = '[{"jsonrpc":"2.0","id":9007199254740993,"method":"ping"},{"jsonrpc":"2.0","id":-123456789012345678901234,"result":{}}]';
    const ids = parseJsonRpc(text).messages.map((m) => m.id);
    expect(ids).toEqual(['9007199254740993', '-123456789012345678901234']);
    expect(errorBody(ids[0], -32600, 'x')).toBe('{"jsonrpc":"2.0","id":9007199254740993,"error":{"code":-32600,"message":"x"}}');
  });

  it('splices the original id text back into a rewritten message', () => {
    const parsed = parseJsonRpc('{"jsonrpc":"2.0","id":9007199254740993,"result":{"tools":[1,2]}}');
    const element = parsed.value as Record<string, unknown>;
    const text = serializeWithId({ ...element, result: { tools: [1] } }, parsed.messages[0]?.id);
    expect(text).toBe('{"id":9007199254740993,"jsonrpc":"2.0","result":{"tools":[1]}}');
    expect(serializeWithId({ jsonrpc: '2.0', id: 5, result: {} }, '"five"')).toBe('{"id":"five","jsonrpc":"2.0","result":{}}');
  });

  it('tells notifications, results and errors apart', () => {
    const kinds = parseJsonRpc(
      '[{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","id":2,"result":{}},{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"bad"}}]',
    ).messages.map((m) => [m.kind, m.id]);
    expect(kinds).toEqual([['notification', undefined], ['result', '2'], ['error', undefined]]);
  });

  it.each([
    ['{', 'ERR_JSONRPC_PARSE'],
    ['', 'ERR_JSONRPC_PARSE'],
    ['"text"', 'ERR_JSONRPC_INVALID'],
    ['{"jsonrpc":"1.0","id":1,"method":"ping"}', 'ERR_JSONRPC_INVALID'],
    ['{"jsonrpc":"2.0","id":1.5,"method":"ping"}', 'ERR_JSONRPC_INVALID'],
    ['{"jsonrpc":"2.0","id":{},"method":"ping"}', 'ERR_JSONRPC_INVALID'],
    ['{"jsonrpc":"2.0","id":1,"method":7}', 'ERR_JSONRPC_INVALID'],
    ['{"jsonrpc":"2.0","id":1,"method":"ping","params":"x"}', 'ERR_JSONRPC_INVALID'],
    ['{"jsonrpc":"2.0","id":1}', 'ERR_JSONRPC_INVALID'],
    ['{"jsonrpc":"2.0","id":1,"error":{"message":"no code"}}', 'ERR_JSONRPC_INVALID'],
    ['[{"jsonrpc":"2.0","id":1,"method":"ping"},5]', 'ERR_JSONRPC_INVALID'],
    ['[]', 'ERR_JSONRPC_INVALID'],
  ])('refuses %s', (text, expected) => {
    expect(code(text)).toBe(expected);
  });

  it('keeps the id of an invalid request for the error answer', () => {
    try {
      parseJsonRpc('{"jsonrpc":"2.0","id":77,"method":"x","params":5}');
      expect.unreachable();
    } catch (err) {
      expect((err as GatewayError).rpcId).toBe('77');
    }
  });

  it('survives deeply nested and large arguments', () => {
    const deep = `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"n","arguments":${'['.repeat(5000)}${']'.repeat(5000)}}}`;
    expect(parseJsonRpc(deep).messages[0]?.name).toBe('n');
  });
});
