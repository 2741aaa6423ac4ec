// Runs a real Envoy for end-to-end tests, configured from envoy/local.yaml.
//
// envoy/local.yaml is the single source of truth for the ext_proc filter settings (the contract with the
// processor), the listener and HCM settings and the cluster shapes. A test only changes what differs per
// run: ports, the processor address, the MCP upstreams and their routes, the access-log destination, and
// (explicitly, via `extProc`) individual filter fields under test.
//
// Ports: the listener and admin bind port 0 and we ask Envoy which ports it got (admin address file,
// /listeners), so parallel test files never race for a port picked in advance.
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parse, stringify } from 'yaml';
import { envoyBinary, repoRoot, spawnManaged } from './tools.ts';

export const localConfigPath = path.join(repoRoot, 'envoy', 'local.yaml');

export interface EnvoyUpstream {
  /** MCP server name: becomes the cluster name, the route name and route metadata mcp_ext_proc.server. */
  name: string;
  port: number;
  /** Defaults to 127.0.0.1. */
  host?: string;
  /** Path prefixes routed to this upstream (no rewrite: the upstream serves under its own prefix). */
  prefixes: string[];
  /** Body of an ExtProcPerRoute (without "@type") put on this upstream's routes, e.g. `{ disabled: true }`
   *  or `{ overrides: { grpc_initial_metadata: [{ key: 'x-mcp-ext-proc-server', value: 'x' }] } }`. */
  extProcPerRoute?: Record<string, unknown>;
}

export interface EnvoyOptions {
  upstreams: EnvoyUpstream[];
  /** Where the processor listens. `null`: no ext_proc filter and no processor cluster at all ("Envoy
   *  direct", for differential tests and benchmarks). Omitted: the address in envoy/local.yaml. */
  processor?: { port: number; host?: string } | null;
  /** Fields of the ext_proc filter config to change for this run, deep-merged into the file's settings
   *  (objects merge, arrays and scalars replace, `null` removes a field), e.g. `{ failure_mode_allow: true }`
   *  or `{ processing_mode: { response_body_mode: 'STREAMED' } }`. */
  extProc?: Record<string, unknown>;
  /** Envoy worker threads (--concurrency). Default 1. */
  concurrency?: number;
  /** --log-level, default "info". */
  logLevel?: string;
  /** --component-log-level, e.g. "ext_proc:trace,http:debug". */
  componentLogLevel?: string;
  /** How long to wait for /ready. Default 20 s. */
  readyTimeoutMs?: number;
}

export type AccessLogEntry = Record<string, unknown>;

export interface EnvoyInstance {
  /** The HTTP listener's port on 127.0.0.1. */
  readonly port: number;
  readonly adminPort: number;
  /** The rendered bootstrap (inside a temp dir removed by stop()). */
  readonly configPath: string;
  /** http://127.0.0.1:<port><path> */
  url(path: string): string;
  /** Counters and gauges from the admin /stats, optionally only names starting with `prefix`. */
  stats(prefix?: string): Promise<Record<string, number>>;
  /** The access-log lines so far, parsed. Waits for Envoy's file flush; with `count`, polls until at
   *  least that many entries are there or `timeoutMs` (default 3 s) passes. Still works after stop(). */
  accessLog(opts?: { count?: number; timeoutMs?: number }): Promise<AccessLogEntry[]>;
  stop(): Promise<void>;
  /** Tail of Envoy's stderr/stdout, for debugging a failing test. */
  logs(): string;
}

type Obj = Record<string, unknown>;

const extProcFilterName = 'envoy.filters.http.ext_proc';
const hcmName = 'envoy.filters.network.http_connection_manager';
const fileAccessLogType = 'type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog';
const extProcPerRouteType = 'type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute';
// Envoy buffers file access logs and flushes on a timer (default 10 s); tests want lines promptly.
const fileFlushMs = 20;

function isObj(value: unknown): value is Obj {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function obj(value: unknown, where: string): Obj {
  if (!isObj(value)) throw new Error(`envoy/local.yaml: expected a mapping at ${where}`);
  return value;
}

function list(value: unknown, where: string): unknown[] {
  if (!Array.isArray(value)) throw new Error(`envoy/local.yaml: expected a list at ${where}`);
  return value;
}

function findNamed(items: unknown[], name: string, where: string): Obj {
  const found = items.find((item) => isObj(item) && item['name'] === name);
  if (found === undefined) throw new Error(`envoy/local.yaml: no "${name}" in ${where}`);
  return obj(found, `${where}[name=${name}]`);
}

function mergeInto(target: Obj, patch: Obj): void {
  for (const [key, value] of Object.entries(patch)) {
    const current = target[key];
    if (value === null) Reflect.deleteProperty(target, key);
    else if (isObj(value) && isObj(current)) mergeInto(current, value);
    else target[key] = structuredClone(value);
  }
}

function socketAddress(host: string, port: number): Obj {
  return { socket_address: { address: host, port_value: port } };
}

function loadAssignment(clusterName: string, host: string, port: number): Obj {
  return { cluster_name: clusterName, endpoints: [{ lb_endpoints: [{ endpoint: { address: socketAddress(host, port) } }] }] };
}

function checkPort(port: number, what: string): void {
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`startEnvoy: ${what} port must be 1-65535, got ${port}`);
}

