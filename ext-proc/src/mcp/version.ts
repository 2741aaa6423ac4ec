// MCP protocol revisions the processor understands, and the few rules that differ between them.

export const PROTOCOL_VERSIONS = ['2024-11-05', '2025-03-26', '2025-06-18', '2025-11-25', '2026-07-28'] as const;
export type ProtocolVersion = (typeof PROTOCOL_VERSIONS)[number];

/** With no header and nothing else known, the Streamable HTTP spec says to assume 2025-03-26. */
export const DEFAULT_VERSION: ProtocolVersion = '2025-03-26';

/** JSON-RPC batches exist only in the 2025-03-26 revision. */
export function allowsBatches(v: string): boolean {
  return v === '2025-03-26';
}

/** From 2026-07-28 on, requests mirror method and name into Mcp-Method / Mcp-Name headers. */
export function mirrorsHeaders(v: string): boolean {
  return v >= '2026-07-28' && /^\d{4}-\d{2}-\d{2}$/.test(v);
}
