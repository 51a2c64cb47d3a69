// The configuration editor's logic, pure of the DOM and of I/O: which
// scopes are well formed, checking JSON text with the line and column of
// its first error, printing documents the same way every time (so that
// line diffs show real changes only), line diffs, which nodes have applied
// which version, and the bookkeeping of an edit against the versions the
// control plane moves through meanwhile. Tested in test/config.test.ts.

import { diffLines } from "diff";
import { printParseErrorCode, visit } from "jsonc-parser";

/** A JSON value as `google.protobuf.Struct` carries it. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

/** Largest configuration of one scope, as compact JSON (the control plane's limit). */
export const MAX_CONFIG_BYTES = 64 * 1024;
/** Longest group or node name (the control plane's limit). */
const MAX_NAME_LEN = 63;
const NAME = /^[A-Za-z0-9._-]+$/;

// ---------------------------------------------------------------- scopes

export type Scope = { kind: "global" } | { kind: "group"; name: string } | { kind: "node"; node: string };

/**
 * Reads a scope as the control plane takes it: `global`, `group:NAME` or
 * `node:ID-or-NAME`; names are 1 to 63 of `[A-Za-z0-9._-]`. The problem
 * in words otherwise.
 */
export function parseScope(text: string): { scope: Scope } | { problem: string } {
  const given = text.trim();
  if (given === "") return { problem: "Give a scope: global, group:NAME or node:ID-or-NAME." };
  if (given === "global") return { scope: { kind: "global" } };
  const colon = given.indexOf(":");
  const kind = colon < 0 ? given : given.slice(0, colon);
  const name = colon < 0 ? "" : given.slice(colon + 1);
  if (kind !== "group" && kind !== "node") {
    return { problem: `"${given}" is not a scope: use global, group:NAME or node:ID-or-NAME.` };
  }
  const what = kind === "group" ? "a group name" : "a node id or name";
  if (name === "") return { problem: `${kind}: needs ${what} after the colon, e.g. ${kind === "group" ? "group:default" : "node:node-001"}.` };
  if (name.length > MAX_NAME_LEN) return { problem: `${what[0]?.toUpperCase()}${what.slice(2)} is at most ${MAX_NAME_LEN} characters long.` };
  if (!NAME.test(name)) return { problem: `"${name}" may hold only letters, digits, '.', '_' and '-'.` };
  return { scope: kind === "group" ? { kind, name } : { kind, node: name } };
}

export function scopeText(scope: Scope): string {
  switch (scope.kind) {
    case "global":
      return "global";
    case "group":
      return `group:${scope.name}`;
    case "node":
      return `node:${scope.node}`;
  }
}

// ---------------------------------------------------------- JSON checking

export interface Position {
  /** From 1. */
  line: number;
  /** From 1, in characters (UTF-16 units) of that line. */
  column: number;
}

/** The line and column of `offset` in `text`. */
export function position(text: string, offset: number): Position {
  let line = 1;
  let start = 0;
  const end = Math.min(offset, text.length);
  for (let i = 0; i < end; i++) {
    if (text.charCodeAt(i) === 10) {
      line += 1;
      start = i + 1;
    }
  }
  return { line, column: end - start + 1 };
}

export type JsonCheck =
  | { ok: true; value: JsonObject; bytes: number }
  | { ok: false; message: string; offset: number; line: number; column: number };

/** What each of jsonc-parser's error codes means, for a person. */
const PROBLEMS: Record<string, string> = {
  InvalidSymbol: "this is not JSON (strings and keys take double quotes)",
  InvalidNumberFormat: "a malformed number (no leading zeros; digits after '.' and after 'e')",
  PropertyNameExpected: "expected a key in double quotes (or a comma too many before '}')",
  ValueExpected: "expected a value (or a comma too many before ']')",
  ColonExpected: "expected ':' after the key",
  CommaExpected: "expected ',' between two members, or the end of the object or array",
  CloseBraceExpected: "expected '}' to close the object",
  CloseBracketExpected: "expected ']' to close the array",
  EndOfFileExpected: "unexpected text after the end of the document",
  InvalidCommentToken: "comments are not JSON",
  UnexpectedEndOfComment: "comments are not JSON",
  UnexpectedEndOfString: "a string is not closed (a '\"' is missing)",
  UnexpectedEndOfNumber: "a number is cut short",
  InvalidUnicode: "a malformed \\u escape in a string",
  InvalidEscapeCharacter: "an unknown escape in a string",
  InvalidCharacter: "a control character in a string (write \\t or \\n)",
};

/**
 * The first problem of `text` as JSON, with its offset, or null: strict
 * JSON as jsonc-parser (the parser VS Code uses, made to locate errors)
 * reads it with comments and trailing commas refused, and also a key that
 * appears twice in one object (JSON.parse keeps the last silently; a
 * configuration has one value per key).
 */
