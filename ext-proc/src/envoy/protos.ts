// Loads Envoy's ext_proc service definition. The .proto files are not copied into this repository: they
// come from the Envoy API snapshot that @grpc/grpc-js-xds ships under deps/ (see protos/README.md).
// That snapshot predates FULL_DUPLEX_STREAMED; this service uses only STREAMED and BUFFERED.

import { createRequire } from 'node:module';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

const require = createRequire(import.meta.url);

function depsDir(): string {
  // package.json is not exported by grpc-js-xds, so resolve its entry point and walk up to the package root.
  const entry = require.resolve('@grpc/grpc-js-xds');
  let dir = path.dirname(entry);
  while (path.basename(dir) !== 'grpc-js-xds') dir = path.dirname(dir);
  return path.join(dir, 'deps');
}

export const EXT_PROC_SERVICE = 'envoy.service.ext_proc.v3.ExternalProcessor';

/** `enums` only changes how received enums are represented (sending accepts names and numbers). */
export function loadExternalProcessor(enums: typeof String | typeof Number = String): grpc.ServiceDefinition {
  const deps = depsDir();
  const definition = protoLoader.loadSync('envoy/service/ext_proc/v3/external_processor.proto', {
    includeDirs: ['envoy-api', 'xds', 'googleapis', 'protoc-gen-validate'].map((d) => path.join(deps, d)),
    keepCase: true,
    longs: String,
    enums,
    defaults: false,
    oneofs: true,
  });
  const pkg = grpc.loadPackageDefinition(definition);
  const service = (pkg['envoy'] as grpc.GrpcObject | undefined)?.['service'] as grpc.GrpcObject | undefined;
  const ctor = ((service?.['ext_proc'] as grpc.GrpcObject | undefined)?.['v3'] as grpc.GrpcObject | undefined)?.[
    'ExternalProcessor'
  ] as grpc.ServiceClientConstructor | undefined;
  if (ctor === undefined) throw new Error(`${EXT_PROC_SERVICE} not found in the bundled Envoy protos`);
  return ctor.service;
}
