import assert from "node:assert/strict";
import { test } from "node:test";

import {
  appliedVersions,
  checkJson,
  coverage,
  diffCounts,
  doc,
  Draft,
  lineDiff,
  MAX_CONFIG_BYTES,
  parseScope,
  position,
  printJson,
} from "../src/config-logic";

/** The problem `checkJson` finds, as "line:column message". */
function problem(text: string): string {
  const check = checkJson(text);
  assert.equal(check.ok, false, `expected ${JSON.stringify(text)} to be refused`);
  return check.ok ? "" : `${check.line}:${check.column} ${check.message}`;
}

test("scopes: global, group:NAME, node:ID-or-NAME; anything else is refused in words", () => {
  assert.deepEqual(parseScope(" global "), { scope: { kind: "global" } });
  assert.deepEqual(parseScope("group:web-1"), { scope: { kind: "group", name: "web-1" } });
  assert.deepEqual(parseScope("node:n7"), { scope: { kind: "node", node: "n7" } });
  assert.deepEqual(parseScope("node:node-007"), { scope: { kind: "node", node: "node-007" } });
  for (const [given, says] of [
    ["", "Give a scope"],
    ["Global", "not a scope"],
    ["groups:web", "not a scope"],
    ["group:", "needs a group name"],
    ["node:", "needs a node id or name"],
    ["group:a b", "only letters, digits"],
    [`group:${"x".repeat(64)}`, "at most 63"],
  ] as const) {
    const parsed = parseScope(given);
    assert.ok("problem" in parsed && parsed.problem.includes(says), `${given}: ${JSON.stringify(parsed)}`);
  }
});

test("a valid object passes, with its value and compact size", () => {
  const check = checkJson('{\n  "workload": {"delay_ms": 5, "error_rate": 0.5e-1},\n  "tags": ["a", "\\u00e9"], "on": true, "off": null\n}\n');
  assert.ok(check.ok);
  assert.deepEqual(check.value, { workload: { delay_ms: 5, error_rate: 0.05 }, tags: ["a", "é"], on: true, off: null });
  assert.equal(check.bytes, new TextEncoder().encode(JSON.stringify(check.value)).length);
  assert.ok(checkJson("{}").ok);
});

test("syntax errors are placed at their line and column and said in words", () => {
  assert.equal(problem('{\n  "a": 1\n  "b": 2\n}'), "3:3 expected ',' between two members, or the end of the object or array");
  assert.equal(problem('{\n  "a": 1,\n}'), "3:1 expected a key in double quotes (or a comma too many before '}')");
  assert.equal(problem("{\n  a: 1\n}"), "2:3 this is not JSON (strings and keys take double quotes)");
  assert.equal(problem("{'a': 1}"), "1:2 this is not JSON (strings and keys take double quotes)");
  assert.equal(problem('{"a": tru}'), "1:7 this is not JSON (strings and keys take double quotes)");
  assert.equal(problem('{"a": "open\n}'), "1:7 a string is not closed (a '\"' is missing)");
  assert.equal(problem('{"a": [1, ]}'), "1:11 expected a value (or a comma too many before ']')");
  assert.equal(problem('{\n  "a": 1'), "2:9 expected '}' to close the object");
  assert.equal(problem('{"a": 1 // a note\n}'), "1:9 comments are not JSON");
  assert.equal(problem('{"a": 1, "a": 2}'), '1:10 the key "a" appears twice in this object');
  assert.ok(checkJson('{"a": {"b": 1}, "b": 2, "c": {"b": 3}}').ok, "the same key in different objects");
  assert.equal(problem("   "), "1:1 the text is empty: a configuration is a JSON object, e.g. {}");
});

test("the top level must be an object", () => {
  assert.equal(problem("[1, 2]"), "1:1 a configuration is a JSON object ({…}), not an array");
  assert.equal(problem('\n  "text"'), "2:3 a configuration is a JSON object ({…}), not a string");
  assert.equal(problem("null"), "1:1 a configuration is a JSON object ({…}), not null");
  assert.equal(problem("5"), "1:1 a configuration is a JSON object ({…}), not a number");
});

test("a configuration over 64 KiB is refused before it is sent", () => {
  const big = JSON.stringify({ blob: "x".repeat(MAX_CONFIG_BYTES) });
  assert.match(problem(big), /at most 64 KiB/);
  assert.ok(checkJson(JSON.stringify({ blob: "x".repeat(MAX_CONFIG_BYTES - 20) })).ok);
});

test("positions count lines from 1 and columns from 1", () => {
  assert.deepEqual(position("ab\ncd", 0), { line: 1, column: 1 });
  assert.deepEqual(position("ab\ncd", 3), { line: 2, column: 1 });
  assert.deepEqual(position("ab\ncd", 5), { line: 2, column: 3 });
});

