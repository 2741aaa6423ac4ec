// Admin HTTP port: liveness, readiness and Prometheus metrics. Not for MCP traffic.

import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';

export interface Readiness {
  /** Empty when ready; otherwise what is not. */
  problems(): string[];
}

export interface AdminServer {
  readonly port: number;
  close(): Promise<void>;
}

/** Extra endpoints (the admin API); returns false when it does not handle the path. */
export type AdminRoutes = (req: IncomingMessage, res: ServerResponse, path: string) => Promise<boolean>;

export async function startAdminServer(options: { host: string; port: number; registry: Registry; readiness: Readiness; routes?: AdminRoutes }): Promise<AdminServer> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    if (options.routes !== undefined) {
      options.routes(req, res, path).then(
        (handled) => {
          if (!handled) basic(req, res, path);
        },
        () => res.writeHead(500).end(),
      );
      return;
    }
    basic(req, res, path);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, resolve);
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };

  function basic(req: IncomingMessage, res: ServerResponse, path: string): void {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (path === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    } else if (path === '/readyz') {
      const problems = options.readiness.problems();
      res.writeHead(problems.length === 0 ? 200 : 503, { 'content-type': 'text/plain' }).end(problems.length === 0 ? 'ready\n' : `${problems.join('\n')}\n`);
    } else if (path === '/metrics') {
      options.registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': options.registry.contentType }).end(text),
        (err: unknown) => res.writeHead(500).end(String(err)),
      );
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    }
  }
}
