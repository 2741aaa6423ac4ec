// OAuth 2.0 Protected Resource Metadata (RFC 9728) for each governed MCP server: where an MCP client
// learns which authorization servers issue tokens for it. The gateway is the resource server here.

import type { ServerSpec } from '../config/document.ts';

export const PRM_PATH = '/.well-known/oauth-protected-resource';

/** RFC 9728 §3.1: the well-known segment goes between the origin and the resource's path. */
export function resourceMetadataUrl(resource: string): string {
  const url = new URL(resource);
  const path = url.pathname === '/' ? '' : url.pathname;
  return `${url.origin}${PRM_PATH}${path}`;
}

export function resourceMetadata(server: ServerSpec & { resource: string }): Record<string, unknown> {
  return {
    resource: server.resource,
    authorization_servers: server.authorizationServers,
    ...(server.scopes.length > 0 ? { scopes_supported: server.scopes } : {}),
    bearer_methods_supported: ['header'],
    ...(server.description === undefined ? {} : { resource_name: server.description }),
  };
}
