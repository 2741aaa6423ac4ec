// The benchmark's MCP upstream: a real MCP server from @modelcontextprotocol/sdk in stateless Streamable
// HTTP mode (no session, no initialize needed), so the load generator can send the same tools/call body
// every time. Runs as its own process so that its CPU never mixes with a processor's.
//
//   ${JSON_PATH}  answers every POST with one JSON body   (enableJsonResponse: true)
//   ${SSE_PATH}   answers every POST as an SSE stream      (text/event-stream, closed after the result)
//
// Usage: node bench/mcp-upstream.ts [--port N] [--host 127.0.0.1]
// Prints one line of JSON on stdout when listening: {"port": N}.

import { createServer } from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { AjvJsonSchemaValidator } from '@modelcontextprotocol/sdk/validation/ajv';
import { z } from 'zod';

export const JSON_PREFIX = '/mcp-json/';
export const SSE_PREFIX = '/mcp-sse/';
export const JSON_PATH = `${JSON_PREFIX}mcp`;
export const SSE_PATH = `${SSE_PREFIX}mcp`;
export const TOOL_NAME = 'echo';

// Each Server otherwise builds its own Ajv instance, which dominates the cost of a stateless request; a
// long-lived server process would share one.
const jsonSchemaValidator = new AjvJsonSchemaValidator();

function buildServer(): McpServer {
  const mcp = new McpServer({ name: 'bench-upstream', version: '1.0.0' }, { capabilities: { tools: {} }, jsonSchemaValidator });
  mcp.registerTool(
    TOOL_NAME,
    { description: 'Returns its text argument.', inputSchema: { text: z.string() } },
    ({ text }) => ({ content: [{ type: 'text', text }] }),
  );
  return mcp;
}

function sendText(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, { 'content-type': 'text/plain' }).end(text);
}

async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const path = (req.url ?? '/').split('?')[0];
  const json = path === JSON_PATH;
  if (!json && path !== SSE_PATH) {
    sendText(res, 404, `not found: ${path ?? ''}`);
    return;
  }
  if (req.method !== 'POST') {
    // Stateless: there is no standalone GET stream and no session to DELETE.
    res.writeHead(405, { allow: 'POST', 'content-type': 'application/json' }).end(
      JSON.stringify({ jsonrpc: '2.0', error: { code: -32000, message: 'Method not allowed.' }, id: null }),
    );
    return;
  }
  // Stateless mode: a new server and transport per request (the SDK's recommended pattern; one shared
  // transport would mix up concurrent requests that carry the same JSON-RPC id, as ours all do).
  const mcp = buildServer();
  const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: json });
  res.once('close', () => {
    void mcp.close(); // closes the transport too
  });
  await mcp.connect(transport);
  await transport.handleRequest(req, res);
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { port: { type: 'string', default: '0' }, host: { type: 'string', default: '127.0.0.1' } } });
  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      process.stderr.write(`bench upstream: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      if (!res.headersSent) sendText(res, 500, 'internal error');
      else res.destroy();
    });
  });
  // Envoy keeps upstream connections open and reuses them; do not let Node close them under it.
  server.keepAliveTimeout = 120_000;
  server.headersTimeout = 121_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(values.port), values.host, resolve);
  });
  const { port } = server.address() as AddressInfo;
  process.stdout.write(`${JSON.stringify({ port })}\n`);
  const stop = (): void => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

if (import.meta.main) await main();
