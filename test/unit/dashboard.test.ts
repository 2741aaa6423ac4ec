// The Grafana dashboard in helm/dashboards/ is plain JSON, so nothing else notices when it drifts from the
// metrics the service exposes. This keeps it honest: every metric and label its PromQL names is one the
// service exports, every exported metric is on it, and the layout is one Grafana can import.

import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

/** The metrics the service exposes and their labels (names are final; `le` is the histogram bucket bound). */
const METRICS: Record<string, readonly string[]> = {
  mcp_ext_proc_mcp_requests_total: ['server', 'method', 'tool', 'decision', 'outcome'],
  mcp_ext_proc_request_duration_seconds_bucket: ['server', 'method', 'le'],
  mcp_ext_proc_processing_duration_seconds_bucket: ['phase', 'le'],
  mcp_ext_proc_denials_total: ['server', 'rule'],
  mcp_ext_proc_errors_total: ['code'],
  mcp_ext_proc_token_verifications_total: ['result'],
  mcp_ext_proc_revocation_checks_total: ['result'],
  mcp_ext_proc_audit_records_total: ['format'],
  mcp_ext_proc_audit_records_dropped_total: [],
  mcp_ext_proc_streams_total: [],
  mcp_ext_proc_config_reloads_total: ['result'],
  mcp_ext_proc_credential_lookups_total: ['server', 'strategy', 'source'],
  mcp_ext_proc_credential_exchange_duration_seconds_bucket: ['strategy', 'outcome', 'le'],
  mcp_ext_proc_credential_failures_total: ['server', 'reason'],
};

/** Label values the service can emit, for the labels whose values are a closed set. */
const VALUES: Record<string, readonly string[]> = {
  decision: ['allow', 'deny', 'none'],
  phase: ['request_headers', 'request_body', 'response_headers', 'response_body'],
  strategy: ['staticSecret', 'tokenExchange', 'clientCredentials'],
  source: ['l1', 'l2', 'exchanged', 'coalesced', 'static'],
  reason: ['unreachable', 'timeout', 'idp_error', 'client_rejected', 'secret_missing', 'refused', 'upstream_rejected', 'internal', 'cache_corrupt', 'cache_unavailable'],
};
const RESULT_VALUES: Record<string, readonly string[]> = {
  mcp_ext_proc_token_verifications_total: ['cache_hit', 'verified', 'failed'],
  mcp_ext_proc_revocation_checks_total: ['passed', 'revoked', 'unavailable', 'skipped'],
  mcp_ext_proc_config_reloads_total: ['applied', 'rejected'],
};

interface GridPos { x: number; y: number; w: number; h: number }
interface Target { refId: string; expr: string; datasource?: { type?: string; uid?: string } }
interface Panel { id: number; type: string; title: string; gridPos: GridPos; datasource?: { type?: string; uid?: string }; targets?: Target[]; panels?: Panel[] }
interface Variable { name: string; type: string; query?: unknown; definition?: string }
interface Dashboard { uid: string; title: string; schemaVersion: number; panels: Panel[]; templating: { list: Variable[] } }

const path = new URL('../../helm/dashboards/mcp-ext-proc.json', import.meta.url);
const dashboard = JSON.parse(readFileSync(path, 'utf8')) as Dashboard;
const panels = dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
const queryPanels = panels.filter((p) => p.type !== 'row');
const exprs = [
  ...queryPanels.flatMap((p) => (p.targets ?? []).map((t) => ({ where: `panel "${p.title}" ${t.refId}`, expr: t.expr }))),
  ...dashboard.templating.list.flatMap((v) => (v.definition === undefined ? [] : [{ where: `variable ${v.name}`, expr: v.definition }])),
];

