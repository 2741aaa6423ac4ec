// The governed benchmark's governance document (npm run bench): an `identity` section naming the test
// IdP the bench starts (test/support/idp.ts), the MCP server of bench/mcp-upstream.ts at GOV_PATH with a
// `resource`, a few other servers the policy talks about, and a policy of about 50 rules.
//
// The policy is shaped like a real organisation's: rules for several servers, groups and agents, allows,
// denies and scope requirements, some with CEL conditions on `arguments`, `user.groups`, `user.email` or
// the agent. Rules on other servers cost a match test each; the rules on the governed server make a
// tools/call evaluate several conditions (one with a comprehension) before the allow that decides,
// which comes late in the list. For alice (groups analysts, staff, emea; through agent-a) the policy
// allows exactly the get_*, list_*, search_* and export_* tools: 40 of the server's 100.
//
// The issuer's URL is only known once the IdP listens, so the document is written at run time (into the
// bench's scratch directory) and checked with `mcp-ext-proc check-config` before the processor starts.
// To look at it: node bench/governed.ts [--issuer URL] > governed.yaml

import { parseArgs } from 'node:util';
import { stringify } from 'yaml';
import type { IdpUser } from '../test/support/idp.ts';
import { GOV_PREFIX, GOV_TOOLS } from './mcp-upstream.ts';

/** The governed server's name: the Envoy upstream, route metadata and `servers[].name`. */
export const GOV_SERVER = 'bench-gov';
/** Its resource URL: the audience of the bench's tokens (the processor only compares it, never calls it). */
export const GOV_RESOURCE = 'https://mcp.bench.example/gov/mcp';
export const GOV_USER = 'alice';
export const GOV_CLIENT = 'agent-a';
export const GOV_SCOPE = 'mcp';

/** The IdP's users: alice is the bench's caller; the others exist so that rules about them are realistic. */
export const GOV_USERS: readonly IdpUser[] = [
  { username: 'alice', email: 'alice@example.com', groups: ['analysts', 'staff', 'emea'] },
  { username: 'bob', email: 'bob@example.com', groups: ['engineering', 'staff'] },
  { username: 'admin', email: 'admin@example.com', groups: ['mcp-admins'] },
];

/** The tools/call of the governed call workload: allowed for alice, after three conditions are evaluated. */
export const GOV_CALL = {
  name: 'get_account',
  arguments: { id: 'acct-0042', limit: 10, fields: ['name', 'owner', 'region'], format: 'json' },
} as const;

/** What the policy lets alice see: the read-only families. */
const ALICE_FAMILIES = ['get', 'list', 'search', 'export'];
export const GOV_VISIBLE_TO_ALICE: readonly string[] = GOV_TOOLS.map((t) => t.name).filter((n) => ALICE_FAMILIES.includes(n.split('_')[0] ?? ''));

interface Rule {
  id: string;
  effect: 'allow' | 'deny' | 'require';
  subject?: 'agent';
  match?: {
    servers?: string[];
    names?: string[];
    users?: { groups?: string[]; emails?: string[]; subjects?: string[] };
    agents?: string[];
  };
  when?: string;
  scopes?: string[];
}

const G = GOV_SERVER;

