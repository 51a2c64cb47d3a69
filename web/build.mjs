// Builds the dashboard with esbuild: src/main.ts (and the CSS it imports)
// into one folder of static files, named by their content's hash, and an
// index.html naming them. The control plane embeds dist/ and serves it at /.
// The code of what the page does not show at start (the sections loaded
// with import(), uPlot) goes into chunks of its own, fetched when needed;
// the budget counts every chunk.
//
//   node build.mjs               build into dist/ (what is committed)
//   node build.mjs --out DIR     build into DIR instead (the test that keeps
//                                dist/ fresh compares the two)
//   node build.mjs --test        run the unit tests (test/*.test.ts) with
//                                node's test runner
//   node build.mjs --serve [--port N]
//                                serve the sources on 127.0.0.1:5173 (or N;
//                                0 picks a free port) for development,
//                                calling the control plane at FARM_URL
//                                (default http://127.0.0.1:50051), which
//                                must be started with
//                                --cors-origin http://127.0.0.1:5173
//
// Run through npm: `npm run build`, `npm run check`, `npm run dev`; they
// generate the TypeScript messages from ../proto first (`buf generate`).

import { spawnSync } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

import * as esbuild from "esbuild";

const here = path.dirname(fileURLToPath(import.meta.url));
/** Most gzipped JavaScript the page may load, in bytes. */
const BUDGET = 200 * 1024;

const args = process.argv.slice(2);
const flag = (name) => args.includes(name);
const option = (name) => {
  const at = args.indexOf(name);
  return at >= 0 ? args[at + 1] : undefined;
};

function options(api) {
  return {
    entryPoints: [path.join(here, "src/main.ts")],
    bundle: true,
    format: "esm",
    splitting: true,
    chunkNames: "[name]-[hash]",
    target: ["chrome110", "firefox115", "safari16"],
    minify: true,
    sourcemap: false,
    legalComments: "eof",
    charset: "utf8",
    define: { FARM_API: JSON.stringify(api) },
    logLevel: "warning",
  };
}

function page(script, style, preload = []) {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>farm</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="${style}">
${preload.map((chunk) => `<link rel="modulepreload" href="${chunk}">\n`).join("")}<script type="module" src="${script}"></script>
</head>
<body>
<div id="app"><p style="padding:2rem">Loading the farm's dashboard…</p></div>
<noscript><p style="padding:2rem">The dashboard needs JavaScript. Everything it shows is also available through gRPC: grpcurl -plaintext HOST:PORT list</p></noscript>
</body>
</html>
`;
}

async function build(out) {
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  const result = await esbuild.build({
    ...options(""),
    outdir: out,
    entryNames: "[name]-[hash]",
    metafile: true,
  });
  const outputs = Object.entries(result.metafile.outputs);
  const script = outputs.find(([file, output]) => file.endsWith(".js") && output.entryPoint !== undefined);
  const styles = outputs.filter(([file]) => file.endsWith(".css"));
  if (!script || styles.length !== 1) {
    throw new Error(`esbuild wrote ${outputs.map(([file]) => file).join(", ")}: expected an entry .js and one .css`);
  }
  const entry = path.basename(script[0]);
  const style = path.basename(styles[0][0]);
  // The chunks the entry imports statically are fetched beside it, not
  // after it has been read.
  const preload = [];
  const visit = (output) => {
    for (const imported of output.imports) {
      const chunk = `/${path.basename(imported.path)}`;
      if (imported.kind !== "import-statement" || preload.includes(chunk)) continue;
      preload.push(chunk);
      visit(result.metafile.outputs[imported.path]);
    }
  };
  visit(script[1]);
  writeFileSync(path.join(out, "index.html"), page(`/${entry}`, `/${style}`, preload));
  let scripts = 0;
  for (const file of readdirSync(out).sort()) {
    const bytes = readFileSync(path.join(out, file));
    const gzipped = gzipSync(bytes, { level: 9 }).length;
    if (file.endsWith(".js")) scripts += gzipped;
    console.log(`${file.padEnd(28)} ${String(bytes.length).padStart(8)} bytes, ${String(gzipped).padStart(7)} gzipped`);
  }
  console.log(`JavaScript: ${(scripts / 1024).toFixed(1)} KiB gzipped (budget ${BUDGET / 1024} KiB)`);
  if (scripts > BUDGET) {
    console.error(`the dashboard's JavaScript is over its budget: ${scripts} > ${BUDGET} bytes gzipped`);
    process.exit(1);
  }
}

async function test() {
  const out = path.join(here, ".test-build");
  rmSync(out, { recursive: true, force: true });
  const tests = readdirSync(path.join(here, "test")).filter((f) => f.endsWith(".test.ts"));
  await esbuild.build({
    entryPoints: tests.map((f) => path.join(here, "test", f)),
    bundle: true,
    platform: "node",
    format: "esm",
    outdir: out,
    outExtension: { ".js": ".mjs" },
    packages: "external",
    logLevel: "warning",
  });
  const files = readdirSync(out).map((f) => path.join(out, f));
  const run = spawnSync(process.execPath, ["--test", ...files], { stdio: "inherit" });
  process.exit(run.status ?? 1);
}

async function serve() {
  const api = process.env.FARM_URL ?? "http://127.0.0.1:50051";
  const out = path.join(here, ".dev");
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  writeFileSync(path.join(out, "index.html"), page("/main.js", "/main.css"));
  const context = await esbuild.context({ ...options(api), outdir: out, minify: false, sourcemap: true });
  await context.watch();
  const wanted = Number(option("--port") ?? 5173);
  const { hosts, port } = await context.serve({ servedir: out, host: "127.0.0.1", port: wanted });
  console.log(`dashboard on http://${hosts[0]}:${port}/, calling ${api}`);
  console.log(`start the control plane with --cors-origin http://${hosts[0]}:${port}`);
}

if (flag("--test")) await test();
else if (flag("--serve")) await serve();
else await build(path.resolve(option("--out") ?? path.join(here, "dist")));
