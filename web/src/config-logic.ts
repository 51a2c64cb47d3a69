// The configuration editor's logic, pure of the DOM and of I/O: which
// scopes are well formed, checking JSON text with the line and column of
// its first error, printing documents the same way every time (so that
// line diffs show real changes only), line diffs, which nodes have applied
// which version, and the bookkeeping of an edit against the versions the
// control plane moves through meanwhile. Tested in test/config.test.ts.

import { diffLines } from "diff";

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

class JsonProblem extends Error {
  constructor(
    message: string,
    readonly offset: number,
  ) {
    super(message);
  }
}

/** What is at `offset`, for messages: `'x'`, or "the end". */
function found(text: string, offset: number): string {
  if (offset >= text.length) return "the end of the text";
  const c = text[offset] as string;
  if (c === "\n") return "the end of the line";
  return `'${c}'`;
}

/**
 * A strict JSON reader that says where the first problem is: a person's
 * edit gets "line 3, column 5: expected ',' or '}' after a member", not
 * the engine's offset. It also refuses duplicate keys (JSON.parse keeps
 * the last silently; a configuration has one value per key).
 */
class Reader {
  private at = 0;

  constructor(private readonly text: string) {}

  document(): Json {
    this.space();
    if (this.at >= this.text.length) throw new JsonProblem("the text is empty: a configuration is a JSON object, e.g. {}", 0);
    const value = this.value("the document");
    this.space();
    if (this.at < this.text.length) {
      throw new JsonProblem(`unexpected ${found(this.text, this.at)} after the end of the document`, this.at);
    }
    return value;
  }

  private space(): void {
    while (this.at < this.text.length) {
      const c = this.text[this.at];
      if (c === " " || c === "\t" || c === "\n" || c === "\r") this.at += 1;
      else break;
    }
  }

  private value(what: string): Json {
    const c = this.text[this.at];
    switch (c) {
      case "{":
        return this.object();
      case "[":
        return this.array();
      case '"':
        return this.string();
      case "t":
        return this.word("true", true);
      case "f":
        return this.word("false", false);
      case "n":
        return this.word("null", null);
      default:
        if (c === "-" || (c !== undefined && c >= "0" && c <= "9")) return this.number();
        if (c === "'") throw new JsonProblem("strings take double quotes (\"…\"), not single ones", this.at);
        throw new JsonProblem(`expected a value for ${what}, found ${found(this.text, this.at)}`, this.at);
    }
  }

  private word<T extends Json>(word: string, value: T): T {
    if (this.text.startsWith(word, this.at)) {
      this.at += word.length;
      return value;
    }
    let end = this.at;
    while (end < this.text.length && /[A-Za-z0-9_]/.test(this.text[end] as string)) end += 1;
    const given = this.text.slice(this.at, Math.max(end, this.at + 1));
    throw new JsonProblem(`"${given}" is not a JSON value (strings need double quotes)`, this.at);
  }

  private number(): number {
    const match = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/.exec(this.text.slice(this.at, this.at + 400));
    if (!match || match[0] === "-") throw new JsonProblem("a malformed number", this.at);
    const after = this.text[this.at + match[0].length];
    if (after !== undefined && /[0-9.eE+-]/.test(after)) {
      throw new JsonProblem("a malformed number (no leading zeros; digits after '.' and after 'e')", this.at);
    }
    this.at += match[0].length;
    return Number(match[0]);
  }

  private string(): string {
    const start = this.at;
    this.at += 1;
    let out = "";
    for (;;) {
      const c = this.text[this.at];
      if (c === undefined || c === "\n") throw new JsonProblem("a string is not closed (a '\"' is missing)", start);
      if (c === '"') {
        this.at += 1;
        return out;
      }
      if (c < " ") throw new JsonProblem("a control character in a string (write \\t or \\n)", this.at);
      if (c === "\\") {
        const e = this.text[this.at + 1];
        const simple: Record<string, string> = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };
        if (e !== undefined && e in simple) {
          out += simple[e];
          this.at += 2;
          continue;
        }
        if (e === "u" && /^[0-9a-fA-F]{4}$/.test(this.text.slice(this.at + 2, this.at + 6))) {
          out += String.fromCharCode(parseInt(this.text.slice(this.at + 2, this.at + 6), 16));
          this.at += 6;
          continue;
        }
        throw new JsonProblem("an unknown escape in a string", this.at);
      }
      out += c;
      this.at += 1;
    }
  }

  private array(): Json[] {
    this.at += 1;
    const out: Json[] = [];
    this.space();
    if (this.text[this.at] === "]") {
      this.at += 1;
      return out;
    }
    for (;;) {
      this.space();
      if (this.text[this.at] === "]") throw new JsonProblem("a trailing comma before ']'", this.at);
      out.push(this.value("an array element"));
      this.space();
      const c = this.text[this.at];
      if (c === ",") {
        this.at += 1;
        continue;
      }
      if (c === "]") {
        this.at += 1;
        return out;
      }
      throw new JsonProblem(`expected ',' or ']' after an array element, found ${found(this.text, this.at)}`, this.at);
    }
  }

  private object(): JsonObject {
    this.at += 1;
    const out: JsonObject = {};
    const keys = new Set<string>();
    this.space();
    if (this.text[this.at] === "}") {
      this.at += 1;
      return out;
    }
    for (;;) {
      this.space();
      const c = this.text[this.at];
      if (c === "}") throw new JsonProblem("a trailing comma before '}'", this.at);
      if (c !== '"') {
        throw new JsonProblem(
          c === "'" ? "keys take double quotes (\"…\"), not single ones" : `expected a key in double quotes, found ${found(this.text, this.at)}`,
          this.at,
        );
      }
      const keyAt = this.at;
      const key = this.string();
      if (keys.has(key)) throw new JsonProblem(`the key "${key}" appears twice in this object`, keyAt);
      keys.add(key);
      this.space();
      if (this.text[this.at] !== ":") throw new JsonProblem(`expected ':' after the key "${key}", found ${found(this.text, this.at)}`, this.at);
      this.at += 1;
      this.space();
      Object.defineProperty(out, key, { value: this.value(`"${key}"`), enumerable: true, writable: true, configurable: true });
      this.space();
      const next = this.text[this.at];
      if (next === ",") {
        this.at += 1;
        continue;
      }
      if (next === "}") {
        this.at += 1;
        return out;
      }
      throw new JsonProblem(`expected ',' or '}' after the value of "${key}", found ${found(this.text, this.at)}`, this.at);
    }
  }
}

/**
 * Checks an edit: well-formed JSON, an object at the top (a
 * configuration is one), at most 64 KiB as compact JSON.
 */
export function checkJson(text: string): JsonCheck {
  const fail = (message: string, offset: number): JsonCheck => ({ ok: false, message, offset, ...position(text, offset) });
  let value: Json;
  try {
    value = new Reader(text).document();
  } catch (error) {
    if (error instanceof JsonProblem) return fail(error.message, error.offset);
    throw error;
  }
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