/** 52 rules; the allow that decides alice's calls is rule 46 (of 47 user rules). */
export const GOV_RULES: readonly Rule[] = [
  // Documentation and web search: open to everyone, with exceptions.
  { id: 'everyone-docs', effect: 'allow', match: { servers: ['docs'] } },
  { id: 'docs-no-drafts', effect: 'deny', match: { servers: ['docs'], names: ['draft_*'] } },
  { id: 'web-search-all', effect: 'allow', match: { servers: ['search-web'], names: ['search', 'fetch_page'] } },
  { id: 'web-fetch-no-internal', effect: 'deny', match: { servers: ['search-web'], names: ['fetch_page'] }, when: 'has(arguments.url) && arguments.url.contains(".internal.")' },
  // GitHub.
  { id: 'engineers-github-read', effect: 'allow', match: { servers: ['github'], users: { groups: ['engineering'] }, names: ['get_*', 'list_*', 'search_*'] } },
  { id: 'github-writes-need-scope', effect: 'require', match: { servers: ['github'], names: ['create_*', 'update_*', 'delete_*', 'merge_*'] }, scopes: ['github:write'] },
  { id: 'github-writes', effect: 'allow', match: { servers: ['github'], users: { groups: ['engineering'] }, names: ['create_*', 'update_*', 'merge_*'] } },
  { id: 'github-no-force-push', effect: 'deny', match: { servers: ['github'], names: ['push_*'] }, when: 'has(arguments.force) && arguments.force == true' },
  { id: 'github-release-managers', effect: 'allow', match: { servers: ['github'], users: { groups: ['release-managers'] }, names: ['create_release', 'publish_*'] } },
  { id: 'github-no-delete-repos', effect: 'deny', match: { servers: ['github'], names: ['delete_repository'] } },
  // CRM.
  { id: 'crm-sales-read', effect: 'allow', match: { servers: ['crm'], users: { groups: ['sales', 'sales-*'] }, names: ['get_*', 'list_*', 'search_*'] } },
  { id: 'crm-sales-write', effect: 'allow', match: { servers: ['crm'], users: { groups: ['sales'] }, names: ['create_*', 'update_*'] } },
  { id: 'crm-big-discounts', effect: 'deny', match: { servers: ['crm'], names: ['apply_discount'] }, when: 'has(arguments.percent) && arguments.percent > 30 && !("sales-managers" in user.groups)' },
  { id: 'crm-no-bulk-export', effect: 'deny', match: { servers: ['crm'], names: ['export_*'] }, when: 'has(arguments.limit) && arguments.limit > 10000' },
  { id: 'crm-export-scope', effect: 'require', match: { servers: ['crm'], names: ['export_*'] }, scopes: ['crm:export'] },
  { id: 'crm-support-tickets', effect: 'allow', match: { servers: ['crm'], users: { groups: ['support'] }, names: ['*_ticket', '*_tickets'] } },
  // Data warehouse.
  { id: 'warehouse-analysts-query', effect: 'allow', match: { servers: ['warehouse'], users: { groups: ['analysts', 'data-*'] }, names: ['run_query', 'list_tables', 'describe_table'] } },
  { id: 'warehouse-no-ddl', effect: 'deny', match: { servers: ['warehouse'], names: ['run_query'] }, when: 'has(arguments.sql) && (arguments.sql.contains("DROP ") || arguments.sql.contains("ALTER "))' },
  { id: 'warehouse-pii-tables', effect: 'deny', match: { servers: ['warehouse'], names: ['describe_table', 'run_query'] }, when: 'has(arguments.table) && arguments.table.startsWith("pii_") && !("privacy-officers" in user.groups)' },
  { id: 'warehouse-row-cap', effect: 'deny', match: { servers: ['warehouse'], names: ['run_query'] }, when: 'has(arguments.limit) && arguments.limit > 100000' },
  // HR.
  { id: 'hr-managers', effect: 'allow', match: { servers: ['hr'], users: { groups: ['people-managers'] }, names: ['get_employee', 'list_reports'] } },
  { id: 'hr-self-service', effect: 'allow', match: { servers: ['hr'], names: ['get_my_*'] } },
  { id: 'hr-comp-restricted', effect: 'deny', match: { servers: ['hr'], names: ['get_compensation*'] }, when: '!("hr-partners" in user.groups)' },
  { id: 'hr-no-contractors', effect: 'deny', match: { servers: ['hr'], users: { groups: ['contractors'] } } },
  // Payments.
  { id: 'payments-finance', effect: 'allow', match: { servers: ['payments'], users: { groups: ['finance'] }, names: ['get_*', 'list_*'] } },
  { id: 'payments-refunds-scope', effect: 'require', match: { servers: ['payments'], names: ['refund_*'] }, scopes: ['payments:refund'] },
  { id: 'payments-refunds', effect: 'allow', match: { servers: ['payments'], users: { groups: ['finance-ops'] }, names: ['refund_*'] } },
  { id: 'payments-refund-cap', effect: 'deny', match: { servers: ['payments'], names: ['refund_*'] }, when: 'has(arguments.amount) && double(arguments.amount) > 5000.0' },
  { id: 'payments-no-urgent-payouts', effect: 'deny', match: { servers: ['payments'], names: ['create_payout'] }, when: 'has(arguments.urgent) && arguments.urgent == true' },
  // Across servers.
  { id: 'mcp-admins-everything', effect: 'allow', match: { users: { groups: ['mcp-admins'] } } },
  { id: 'offboarded-nothing', effect: 'deny', when: '"offboarded" in user.groups' },
  { id: 'contractors-no-prod', effect: 'deny', match: { servers: ['github', 'payments', 'warehouse'], users: { groups: ['contractors'] } } },
  { id: 'interns-read-only', effect: 'deny', match: { users: { groups: ['interns'] }, names: ['create_*', 'update_*', 'delete_*', 'refund_*', 'deploy_*'] } },
  // The governed server (bench-gov).
  { id: 'gov-no-restricted-ids', effect: 'deny', match: { servers: [G], names: ['get_*', 'export_*'] }, when: 'has(arguments.id) && arguments.id.startsWith("restricted-")' },
  { id: 'gov-limit-cap', effect: 'deny', match: { servers: [G], names: ['list_*', 'search_*', 'get_*'] }, when: 'has(arguments.limit) && arguments.limit > 1000' },
  { id: 'gov-contractors-no-export', effect: 'deny', match: { servers: [G], users: { groups: ['contractors'] }, names: ['export_*'] } },
  { id: 'gov-admin-tools', effect: 'deny', match: { servers: [G], names: ['admin_*'] }, when: '!("mcp-admins" in user.groups)' },
  { id: 'gov-writes-need-scope', effect: 'require', match: { servers: [G], names: ['create_*', 'update_*', 'delete_*'] }, scopes: ['gov:write'] },
  { id: 'gov-engineering-writes', effect: 'allow', match: { servers: [G], users: { groups: ['engineering'] }, names: ['create_*', 'update_*', 'deploy_*'] } },
  { id: 'gov-finance-billing', effect: 'allow', match: { servers: [G], users: { groups: ['finance'] }, names: ['billing_*'] } },
  { id: 'gov-deploy-production', effect: 'deny', match: { servers: [G], names: ['deploy_*'] }, when: 'has(arguments.environment) && arguments.environment == "production" && !("release-managers" in user.groups)' },
  { id: 'gov-support-tickets', effect: 'allow', match: { servers: [G], users: { groups: ['support'] }, names: ['*_ticket'] } },
  { id: 'gov-export-formats', effect: 'deny', match: { servers: [G], names: ['export_*'] }, when: 'has(arguments.format) && !(arguments.format in ["csv", "json"])' },
  { id: 'gov-no-sensitive-fields', effect: 'deny', match: { servers: [G], names: ['get_*', 'search_*'] }, when: 'has(arguments.fields) && arguments.fields.exists(f, f in ["ssn", "salary", "date_of_birth"])' },
  { id: 'gov-emea-only-eu-accounts', effect: 'deny', match: { servers: [G], users: { groups: ['emea'] }, names: ['*_account'] }, when: 'has(arguments.id) && arguments.id.startsWith("us-")' },
  { id: 'gov-analysts-read', effect: 'allow', match: { servers: [G], users: { groups: ['analysts'] }, names: ['get_*', 'list_*', 'search_*', 'export_*'] }, when: 'user.email.endsWith("@example.com")' },
  { id: 'gov-staff-metrics', effect: 'allow', match: { servers: [G], users: { groups: ['staff'] }, names: ['get_metric', 'list_metric'] } },
  // Agents.
  { id: 'agent-experimental-deny', subject: 'agent', effect: 'deny', match: { agents: ['experimental-*'] } },
  { id: 'agent-b-no-deletes', subject: 'agent', effect: 'deny', match: { agents: ['agent-b'], names: ['delete_*', 'refund_*'] } },
  { id: 'agent-legacy-read-only', subject: 'agent', effect: 'deny', when: 'agent.clientId.startsWith("legacy-") && (name.startsWith("create_") || name.startsWith("update_"))' },
  { id: 'agent-a-no-raw-export', subject: 'agent', effect: 'deny', match: { agents: ['agent-a'], names: ['export_*'] }, when: 'has(arguments.format) && arguments.format == "raw"' },
  { id: 'agent-gov-known-agents', subject: 'agent', effect: 'allow', match: { servers: [G], agents: ['agent-a', 'agent-b'] } },
];