function firstProblem(text: string): { message: string; offset: number } | null {
  let first: { message: string; offset: number } | null = null;
  const keys: Set<string>[] = [];
  visit(
    text,
    {
      onObjectBegin: () => {
        keys.push(new Set());
      },
      onObjectEnd: () => {
        keys.pop();
      },
      onObjectProperty: (key, offset) => {
        const seen = keys[keys.length - 1];
        if (seen?.has(key)) first ??= { message: `the key "${key}" appears twice in this object`, offset };
        seen?.add(key);
      },
      onError: (code, offset) => {
        first ??= { message: PROBLEMS[printParseErrorCode(code)] ?? "this is not JSON", offset };
      },
    },
    { disallowComments: true, allowTrailingComma: false, allowEmptyContent: false },
  );
  return first;
}

/**
 * Checks an edit: well-formed JSON, an object at the top (a
 * configuration is one), at most 64 KiB as compact JSON.
 */
export function checkJson(text: string): JsonCheck {
  const fail = (message: string, offset: number): JsonCheck => ({ ok: false, message, offset, ...position(text, offset) });
  if (text.trim() === "") return fail("the text is empty: a configuration is a JSON object, e.g. {}", 0);
  const problem = firstProblem(text);
  if (problem) return fail(problem.message, problem.offset);
  const value = JSON.parse(text) as Json;
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    const kind = value === null ? "null" : Array.isArray(value) ? "an array" : `a ${typeof value}`;
    const start = text.length - text.trimStart().length;
    return fail(`a configuration is a JSON object ({…}), not ${kind}`, start);
  }
  const bytes = new TextEncoder().encode(JSON.stringify(value)).length;
  if (bytes > MAX_CONFIG_BYTES) {
    return fail(`${Math.ceil(bytes / 1024)} KiB as compact JSON: a configuration may take at most ${MAX_CONFIG_BYTES / 1024} KiB`, 0);
  }
  return { ok: true, value, bytes };
}

// ------------------------------------------------------------- printing

function sorted(value: Json): Json {
  if (Array.isArray(value)) return value.map(sorted);
  if (value !== null && typeof value === "object") {
    const out: JsonObject = {};
    for (const key of Object.keys(value).sort()) {
      Object.defineProperty(out, key, { value: sorted(value[key] as Json), enumerable: true, writable: true, configurable: true });
    }
    return out;
  }
  return value;
}

/**
 * A document as the page prints it: keys sorted, two spaces of indent, a
 * final newline. The control plane does not keep key order, so this is
 * what makes two versions' line diff show only what changed.
 */
export function printJson(value: Json): string {
  return `${JSON.stringify(sorted(value), null, 2)}\n`;
}