function checkOptions(opts: EnvoyOptions, processorCluster: string): void {
  const names = new Set<string>();
  for (const upstream of opts.upstreams) {
    if (!/^[A-Za-z0-9_.-]+$/.test(upstream.name)) throw new Error(`startEnvoy: upstream name "${upstream.name}" must match [A-Za-z0-9_.-]+`);
    if (upstream.name === processorCluster) throw new Error(`startEnvoy: upstream name "${upstream.name}" is the processor's cluster name`);
    if (names.has(upstream.name)) throw new Error(`startEnvoy: upstream name "${upstream.name}" is used twice`);
    names.add(upstream.name);
    checkPort(upstream.port, `upstream "${upstream.name}"`);
    if (upstream.prefixes.length === 0) throw new Error(`startEnvoy: upstream "${upstream.name}" has no prefixes`);
    for (const prefix of upstream.prefixes) {
      if (!prefix.startsWith('/')) throw new Error(`startEnvoy: prefix "${prefix}" of upstream "${upstream.name}" must start with /`);
    }
  }
  if (opts.processor) checkPort(opts.processor.port, 'processor');
}

/**
 * Renders envoy/local.yaml for one test run (see EnvoyOptions) and returns it as YAML text. The listener
 * and admin ports become 0 (Envoy picks; startEnvoy asks which); access logs go to `accessLogPath`.
 */
export function renderEnvoyConfig(opts: EnvoyOptions, accessLogPath: string, source = localConfigPath): string {
  return stringify(renderEnvoyConfigObject(opts, accessLogPath, source));
}

