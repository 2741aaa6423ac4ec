// The benchmark's MCP upstream: a real MCP server from @modelcontextprotocol/sdk in stateless Streamable
// HTTP mode (no session, no initialize needed), so the load generator can send the same tools/call body
// every time. Runs as its own process so that its CPU never mixes with a processor's.
//
//   ${JSON_PATH}  answers every POST with one JSON body   (enableJsonResponse: true)
//   ${SSE_PATH}   answers every POST as an SSE stream      (text/event-stream, closed after the result)
//   ${GOV_PATH}   the governed workloads' server: 100 tools (GOV_TOOLS), answered as JSON; tools/list
//                 returns them all, tools/call of any of them returns its arguments as text
//
// Usage: node bench/mcp-upstream.ts [--port N] [--host 127.0.0.1]
// Prints one line of JSON on stdout when listening: {"port": N}.

import { createServer } from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { CallToolRequestSchema, ListToolsRequestSchema } from '@modelcontextprotocol/sdk/types.js';
import type { CallToolResult, ListToolsResult, Tool } from '@modelcontextprotocol/sdk/types.js';
import { AjvJsonSchemaValidator } from '@modelcontextprotocol/sdk/validation/ajv';
import { z } from 'zod';

export const JSON_PREFIX = '/mcp-json/';
export const SSE_PREFIX = '/mcp-sse/';
export const JSON_PATH = `${JSON_PREFIX}mcp`;
export const SSE_PATH = `${SSE_PREFIX}mcp`;
export const TOOL_NAME = 'echo';
export const GOV_PREFIX = '/mcp-gov/';
export const GOV_PATH = `${GOV_PREFIX}mcp`;

/** The governed server's tools: every family × every subject, e.g. `get_account`, `delete_invoice`. */
export const GOV_FAMILIES = ['get', 'list', 'search', 'export', 'create', 'update', 'delete', 'admin', 'billing', 'deploy'] as const;
export const GOV_SUBJECTS = ['account', 'contact', 'invoice', 'order', 'ticket', 'report', 'user', 'project', 'file', 'metric'] as const;

/** 100 tool definitions with realistic input schemas, built once (a real server's list is static too). */
export const GOV_TOOLS: readonly Tool[] = GOV_FAMILIES.flatMap((family) =>
  GOV_SUBJECTS.map((subject): Tool => ({
    name: `${family}_${subject}`,
    description: `${family[0]?.toUpperCase() ?? ''}${family.slice(1)} ${subject} records in the benchmark's back office.`,
    inputSchema: {
      type: 'object',
      properties: {
        id: { type: 'string', description: `The ${subject} id, e.g. "${subject.slice(0, 4)}-0042".` },
        limit: { type: 'integer', minimum: 1, maximum: 10000, description: 'Most records to return.' },
        fields: { type: 'array', items: { type: 'string' }, description: 'Fields to include; all when absent.' },
        format: { type: 'string', enum: ['json', 'csv'], description: 'Output format.' },
      },
      required: ['id'],
    },
    annotations: { readOnlyHint: ['get', 'list', 'search', 'export'].includes(family) },
  })),
);
const GOV_TOOL_NAMES = new Set(GOV_TOOLS.map((t) => t.name));

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

/**
 * The governed server: the SDK's McpServer with its protocol handlers set directly on the underlying
 * Server (a static list and a generic call handler), so that a stateless request does not rebuild 100
 * tool registrations and their JSON Schemas every time.
 */
function buildGovServer(): McpServer {
  const mcp = new McpServer({ name: 'bench-gov-upstream', version: '1.0.0' }, { capabilities: { tools: {} }, jsonSchemaValidator });
  mcp.server.setRequestHandler(ListToolsRequestSchema, (): ListToolsResult => ({ tools: [...GOV_TOOLS] }));
  mcp.server.setRequestHandler(CallToolRequestSchema, (request): CallToolResult => {
    const { name, arguments: args } = request.params;
    if (!GOV_TOOL_NAMES.has(name)) return { content: [{ type: 'text', text: `unknown tool ${name}` }], isError: true };
    return { content: [{ type: 'text', text: JSON.stringify({ tool: name, arguments: args ?? {} }) }] };
  });
  return mcp;
}

function sendText(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, { 'content-type': 'text/plain' }).end(text);
}

async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const path = (req.url ?? '/').split('?')[0];
  const gov = path === GOV_PATH;
  const json = path === JSON_PATH || gov;
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
  const mcp = gov ? buildGovServer() : buildServer();
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