/** The governance document (YAML) for an IdP at `issuer`. */
/** What the token-swap setup's server receives: a token exchanged for this audience. */
export const GOV_UPSTREAM_AUDIENCE = 'https://mcp.bench.example/upstream';

/**
 * The governed document; with `gatewaySecretFile`, the governed server also gets its credential by
 * RFC 8693 token exchange at the bench IdP (client `gateway`, secret in that file): the token-swap setup.
 */
export function governedDocument(issuer: string, gatewaySecretFile?: string): string {
  const other = (name: string, description: string): Record<string, unknown> => ({
    name,
    description,
    resource: `https://mcp.bench.example/${name}/mcp`,
    scopes: ['mcp'],
    pathPrefixes: [`/${name}/`],
  });
  const doc = {
    apiVersion: 'mcp-ext-proc/v1',
    identity: {
      issuers: [{ name: 'bench-idp', issuer, algorithms: ['RS256', 'ES256'] }],
      adminGroups: ['mcp-admins'],
    },
    servers: [
      {
        name: GOV_SERVER,
        description: 'Stateless Streamable HTTP server with 100 tools, answering with application/json.',
        resource: GOV_RESOURCE,
        scopes: [GOV_SCOPE],
        pathPrefixes: [GOV_PREFIX],
        ...(gatewaySecretFile === undefined
          ? {}
          : { credential: { type: 'tokenExchange', issuer: 'bench-idp', resource: GOV_UPSTREAM_AUDIENCE, client: { id: 'gateway', secret: { file: gatewaySecretFile } } } }),
      },
      other('docs', 'Documentation search'),
      other('search-web', 'Web search and fetch'),
      other('github', 'GitHub'),
      other('crm', 'Customer relationship management'),
      other('warehouse', 'Data warehouse'),
      other('hr', 'People and compensation'),
      other('payments', 'Payments and refunds'),
    ],
    policy: { agentDefault: 'allow', rules: GOV_RULES },
  };
  const header = [
    '# Generated by bench/governed.ts for npm run bench: the governed mcp-ext-proc setup.',
    `# ${GOV_RULES.length} rules; for alice (analysts, staff, emea) through agent-a, ${GOV_VISIBLE_TO_ALICE.length} of the ${GOV_TOOLS.length} tools of ${GOV_SERVER} are allowed.`,
  ].join('\n');
  return `${header}\n${stringify(doc, { lineWidth: 0 })}`;
}

if (import.meta.main) {
  const { values } = parseArgs({ options: { issuer: { type: 'string', default: 'http://127.0.0.1:9999' }, 'gateway-secret-file': { type: 'string' } } });
  process.stdout.write(governedDocument(values.issuer, values['gateway-secret-file']));
}
