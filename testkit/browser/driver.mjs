// Drives Debian's chromium through playwright-core for the Rust tests
// (testkit/src/browser.rs): one JSON command per line on stdin, one JSON
// answer per line on stdout, in order.
//
//   node driver.mjs <chromium> <folder holding node_modules/playwright-core>
//
// A command is {"op": ..., "page": N, ...}; the answer {"ok": true,
// "value": ...} or {"ok": false, "error": "..."}. Pages are numbered from 0
// in the order `newPage` opened them. Each page records its console errors
// and uncaught exceptions, which `problems` returns.

import { createRequire } from "node:module";
import path from "node:path";
import readline from "node:readline";

const [executablePath, modules] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(modules), "package.json"));
const { chromium } = require("playwright-core");

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
  ],
});

/** Open pages: {page, context, problems}. */
const pages = [];

function pageOf(command) {
  const entry = pages[command.page ?? 0];
  if (!entry) throw new Error(`no page ${command.page}`);
  return entry;
}

/** Polls `probe` until it returns a value other than undefined, or fails after `timeout` ms. */
async function until(probe, timeout, what) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${last ? `: ${last.message}` : ""}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

const ops = {
  async newPage(c) {
    // Each page gets its own context: its own sessionStorage, cookies and
    // connection pool (browsers allow 6 HTTP/1.1 connections per host).
    const context = await browser.newContext({
      viewport: c.viewport ?? { width: 1400, height: 1000 },
      colorScheme: c.colorScheme ?? "light",
    });
    const page = await context.newPage();
    const problems = [];
    page.on("console", (message) => {
      if (message.type() === "error") problems.push(`console: ${message.text()}`);
    });
    page.on("pageerror", (error) => problems.push(`uncaught: ${error.message}`));
    pages.push({ page, context, problems });
    if (c.url) await page.goto(c.url);
    return pages.length - 1;
  },
  async goto(c) {
    const response = await pageOf(c).page.goto(c.url);
    return response ? response.status() : null;
  },
  async reload(c) {
    await pageOf(c).page.reload();
    return null;
  },
  async click(c) {
    await pageOf(c).page.locator(c.selector).first().click({ timeout: c.timeout ?? 10000, force: c.force ?? false });
    return null;
  },
  async fill(c) {
    await pageOf(c).page.locator(c.selector).first().fill(c.value, { timeout: c.timeout ?? 10000 });
    return null;
  },
  async select(c) {
    await pageOf(c).page.locator(c.selector).first().selectOption(c.value, { timeout: c.timeout ?? 10000 });
    return null;
  },
  async press(c) {
    await pageOf(c).page.locator(c.selector).first().press(c.key, { timeout: c.timeout ?? 10000 });
    return null;
  },
  /** Waits until the first match is visible. */
  async waitFor(c) {
    await pageOf(c).page.locator(c.selector).first().waitFor({ state: c.state ?? "visible", timeout: c.timeout ?? 10000 });
    return null;
  },
  /** Waits until the first match's text contains `text`; returns the whole text. */
  async waitText(c) {
    const locator = pageOf(c).page.locator(c.selector).first();
    return until(
      async () => {
        const text = await locator.innerText({ timeout: 1000 });
        return text.includes(c.text) ? text : undefined;
      },
      c.timeout ?? 10000,
      `"${c.text}" in ${c.selector}`,
    );
  },
  /** Waits until `selector` matches exactly `count` elements. */
  async waitCount(c) {
    const locator = pageOf(c).page.locator(c.selector);
    return until(
      async () => ((await locator.count()) === c.count ? c.count : undefined),
      c.timeout ?? 10000,
      `${c.count} of ${c.selector}`,
    );
  },
  async text(c) {
    return pageOf(c).page.locator(c.selector).first().innerText({ timeout: c.timeout ?? 10000 });
  },
  async texts(c) {
    return pageOf(c).page.locator(c.selector).allInnerTexts();
  },
  async count(c) {
    return pageOf(c).page.locator(c.selector).count();
  },
  async attribute(c) {
    return pageOf(c).page.locator(c.selector).first().getAttribute(c.name, { timeout: c.timeout ?? 10000 });
  },
  async enabled(c) {
    return pageOf(c).page.locator(c.selector).first().isEnabled({ timeout: c.timeout ?? 10000 });
  },
  /** Runs `expression` (a function's source) in the page with `arg`; returns its JSON result. */
  async evaluate(c) {
    // eslint-disable-next-line no-new-func
    const fn = new Function(`return (${c.expression})`)();
    return pageOf(c).page.evaluate(fn, c.arg ?? null);
  },
  /** Fails every later request for a URL matching `pattern` (a glob), as a server without the file. */
  async block(c) {
    await pageOf(c).page.route(c.pattern, (route) => route.abort());
    return null;
  },
  async screenshot(c) {
    await pageOf(c).page.screenshot({ path: c.path, fullPage: c.fullPage ?? true });
    return c.path;
  },
  async problems(c) {
    return pageOf(c).problems.slice();
  },
  async close(c) {
    await pageOf(c).context.close();
    return null;
  },
};

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let answer;
  try {
    const command = JSON.parse(line);
    const op = ops[command.op];
    if (!op) throw new Error(`unknown op ${command.op}`);
    answer = { ok: true, value: (await op(command)) ?? null };
  } catch (error) {
    answer = { ok: false, error: String(error?.message ?? error) };
  }
  process.stdout.write(`${JSON.stringify(answer)}\n`);
}
await browser.close();
