// Header helpers for the adapter: Envoy sends header values as raw bytes, and mutations must set only
// raw_value (setting `value` too is rejected; setting only `value` arrives empty).

import type { HeaderMap, HeaderMutation, HeaderValueOption, PbStruct } from './types.ts';

/** Dynamic metadata under the processor's namespace, read as %DYNAMIC_METADATA(mcp_ext_proc:KEY)%. */
export const METADATA_NAMESPACE = 'mcp_ext_proc';

export type Headers = ReadonlyMap<string, string>;

export function headerMap(map: HeaderMap | undefined): Map<string, string> {
  const out = new Map<string, string>();
  for (const h of map?.headers ?? []) {
    const v = h.raw_value !== undefined && h.raw_value.length > 0 ? h.raw_value.toString('latin1') : (h.value ?? '');
    const prev = out.get(h.key);
    out.set(h.key, prev === undefined ? v : `${prev},${v}`);
  }
  return out;
}

export function setHeader(key: string, value: string): HeaderValueOption {
  return { header: { key, raw_value: Buffer.from(value, 'latin1') }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' };
}

export function mutation(set: Record<string, string>, remove: string[] = []): HeaderMutation {
  return { set_headers: Object.entries(set).map(([k, v]) => setHeader(k, v)), remove_headers: remove };
}

/** `application/json; charset=utf-8` → `application/json`. */
export function mediaType(contentType: string | undefined): string | undefined {
  if (contentType === undefined) return undefined;
  const semi = contentType.indexOf(';');
  return (semi < 0 ? contentType : contentType.slice(0, semi)).trim().toLowerCase();
}

/** A flat string map as a google.protobuf.Struct, for dynamic metadata. */
export function struct(values: Record<string, string | undefined>): PbStruct {
  const fields: NonNullable<PbStruct['fields']> = {};
  for (const [k, v] of Object.entries(values)) if (v !== undefined) fields[k] = { stringValue: v };
  return { fields };
}

/** Reads one string attribute Envoy attached (request_attributes), by its expression. */
export function attribute(attrs: Record<string, PbStruct> | undefined, name: string): string | undefined {
  const v = attrs?.['envoy.filters.http.ext_proc']?.fields?.[name];
  return v?.stringValue !== undefined && v.stringValue !== '' ? v.stringValue : undefined;
}

/** An exchange's metadata as the ProcessingResponse field. */
export function metadata(ex: { readonly meta: Record<string, string | undefined> }): PbStruct {
  return { fields: { [METADATA_NAMESPACE]: { structValue: struct(ex.meta) } } };
}