function renderEnvoyConfigObject(opts: EnvoyOptions, accessLogPath: string, source: string): Obj {
  const parsed: unknown = parse(readFileSync(source, 'utf8'));
  const root = obj(parsed, '(root)');

  const adminAddress = obj(obj(obj(root['admin'], 'admin')['address'], 'admin.address')['socket_address'], 'admin.address.socket_address');
  adminAddress['port_value'] = 0;

  const resources = obj(root['static_resources'], 'static_resources');
  const listeners = list(resources['listeners'], 'static_resources.listeners');
  if (listeners.length !== 1) throw new Error(`envoy/local.yaml: expected exactly one listener, found ${listeners.length}`);
  const listener = obj(listeners[0], 'listeners[0]');
  obj(obj(listener['address'], 'listener address')['socket_address'], 'listener socket_address')['port_value'] = 0;

  const chain = obj(list(listener['filter_chains'], 'filter_chains')[0], 'filter_chains[0]');
  const hcm = obj(findNamed(list(chain['filters'], 'filter_chains[0].filters'), hcmName, 'filters')['typed_config'], 'HCM typed_config');

  // Same format, written to a file the test can read (stdout belongs to the test runner).
  hcm['access_log'] = list(hcm['access_log'] ?? [], 'access_log').map((entry, i) => {
    const logger = obj(entry, `access_log[${i}]`);
    const typed = obj(logger['typed_config'], `access_log[${i}].typed_config`);
    return { name: 'envoy.access_loggers.file', typed_config: { '@type': fileAccessLogType, path: accessLogPath, log_format: typed['log_format'] } };
  });

  const httpFilters = list(hcm['http_filters'], 'http_filters');
  const extProc = findNamed(httpFilters, extProcFilterName, 'http_filters');
  const extProcConfig = obj(extProc['typed_config'], 'ext_proc typed_config');
  const grpcService = obj(extProcConfig['grpc_service'], 'ext_proc grpc_service');
  const processorCluster = obj(grpcService['envoy_grpc'], 'ext_proc grpc_service.envoy_grpc')['cluster_name'];
  if (typeof processorCluster !== 'string') throw new Error('envoy/local.yaml: ext_proc grpc_service.envoy_grpc.cluster_name is not a string');
  checkOptions(opts, processorCluster);

  const clusters = list(resources['clusters'], 'clusters').map((c, i) => obj(c, `clusters[${i}]`));
  const processor = clusters.find((c) => c['name'] === processorCluster);
  if (processor === undefined) throw new Error(`envoy/local.yaml: no cluster "${processorCluster}" for the processor`);
  // The file's MCP upstream cluster(s) serve as the template for each test upstream's cluster.
  const upstreamTemplate = clusters.find((c) => c['name'] !== processorCluster);
  if (upstreamTemplate === undefined) throw new Error('envoy/local.yaml: no MCP upstream cluster to use as a template');

  const newClusters: Obj[] = [];
  if (opts.processor === null) {
    hcm['http_filters'] = httpFilters.filter((f) => f !== extProc);
  } else {
    if (opts.extProc) mergeInto(extProcConfig, opts.extProc);
    if (opts.processor) processor['load_assignment'] = loadAssignment(processorCluster, opts.processor.host ?? '127.0.0.1', opts.processor.port);
    newClusters.push(processor);
  }
  for (const upstream of opts.upstreams) {
    const cluster = structuredClone(upstreamTemplate);
    cluster['name'] = upstream.name;
    cluster['load_assignment'] = loadAssignment(upstream.name, upstream.host ?? '127.0.0.1', upstream.port);
    newClusters.push(cluster);
  }
  resources['clusters'] = newClusters;

  const routeConfig = obj(hcm['route_config'], 'route_config');
  const virtualHosts = list(routeConfig['virtual_hosts'], 'virtual_hosts');
  if (virtualHosts.length !== 1) throw new Error(`envoy/local.yaml: expected exactly one virtual host, found ${virtualHosts.length}`);
  const virtualHost = obj(virtualHosts[0], 'virtual_hosts[0]');
  const routeTemplate = obj(list(virtualHost['routes'], 'routes')[0], 'routes[0]');
  const routes: { prefix: string; route: Obj }[] = [];
  for (const upstream of opts.upstreams) {
    for (const prefix of upstream.prefixes) {
      const route = structuredClone(routeTemplate);
      route['name'] = upstream.name;
      route['match'] = { prefix };
      route['metadata'] = { filter_metadata: { mcp_ext_proc: { server: upstream.name } } };
      const action = obj(route['route'], 'routes[0].route');
      action['cluster'] = upstream.name;
      // MCP responses may be SSE streams: no whole-response timeout, whatever the template says.
      action['timeout'] = '0s';
      Reflect.deleteProperty(route, 'typed_per_filter_config');
      if (upstream.extProcPerRoute && opts.processor !== null) {
        route['typed_per_filter_config'] = { [extProcFilterName]: { '@type': extProcPerRouteType, ...upstream.extProcPerRoute } };
      }
      routes.push({ prefix, route });
    }
  }
  // Envoy takes the first matching route: longer prefixes first so /a/b/ is not swallowed by /a/.
  routes.sort((a, b) => b.prefix.length - a.prefix.length);
  virtualHost['routes'] = routes.map((r) => r.route);
  return root;
}

/** Runs `envoy --mode validate -c <file>`: ok when Envoy accepts the config. `output` is everything printed. */
export function validateEnvoyConfig(file: string): Promise<{ ok: boolean; output: string }> {
  return new Promise((resolve) => {
    execFile(envoyBinary(), ['--mode', 'validate', '-c', file, '--log-level', 'warning'], (err, stdout, stderr) => {
      const output = `${stdout}${stderr}`;
      resolve({ ok: err === null && output.includes(`configuration '${file}' OK`), output });
    });
  });
}

