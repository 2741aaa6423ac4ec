// Envoy resets its ext_proc stream at the end of nearly every request. The processor's HTTP/2 server must
// not take that for an attack (Node's rapid-reset protection) and close the connection with GOAWAY.

import http2 from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestProcessor, type TestProcessor } from '../support/processor.ts';

let proc: TestProcessor;

beforeAll(async () => {
  proc = await startTestProcessor('apiVersion: mcp-ext-proc/v1\nservers: [{ name: a }]\n');
});
afterAll(async () => {
  await proc.stop();
});

describe('stream resets from Envoy', () => {
  it('keeps the connection open through thousands of reset streams', async () => {
    const session = http2.connect(`http://127.0.0.1:${proc.grpcPort}`);
    let goaway = false;
    session.on('goaway', () => {
      goaway = true;
    });
    session.on('error', () => undefined);
    await new Promise<void>((resolve) => session.once('connect', () => resolve()));
    for (let i = 0; i < 3000; i++) {
      const stream = session.request({
        ':method': 'POST',
        ':path': '/envoy.service.ext_proc.v3.ExternalProcessor/Process',
        'content-type': 'application/grpc',
        te: 'trailers',
      });
      stream.on('error', () => undefined);
      stream.close(http2.constants.NGHTTP2_CANCEL);
      if (i % 200 === 0) await new Promise((r) => setImmediate(r));
    }
    await new Promise((r) => setTimeout(r, 300));
    expect(goaway).toBe(false);
    expect(session.closed || session.destroyed).toBe(false);
    session.close();
  });
});