test("documents print with sorted keys, so equal data prints equal", () => {
  const a = printJson({ b: 1, a: { d: [2, { z: 1, y: 2 }], c: null } });
  const b = printJson({ a: { c: null, d: [2, { y: 2, z: 1 }] }, b: 1 });
  assert.equal(a, b);
  assert.equal(a, '{\n  "a": {\n    "c": null,\n    "d": [\n      2,\n      {\n        "y": 2,\n        "z": 1\n      }\n    ]\n  },\n  "b": 1\n}\n');
  assert.equal(printJson({}), "{}\n");
});

test("line diffs number both sides and fold long unchanged runs", () => {
  const keys = (n: number, changed: number) => {
    const o: Record<string, number> = {};
    for (let i = 0; i < n; i++) o[`k${String(i).padStart(2, "0")}`] = i === changed ? 100 : i;
    return printJson(o);
  };
  const rows = lineDiff(keys(20, -1), keys(20, 10), 2);
  assert.deepEqual(diffCounts(rows), { added: 1, removed: 1 });
  const removed = rows.find((r) => r.kind === "removed");
  const added = rows.find((r) => r.kind === "added");
  assert.deepEqual(removed, { kind: "removed", text: '  "k10": 10,', oldLine: 12 });
  assert.deepEqual(added, { kind: "added", text: '  "k10": 100,', newLine: 12 });
  assert.deepEqual(
    rows.map((r) => r.kind),
    ["skipped", "same", "same", "removed", "added", "same", "same", "skipped"],
  );
  assert.equal(rows[0]?.count, 9, "lines 1 to 9 folded");
  assert.equal(rows[7]?.count, 8, "lines 15 to 22 folded");
  assert.deepEqual(lineDiff("{}\n", "{}\n"), [{ kind: "same", text: "{}", oldLine: 1, newLine: 1 }]);
});

const node = (id: string, group: string, version: number) => ({ id, name: `node-${id}`, group, configVersion: BigInt(version) });

test("applied versions: newest first, each with its nodes by name", () => {
  const nodes = [node("3", "a", 5), node("1", "a", 7), node("10", "b", 5), node("2", "b", 0)];
  assert.deepEqual(appliedVersions(nodes), [
    { version: 7n, names: ["node-1"] },
    { version: 5n, names: ["node-3", "node-10"] },
    { version: 0n, names: ["node-2"] },
  ]);
  assert.deepEqual(appliedVersions([]), []);
});

test("coverage counts the nodes a scope applies to that run its version or later", () => {
  const nodes = [node("1", "a", 7), node("2", "a", 4), node("3", "b", 9), node("4", "b", 5)];
  assert.deepEqual(coverage(nodes, "global", 5n), { covered: 4, current: 3, behind: ["node-2"] });
  assert.deepEqual(coverage(nodes, "group:b", 6n), { covered: 2, current: 1, behind: ["node-4"] });
  assert.deepEqual(coverage(nodes, "node:2", 4n), { covered: 1, current: 1, behind: [] });
  assert.deepEqual(coverage(nodes, "node:node-4", 6n), { covered: 1, current: 0, behind: ["node-4"] });
  assert.deepEqual(coverage(nodes, "group:none", 1n), { covered: 0, current: 0, behind: [] });
});

test("a draft follows new versions while untouched, and keeps an edit against them", () => {
  const v = (version: number, data: Record<string, number>) => doc("global", BigInt(version), data, undefined, "admin");
  const draft = new Draft(v(3, { a: 1 }));
  assert.equal(draft.expected, 3n);
  assert.ok(!draft.dirty);
  assert.equal(draft.seen(v(4, { a: 2 })), "adopted", "untouched: follows");
  assert.equal(draft.text, printJson({ a: 2 }));
  assert.equal(draft.seen(v(4, { a: 2 })), "old");

  draft.text = printJson({ a: 3 });
  assert.ok(draft.dirty);
  assert.equal(draft.seen(v(6, { a: 4 })), "newer", "edited: kept, the newer one remembered");
  assert.equal(draft.text, printJson({ a: 3 }));
  assert.equal(draft.expected, 4n, "a save still expects what the edit is based on (and will conflict)");
  assert.equal(draft.seen(v(5, { a: 9 })), "old", "not past the newest known");

  // Retry onto the new version: the edit stays, the save expects 6.
  draft.rebase();
  assert.equal(draft.expected, 6n);
  assert.equal(draft.newer, null);
  assert.ok(draft.dirty);

  // Take theirs: the edit is dropped.
  assert.equal(draft.seen(v(8, { a: 5 })), "newer");
  draft.takeTheirs();
  assert.equal(draft.expected, 8n);
  assert.equal(draft.text, printJson({ a: 5 }));
  assert.ok(!draft.dirty);
});

test("a draft's own save, told by the watch before the answer, is not a conflict", () => {
  const draft = new Draft(doc("global", 3n, { a: 1 }, undefined, "admin"));
  draft.text = printJson({ a: 2 });
  assert.equal(draft.seen(doc("global", 4n, { a: 2 }, undefined, "admin")), "adopted");
  assert.equal(draft.newer, null);
  draft.saved(doc("global", 4n, { a: 2 }, undefined, "admin"));
  assert.equal(draft.expected, 4n);
  assert.ok(!draft.dirty);
});