async function fetchText(url: string, timeoutMs = 2000): Promise<{ status: number; body: string }> {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  return { status: res.status, body: await res.text() };
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function parseStats(json: string): Record<string, number> {
  const parsed: unknown = JSON.parse(json);
  const out: Record<string, number> = {};
  const stats = isObj(parsed) && Array.isArray(parsed['stats']) ? parsed['stats'] : [];
  for (const stat of stats) {
    // Histograms come as one extra {"histograms": …} entry without name/value; counters and gauges only.
    if (isObj(stat) && typeof stat['name'] === 'string' && typeof stat['value'] === 'number') out[stat['name']] = stat['value'];
  }
  return out;
}

function parseAccessLog(text: string): AccessLogEntry[] {
  const entries: AccessLogEntry[] = [];
  const lines = text.split('\n');
  lines.pop(); // the part after the last newline is empty, or a line still being written
  for (const line of lines) {
    if (line.trim() === '') continue;
    const entry: unknown = JSON.parse(line);
    if (!isObj(entry)) throw new Error(`access log line is not a JSON object: ${line}`);
    entries.push(entry);
  }
  return entries;
}

/** Starts Envoy with a config rendered from envoy/local.yaml and waits until it is ready to serve. */
export async function startEnvoy(opts: EnvoyOptions): Promise<EnvoyInstance> {
  const dir = await mkdtemp(path.join(tmpdir(), 'mcp-ext-proc-envoy-'));
  const configPath = path.join(dir, 'envoy.yaml');
  const accessLogPath = path.join(dir, 'access.log');
  const adminAddressPath = path.join(dir, 'admin-address');
  await writeFile(configPath, renderEnvoyConfig(opts, accessLogPath));
  await writeFile(accessLogPath, '');

  const args = [
    '-c', configPath,
    '--concurrency', String(opts.concurrency ?? 1),
    // Lets any number of Envoys run side by side (each gets its own shared-memory base id).
    '--use-dynamic-base-id',
    '--admin-address-path', adminAddressPath,
    '--file-flush-interval-msec', String(fileFlushMs),
    '--log-level', opts.logLevel ?? 'info',
  ];
  if (opts.componentLogLevel !== undefined) args.push('--component-log-level', opts.componentLogLevel);
  const proc = spawnManaged(envoyBinary(), args);

  const fail = async (why: string): Promise<never> => {
    await proc.stop(1000);
    await rm(dir, { recursive: true, force: true });
    throw new Error(
      `Envoy did not start: ${why} (renderEnvoyConfig() with the same options shows the config it was given)\n` +
        `--- envoy output (tail) ---\n${proc.output().slice(-8000)}`,
    );
  };

  const deadline = Date.now() + (opts.readyTimeoutMs ?? 20_000);
  let adminPort: number | undefined;
  for (;;) {
    if (proc.hasExited()) return fail(`it exited (${String(await proc.exited)}) before becoming ready`);
    if (Date.now() > deadline) return fail(`not ready after ${opts.readyTimeoutMs ?? 20_000} ms`);
    // Re-read every time: the file may be caught half-written, and a wrong port just fails /ready.
    const address = (await readFile(adminAddressPath, 'utf8').catch(() => '')).trim();
    const candidate = Number(address.slice(address.lastIndexOf(':') + 1));
    if (address !== '' && Number.isInteger(candidate) && candidate > 0) {
      const ready = await fetchText(`http://127.0.0.1:${candidate}/ready`).catch(() => undefined);
      if (ready?.status === 200 && ready.body.trim() === 'LIVE') {
        adminPort = candidate;
        break;
      }
    }
    await sleep(50);
  }
  const admin = `http://127.0.0.1:${adminPort}`;

  const listeners: unknown = JSON.parse((await fetchText(`${admin}/listeners?format=json`)).body);
  const statuses = isObj(listeners) && Array.isArray(listeners['listener_statuses']) ? listeners['listener_statuses'] : [];
  const first: unknown = statuses[0];
  const localAddress = isObj(first) && isObj(first['local_address']) ? first['local_address'] : undefined;
  const bound = localAddress && isObj(localAddress['socket_address']) ? localAddress['socket_address']['port_value'] : undefined;
  if (typeof bound !== 'number' || bound <= 0) return fail(`could not read the listener port from /listeners: ${JSON.stringify(listeners)}`);
  const port = bound;

  let finalAccessLog: string | undefined;
  const readAccessLog = async (): Promise<string> => finalAccessLog ?? (await readFile(accessLogPath, 'utf8'));

  return {
    port,
    adminPort,
    configPath,
    url: (p: string) => `http://127.0.0.1:${port}${p}`,
    async stats(prefix?: string): Promise<Record<string, number>> {
      const filter = prefix === undefined ? '' : `&filter=${encodeURIComponent(`^${escapeRegExp(prefix)}`)}`;
      const res = await fetchText(`${admin}/stats?format=json${filter}`);
      if (res.status !== 200) throw new Error(`Envoy /stats answered ${res.status}: ${res.body}`);
      return parseStats(res.body);
    },
    async accessLog(logOpts?: { count?: number; timeoutMs?: number }): Promise<AccessLogEntry[]> {
      // A request is logged when its stream is torn down, just after the client saw the response, then
      // flushed on Envoy's timer: give both a moment.
      if (finalAccessLog === undefined) await sleep(fileFlushMs * 3);
      const until = Date.now() + (logOpts?.timeoutMs ?? 3000);
      for (;;) {
        const entries = parseAccessLog(await readAccessLog());
        if (finalAccessLog !== undefined || entries.length >= (logOpts?.count ?? 0) || Date.now() > until) return entries;
        await sleep(fileFlushMs);
      }
    },
    async stop(): Promise<void> {
      if (finalAccessLog !== undefined) return;
      await proc.stop();
      finalAccessLog = await readFile(accessLogPath, 'utf8').catch(() => '');
      await rm(dir, { recursive: true, force: true });
    },
    logs: () => proc.output(),
  };
}