/** A value on one line, shortened past `max` characters. */
export function brief(value: Json | undefined, max = 80): string {
  if (value === undefined) return "";
  const s = JSON.stringify(value);
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

// ---------------------------------------------------------------- diffs

export interface DiffRow {
  kind: "same" | "added" | "removed" | "skipped";
  /** The line's text (without its newline); for `skipped`, empty. */
  text: string;
  /** Its number in the old text (unset when added or skipped). */
  oldLine?: number;
  /** Its number in the new text (unset when removed or skipped). */
  newLine?: number;
  /** For `skipped`: how many unchanged lines are folded. */
  count?: number;
}

/**
 * The line diff of `before` and `after`, with `context` unchanged lines
 * kept around each change and longer unchanged runs folded into one
 * `skipped` row.
 */
export function lineDiff(before: string, after: string, context = 3): DiffRow[] {
  const rows: DiffRow[] = [];
  let oldLine = 1;
  let newLine = 1;
  for (const part of diffLines(before, after)) {
    const lines = part.value.split("\n");
    if (lines[lines.length - 1] === "") lines.pop();
    for (const line of lines) {
      if (part.added) rows.push({ kind: "added", text: line, newLine: newLine++ });
      else if (part.removed) rows.push({ kind: "removed", text: line, oldLine: oldLine++ });
      else rows.push({ kind: "same", text: line, oldLine: oldLine++, newLine: newLine++ });
    }
  }
  // Fold unchanged runs far from any change.
  const near = rows.map(() => false);
  rows.forEach((row, i) => {
    if (row.kind === "same") return;
    for (let j = Math.max(0, i - context); j <= Math.min(rows.length - 1, i + context); j++) near[j] = true;
  });
  const out: DiffRow[] = [];
  for (let i = 0; i < rows.length; ) {
    if (near[i] || (rows[i] as DiffRow).kind !== "same") {
      out.push(rows[i] as DiffRow);
      i += 1;
      continue;
    }
    let j = i;
    while (j < rows.length && !near[j]) j += 1;
    // Folding a single line saves nothing.
    if (j - i === 1) out.push(rows[i] as DiffRow);
    else out.push({ kind: "skipped", text: "", count: j - i });
    i = j;
  }
  return out;
}

/** Lines added and removed in a diff. */
export function diffCounts(rows: DiffRow[]): { added: number; removed: number } {
  let added = 0;
  let removed = 0;
  for (const row of rows) {
    if (row.kind === "added") added += 1;
    if (row.kind === "removed") removed += 1;
  }
  return { added, removed };
}

// --------------------------------------------------- versions on the nodes

/** What the page needs of a node to tell which version it runs. */
export interface NodeVersion {
  id: string;
  name: string;
  group: string;
  configVersion: bigint;
}

export interface AppliedVersion {
  version: bigint;
  /** Names, sorted. */
  names: string[];
}

/** The versions the nodes have applied, newest first, each with its nodes. */
export function appliedVersions(nodes: Iterable<NodeVersion>): AppliedVersion[] {
  const by = new Map<bigint, string[]>();
  for (const node of nodes) {
    const names = by.get(node.configVersion) ?? [];
    names.push(node.name || node.id);
    by.set(node.configVersion, names);
  }
  return [...by.entries()]
    .sort(([a], [b]) => (a > b ? -1 : a < b ? 1 : 0))
    .map(([version, names]) => ({ version, names: names.sort((a, b) => a.localeCompare(b, "en", { numeric: true })) }));
}

/** Whether `scope` (as the control plane answers it: nodes by id) applies to `node`. */
export function covers(scope: string, node: NodeVersion): boolean {
  if (scope === "global") return true;
  if (scope.startsWith("group:")) return node.group === scope.slice("group:".length);
  if (scope.startsWith("node:")) {
    const given = scope.slice("node:".length);
    return node.id === given || node.name === given;
  }
  return false;
}

export interface Coverage {
  /** Nodes the scope applies to. */
  covered: number;
  /** Of those, the nodes running a configuration that includes `version`. */
  current: number;
  /** Names of the others, sorted. */
  behind: string[];
}

/**
 * How far `version` of `scope` has reached. Versions come from one
 * counter for every scope and a node's effective version is the highest
 * of its layers, so a node whose applied version is at least `version`
 * runs a configuration that includes it.
 */
export function coverage(nodes: Iterable<NodeVersion>, scope: string, version: bigint): Coverage {
  let covered = 0;
  let current = 0;
  const behind: string[] = [];
  for (const node of nodes) {
    if (!covers(scope, node)) continue;
    covered += 1;
    if (node.configVersion >= version) current += 1;
    else behind.push(node.name || node.id);
  }
  behind.sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
  return { covered, current, behind };
}

// ------------------------------------------------------------ the edit

/** One version of a scope as the page holds it. */
export interface Doc {
  scope: string;
  version: bigint;
  data: JsonObject;
  /** `printJson(data)`. */
  text: string;
  /** When it was written (unset for version 0). */
  at?: Date;
  /** Who wrote it (a role). */
  role: string;
}

export function doc(scope: string, version: bigint, data: JsonObject | undefined, at: Date | undefined, role: string): Doc {
  const value = data ?? {};
  return { scope, version, data: value, text: printJson(value), at, role };
}

/**
 * An edit of one scope against the versions it moves through: the version
 * it is based on (what a save expects, compare-and-set), the text being
 * edited, and the newest version known to be past the base, if any.
 */
export class Draft {
  base: Doc;
  text: string;
  /** A version written since `base`, known from the watch or a lost save. */
  newer: Doc | null = null;

  constructor(base: Doc) {
    this.base = base;
    this.text = base.text;
  }

  /** Whether the text differs from the base version's. */
  get dirty(): boolean {
    return this.text !== this.base.text;
  }

  /** The version a save expects the scope to be at. */
  get expected(): bigint {
    return this.base.version;
  }

  /** Starts over from `fresh` (a new load, or the user took theirs). */
  reset(fresh: Doc): void {
    this.base = fresh;
    this.text = fresh.text;
    this.newer = null;
  }

  /**
   * A version of the scope was seen (the watch, or a refused save's
   * fetch). An untouched draft follows it; an edited one keeps its text
   * and remembers it: `"adopted"`, `"newer"`, or `"old"` when it is not
   * past what is known.
   */
  seen(version: Doc): "adopted" | "newer" | "old" {
    const known = this.newer?.version ?? this.base.version;
    if (version.version <= known) return "old";
    // Untouched, or edited into exactly that version (as the page's own
    // save is, when the watch tells it before the save's answer does).
    if ((!this.dirty && this.newer === null) || version.text === this.text) {
      this.reset(version);
      return "adopted";
    }
    this.newer = version;
    return "newer";
  }

  /** Drops the edit for the newer version. */
  takeTheirs(): void {
    if (this.newer) this.reset(this.newer);
  }

  /** Keeps the edit, now based on the newer version: the next save expects it. */
  rebase(): void {
    if (!this.newer) return;
    this.base = this.newer;
    this.newer = null;
  }

  /** A save of `data` became `version`. */
  saved(version: Doc): void {
    this.reset(version);
  }
}
