// The parts of Envoy's ext_proc messages this service reads and writes, as @grpc/proto-loader
// represents them (keepCase, enums as strings, bytes as Buffer, oneofs named by `request`/`response`).

export interface HeaderValue {
  key: string;
  value?: string;
  raw_value?: Buffer;
}
export interface HeaderMap {
  headers?: HeaderValue[];
}
export interface HttpHeaders {
  headers?: HeaderMap;
  end_of_stream?: boolean;
}
export interface HttpBody {
  body?: Buffer;
  end_of_stream?: boolean;
}

/** google.protobuf.Struct / Value as proto-loader decodes them. */
export interface PbValue {
  kind?: 'nullValue' | 'numberValue' | 'stringValue' | 'boolValue' | 'structValue' | 'listValue';
  stringValue?: string;
  numberValue?: number;
  boolValue?: boolean;
  structValue?: PbStruct;
  listValue?: { values?: PbValue[] };
}
export interface PbStruct {
  fields?: Record<string, PbValue>;
}

export interface ProcessingRequest {
  request?: 'request_headers' | 'response_headers' | 'request_body' | 'response_body' | 'request_trailers' | 'response_trailers';
  request_headers?: HttpHeaders;
  response_headers?: HttpHeaders;
  request_body?: HttpBody;
  response_body?: HttpBody;
  attributes?: Record<string, PbStruct>;
}

export interface HeaderValueOption {
  header: { key: string; raw_value: Buffer };
  append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' | 'APPEND_IF_EXISTS_OR_ADD';
}
export interface HeaderMutation {
  set_headers?: HeaderValueOption[];
  remove_headers?: string[];
}
export interface CommonResponse {
  status?: 'CONTINUE' | 'CONTINUE_AND_REPLACE';
  header_mutation?: HeaderMutation;
  body_mutation?: { body: Buffer } | { clear_body: true };
}
export type BodySendMode = 'NONE' | 'STREAMED' | 'BUFFERED';
export interface ProcessingMode {
  request_header_mode?: 'DEFAULT' | 'SEND' | 'SKIP';
  response_header_mode?: 'DEFAULT' | 'SEND' | 'SKIP';
  request_body_mode: BodySendMode;
  response_body_mode: BodySendMode;
}
export interface ImmediateResponse {
  status: { code: number };
  headers?: HeaderMutation;
  body?: Buffer;
  details?: string;
}

export interface ProcessingResponse {
  request_headers?: { response?: CommonResponse };
  response_headers?: { response?: CommonResponse };
  request_body?: { response?: CommonResponse };
  response_body?: { response?: CommonResponse };
  request_trailers?: Record<string, never>;
  response_trailers?: Record<string, never>;
  immediate_response?: ImmediateResponse;
  dynamic_metadata?: PbStruct;
  mode_override?: ProcessingMode;
  /** Sent on its own, not as an answer: Envoy restarts the current message's timer with this value. */
  override_message_timeout?: { seconds: number; nanos: number };
}
