// Drives Debian's chromium through playwright-core for tests/browser.rs:
// for each case, opens a page, then from inside it makes one gRPC-Web
// unary call with fetch, as a dashboard would, and prints what the page
// saw as one JSON line.
//
// node grpc_web.mjs <chromium> <playwright-core folder> <profile folder> <cases JSON>
//
// A case is {name, page, url, message}: the page to open, the URL to POST
// the call to (absolute, or relative to the page), and the request message
// as an array of bytes.

import { createRequire } from 'node:module';
import path from 'node:path';

const [executablePath, modules, profile, casesJson] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(modules), 'package.json'));
const { chromium } = require('playwright-core');

const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
    '--disable-quic',
    // `evil.example` is a name an attacker re-pointed at this machine.
    '--host-resolver-rules=MAP evil.example 127.0.0.1',
  ],
});

// Runs inside the page: one gRPC-Web call, its frames decoded.
async function call({ url, message }) {
  const body = new Uint8Array(5 + message.length);
  new DataView(body.buffer).setUint32(1, message.length);
  body.set(message, 5);
  try {
    const response = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/grpc-web+proto', 'x-grpc-web': '1' },
      body,
    });
    const type = response.headers.get('content-type') ?? '';
    if (!type.startsWith('application/grpc-web')) {
      return { fetched: true, http_status: response.status, grpc_status: null, text: await response.text() };
    }
    const bytes = new Uint8Array(await response.arrayBuffer());
    const messages = [];
    let trailers = '';
    for (let at = 0; at + 5 <= bytes.length; ) {
      const length = new DataView(bytes.buffer, at + 1, 4).getUint32(0);
      const payload = bytes.slice(at + 5, at + 5 + length);
      if (bytes[at] & 0x80) trailers += new TextDecoder().decode(payload);
      else messages.push(Array.from(payload));
      at += 5 + length;
    }
    const trailer = /grpc-status:\s*(\d+)/i.exec(trailers);
    return {
      fetched: true,
      http_status: response.status,
      grpc_status: response.headers.get('grpc-status') ?? (trailer ? trailer[1] : null),
      messages,
    };
  } catch (error) {
    return { fetched: false, error: String(error) };
  }
}

const results = [];
for (const test of JSON.parse(casesJson)) {
  const page = await context.newPage();
  try {
    const opened = await page.goto(test.page, { timeout: 15000 });
    const result = await page.evaluate(call, { url: test.url, message: test.message });
    results.push({
      name: test.name,
      page_status: opened ? opened.status() : null,
      origin: await page.evaluate(() => location.origin),
      ...result,
    });
  } catch (error) {
    results.push({ name: test.name, fetched: false, error: `the page failed: ${error}` });
  } finally {
    await page.close();
  }
}
await context.close();
console.log(JSON.stringify(results));