const METRIC_NAME = /\bmcp_ext_proc_[a-z0-9_]+/g;
/** `metric{matchers}`: a selector with its matcher list. */
const SELECTOR = /\b(mcp_ext_proc_[a-z0-9_]+)\s*\{([^}]*)\}/g;
const MATCHER = /([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"/g;
const GROUPING = /\b(?:by|without)\s*\(([^)]*)\)/g;

describe('Grafana dashboard helm/dashboards/mcp-ext-proc.json', () => {
  it('queries only metrics the service exposes', () => {
    const unknown = exprs.flatMap(({ where, expr }) => [...expr.matchAll(METRIC_NAME)].map((m) => m[0]).filter((name) => !(name in METRICS)).map((name) => `${where}: ${name}`));
    expect(unknown).toEqual([]);
  });

  it('lists only metrics the service registers (histograms by their _bucket series)', async () => {
    const { Metrics } = await import('../../ext-proc/src/audit/metrics.ts');
    const registered = new Set(new Metrics().registry.getMetricsAsArray().map((m) => m.name));
    expect(Object.keys(METRICS).filter((name) => !registered.has(name.replace(/_bucket$/, '')))).toEqual([]);
  });

  it('shows every metric the service exposes', () => {
    const used = new Set(exprs.flatMap(({ expr }) => [...expr.matchAll(METRIC_NAME)].map((m) => m[0])));
    expect(Object.keys(METRICS).filter((name) => !used.has(name))).toEqual([]);
  });

  it('matches only on labels each metric has, with values the service emits', () => {
    const problems: string[] = [];
    for (const { where, expr } of exprs) {
      for (const [, metric = '', matchers = ''] of expr.matchAll(SELECTOR)) {
        const labels = METRICS[metric] ?? [];
        for (const [, label = '', op, value = ''] of matchers.matchAll(MATCHER)) {
          if (!labels.includes(label)) problems.push(`${where}: ${metric} has no label ${label}`);
          const closed = label === 'result' ? RESULT_VALUES[metric] : VALUES[label];
          const values = op === '=' ? [value] : op === '=~' && !value.startsWith('$') ? value.split('|') : [];
          for (const v of values) if (closed !== undefined && !closed.includes(v)) problems.push(`${where}: ${metric}{${label}="${v}"} is never emitted`);
        }
      }
    }
    expect(problems).toEqual([]);
  });

  it('groups only by labels of the metrics in the same query', () => {
    const problems: string[] = [];
    for (const { where, expr } of exprs) {
      const labels = new Set([...expr.matchAll(METRIC_NAME)].flatMap((m) => METRICS[m[0]] ?? []));
      for (const [, list = ''] of expr.matchAll(GROUPING)) {
        for (const label of list.split(',').map((s) => s.trim()).filter(Boolean)) if (!labels.has(label)) problems.push(`${where}: grouping by ${label}`);
      }
    }
    expect(problems).toEqual([]);
  });

  it('takes quantiles over the le buckets of a histogram', () => {
    const quantiles = exprs.filter(({ expr }) => expr.includes('histogram_quantile'));
    expect(quantiles.length).toBeGreaterThan(0);
    for (const { where, expr } of quantiles) {
      expect(expr, where).toMatch(/_seconds_bucket\b/);
      expect(expr, where).toMatch(/\bby \([^)]*\ble\b[^)]*\)/);
    }
  });

  it('has unique panel ids and a layout of non-overlapping panels inside the 24-column grid', () => {
    const ids = panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const p of panels) {
      const g = p.gridPos;
      expect([g.x, g.y, g.w, g.h].every((n) => Number.isInteger(n) && n >= 0), p.title).toBe(true);
      expect(g.w > 0 && g.h > 0 && g.x + g.w <= 24, p.title).toBe(true);
    }
    const overlaps: string[] = [];
    for (const [i, a] of panels.entries()) {
      for (const b of panels.slice(i + 1)) {
        const A = a.gridPos;
        const B = b.gridPos;
        if (A.x < B.x + B.w && B.x < A.x + A.w && A.y < B.y + B.h && B.y < A.y + A.h) overlaps.push(`${a.title} / ${b.title}`);
      }
    }
    expect(overlaps).toEqual([]);
  });

  it('reads every query from the chosen Prometheus data source', () => {
    expect(dashboard.templating.list.find((v) => v.name === 'datasource')).toMatchObject({ type: 'datasource', query: 'prometheus' });
    const elsewhere = queryPanels.flatMap((p) => [p.datasource, ...(p.targets ?? []).map((t) => t.datasource)].filter((d) => d?.uid !== '${datasource}').map(() => p.title));
    expect(elsewhere).toEqual([]);
    for (const p of queryPanels) {
      const refIds = (p.targets ?? []).map((t) => t.refId);
      expect(refIds.length, p.title).toBeGreaterThan(0);
      expect(new Set(refIds).size, p.title).toBe(refIds.length);
    }
  });

  it('filters by the server variable wherever the metric has a server label', () => {
    expect(dashboard.templating.list.find((v) => v.name === 'server')).toMatchObject({ type: 'query', definition: 'label_values(mcp_ext_proc_mcp_requests_total, server)' });
    const unfiltered: string[] = [];
    for (const { where, expr } of exprs) {
      if (where.startsWith('variable')) continue;
      for (const m of expr.matchAll(/\b(mcp_ext_proc_[a-z0-9_]+)(\s*\{[^}]*\})?/g)) {
        const [, metric = '', selector = ''] = m;
        if (METRICS[metric]?.includes('server') === true && !selector.includes('server=~"$server"')) unfiltered.push(`${where}: ${metric}`);
      }
    }
    expect(unfiltered).toEqual([]);
  });

  it('has a stable uid and a Grafana 10/11 schema version', () => {
    expect(dashboard.uid).toBe('mcp-ext-proc');
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(36);
  });
});
