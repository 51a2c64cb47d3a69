// Configuration (#config/SCOPE): one scope's current document and version
// (`Config.GetConfig`), edited as JSON checked as it is typed and saved
// with compare-and-set (`Config.PutConfig` expecting the version shown).
// A save that lost the race fetches the current version and shows it as a
// line diff against the edit, to take theirs or put the edit onto it.
// New versions arrive live (`Config.WatchConfig`). Beside: which version
// each node has applied (the membership feed), the scope's history with
// diffs between any two versions (`Config.Diff`) and rollback, and a
// node's effective configuration (`Config.GetEffectiveConfig`).

import { toJson } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { timestampDate, ValueSchema, type Value } from "@bufbuild/protobuf/wkt";

import { ChangeKind, Config, type ConfigEvent, type ConfigVersion } from "../../gen/farm/v1/config_pb";
import { client, cancelled, codeOf, describe } from "../api";
import { Backoff, sleep } from "../backoff";
import {
  appliedVersions,
  brief,
  checkJson,
  coverage,
  type DiffRow,
  diffCounts,
  doc,
  type Doc,
  Draft,
  type Json,
  type JsonCheck,
  lineDiff,
  parseScope,
  printJson,
} from "../config-logic";
import { h, replace, table, text } from "../dom";
import * as format from "../format";
import { confirmAction } from "./actions";
import { frameScheduler, type View, type ViewContext } from "./view";

/** This section's service (its client loads with the section). */
const configApi = client(Config);

/** Versions of the history shown at a time. */
const HISTORY_PAGE = 50;

const CHANGE_WORDS: Record<ChangeKind, string> = {
  [ChangeKind.UNSPECIFIED]: "changed",
  [ChangeKind.ADDED]: "added",
  [ChangeKind.REMOVED]: "removed",
  [ChangeKind.CHANGED]: "changed",
};

function when(at: Date | undefined): string {
  return at ? format.dateTime(at) : "–";
}

/** "version 7, written 2026-… by admin", or "never written". */
function describeDoc(d: Doc): string {
  if (d.version === 0n) return "never written (version 0, an empty object)";
  return `version ${d.version}, written ${when(d.at)}${d.role ? ` by ${d.role}` : ""}`;
}

function fromEvent(event: ConfigEvent): Doc {
  return doc(event.scope, event.version, event.data, event.createdAt ? timestampDate(event.createdAt) : undefined, event.role);
}

function valueJson(value: Value | undefined): Json | undefined {
  return value === undefined ? undefined : (toJson(ValueSchema, value) as Json);
}

/** A line diff as a table: old and new line numbers, a sign, the line. */
export function diffTable(rows: DiffRow[], label: string): HTMLElement {
  const counts = diffCounts(rows);
  if (counts.added === 0 && counts.removed === 0) {
    return h("p", { class: "muted same-docs" }, "The two documents are the same.");
  }
  const body = h("tbody");
  for (const row of rows) {
    if (row.kind === "skipped") {
      body.append(h("tr", { class: "diff-skipped" }, h("td", { colspan: 4 }, `⋯ ${format.plural(row.count ?? 0, "unchanged line")}`)));
      continue;
    }
    const sign = row.kind === "added" ? "+" : row.kind === "removed" ? "−" : " ";
    body.append(
      h(
        "tr",
        { class: `diff-${row.kind}` },
        h("td", { class: "ln" }, row.oldLine ?? ""),
        h("td", { class: "ln" }, row.newLine ?? ""),
        h("td", { class: "sign", "aria-label": row.kind === "same" ? "unchanged" : row.kind }, sign),
        h("td", { class: "code" }, row.text),
      ),
    );
  }
  return h("table", { class: "line-diff", "aria-label": label }, body);
}

export function configView(context: ViewContext): View {
  const { session, feeds, signal } = context;
  const { farm } = feeds;
  let visible = false;

  // ------------------------------------------------------------ scope bar
  const scopeInput = h("input", {
    type: "text",
    list: "config-scopes",
    value: "global",
    "aria-label": "Scope",
    placeholder: "global, group:NAME or node:ID-or-NAME",
    class: "scope-input",
    spellcheck: "false",
    autocomplete: "off",
  });
  const scopeOptions = h("datalist", { id: "config-scopes" });
  const loadButton = h("button", { type: "submit" }, "Load");
  const scopeProblem = h("p", { class: "error", role: "alert", hidden: true });
  const scopeForm = h(
    "form",
    { class: "toolbar scope-bar" },
    h("label", {}, "Scope ", scopeInput),
    scopeOptions,
    loadButton,
    h("span", { class: "muted" }, "global · group:NAME · node:ID-or-NAME"),
  );
  const status = h("p", { class: "config-status", role: "status" });
  const watchNote = h("p", { class: "error watch-note", role: "alert", hidden: true });

  // --------------------------------------------------------------- editor
  const textarea = h("textarea", {
    class: "json-input",
    "aria-label": "Configuration (JSON)",
    "aria-describedby": "config-check",
    spellcheck: "false",
    autocomplete: "off",
    wrap: "off",
    rows: 18,
  });
  const gutter = h("pre", { class: "gutter", "aria-hidden": "true" });
  const band = h("div", { class: "error-band", hidden: true, "aria-hidden": "true" });
  const editorBox = h("div", { class: "json-editor" }, band, gutter, textarea);
  const check = h("div", { class: "json-check", id: "config-check", role: "status", "aria-live": "polite" });
  const saveButton = h("button", { type: "button", class: "primary save" }, "Save");
  const formatButton = h("button", { type: "button" }, "Format");
  const revertButton = h("button", { type: "button" }, "Revert");
  const casNote = h("span", { class: "muted cas-note" });
  const saveResult = h("div", { class: "save-result" });
  const conflict = h("section", { class: "conflict", hidden: true, "aria-label": "Newer version" });
  const whyNot = session.canAct ? null : h("p", { class: "muted why-not" }, session.whyNot);

  // -------------------------------------------------------------- applied
  const coverageLine = h("p", { class: "coverage", role: "status" });
  const appliedBox = h("div", { class: "applied" });

  // -------------------------------------------------------------- history
  const historyBox = h("div", { class: "history" });
  const olderButton = h("button", { type: "button", hidden: true }, "Older versions");
  const historyProblem = h("p", { class: "error", role: "alert", hidden: true });
  const compareBox = h("div", { class: "compare" });
  const rollbackResult = h("div", { class: "rollback-result" });

  // ------------------------------------------------------------ effective
  const nodeInput = h("input", {
    type: "text",
    list: "config-nodes",
    "aria-label": "Node id or name",
    placeholder: "node-001 or n1",
    class: "node-input",
    spellcheck: "false",
    autocomplete: "off",
  });
  const nodeOptions = h("datalist", { id: "config-nodes" });
  const effectiveButton = h("button", { type: "submit" }, "Show");
  const effectiveBox = h("div", { class: "effective-result" });
  const effectiveForm = h("form", { class: "toolbar" }, h("label", {}, "Node ", nodeInput), nodeOptions, effectiveButton);

  const element = h(
    "div",
    { class: "view config" },
    h("h1", {}, "Configuration"),
    scopeForm,
    scopeProblem,
    status,
    watchNote,
    h(
      "div",
      { class: "split config-split" },
      h(
        "section",
        { "aria-label": "Editor", class: "editor-section" },
        h("h2", {}, "Document"),
        h("div", { class: "toolbar" }, saveButton, formatButton, revertButton, casNote),
        whyNot,
        editorBox,
        check,
        saveResult,
        conflict,
      ),
      h(
        "section",
        { "aria-label": "Applied versions", class: "applied-section" },
        h("h2", {}, "Applied on the nodes"),
        coverageLine,
        appliedBox,
        h("h2", {}, "A node's effective configuration"),
        h("p", { class: "muted" }, "What a node runs: global, then its group's, then its own, merged key by key (the later wins)."),
        effectiveForm,
        effectiveBox,
      ),
    ),
    h(
      "section",
      { "aria-label": "History", class: "history-section" },
      h("h2", {}, "History"),
      h("p", { class: "muted" }, "Pick two versions (A older, B newer) to see what changed between them."),
      historyProblem,
      historyBox,
      olderButton,
      rollbackResult,
      compareBox,
    ),
  );

  // ---------------------------------------------------------------- state
  /** The scope shown, as the control plane answers it (nodes by id). */
  let scope = "";
  let draft: Draft | null = null;
  let checked: JsonCheck = checkJson("{}");
  /** Why the last save was refused, while the conflict panel shows it. */
  let refusal = "";
  let saving = false;
  let generation = 0;
  let watchStop: AbortController | null = null;
  let history: ConfigVersion[] = [];
  let historyComplete = false;
  let pick: { a: bigint; b: bigint } | null = null;
  /** Whether the user chose the versions compared (else: the newest two). */
  let picked = false;

  // ------------------------------------------------------- editor drawing
  let lineHeight = 20;
  let padTop = 6;
  const measure = () => {
    const style = getComputedStyle(textarea);
    lineHeight = parseFloat(style.lineHeight) || lineHeight;
    padTop = (parseFloat(style.paddingTop) || 0) + (parseFloat(style.borderTopWidth) || 0);
  };
  const placeBand = () => {
    if (checked.ok) return;
    band.style.transform = `translateY(${padTop + (checked.line - 1) * lineHeight - textarea.scrollTop}px)`;
    band.style.height = `${lineHeight}px`;
  };
  const drawGutter = () => {
    const lines = textarea.value.split("\n").length;
    if (Number(gutter.dataset.lines) === lines) return;
    gutter.dataset.lines = String(lines);
    let out = "";
    for (let i = 1; i <= lines; i++) out += `${i}\n`;
    gutter.textContent = out;
  };
  textarea.addEventListener("scroll", () => {
    gutter.scrollTop = textarea.scrollTop;
    placeBand();
  });

  const setSave = () => {
    const valid = checked.ok;
    const dirty = draft?.dirty ?? false;
    if (!session.canAct) {
      saveButton.disabled = true;
      saveButton.title = session.whyNot;
    } else {
      saveButton.disabled = !draft || !valid || !dirty || saving;
      saveButton.title = !draft
        ? "Load a scope first"
        : !valid
          ? "Fix the JSON first (see the message under the editor)"
          : !dirty
            ? "Nothing changed since the version shown"
            : "";
    }
    formatButton.disabled = !valid;
    revertButton.disabled = !dirty;
    text(saveButton, saving ? "Saving…" : draft && dirty ? `Save as a new version` : "Save");
    text(casNote, draft ? `Saved only if ${scope} is still at version ${draft.expected} (compare-and-set).` : "");
  };

  const drawCheck = () => {
    checked = checkJson(textarea.value);
    textarea.setAttribute("aria-invalid", String(!checked.ok));
    editorBox.classList.toggle("invalid", !checked.ok);
    drawGutter();
    if (checked.ok) {
      band.hidden = true;
      replace(check, h("span", { class: "ok" }, `✓ A valid JSON object (${format.bytes(checked.bytes)} as compact JSON)`));
    } else {
      band.hidden = false;
      placeBand();
      const lineText = textarea.value.split("\n")[checked.line - 1] ?? "";
      const goTo = h("button", { type: "button", class: "quiet go-to" }, "Go to the error");
      const offset = checked.offset;
      goTo.addEventListener("click", () => {
        textarea.focus();
        textarea.setSelectionRange(offset, Math.min(offset + 1, textarea.value.length));
      });
      replace(
        check,
        h(
          "p",
          { class: "error syntax-error" },
          `✕ Line ${checked.line}, column ${checked.column}: ${checked.message}. Nothing can be saved until this is fixed. `,
          goTo,
        ),
        h("pre", { class: "excerpt", "aria-hidden": "true" }, `${String(checked.line).padStart(4)} | ${lineText}\n${" ".repeat(4)} | ${" ".repeat(Math.max(0, checked.column - 1))}^`),
      );
    }
    setSave();
  };

  textarea.addEventListener("input", () => {
    if (draft) draft.text = textarea.value;
    drawCheck();
    drawConflict();
  });

  /** Puts the draft's text in the editor (a load, a take-theirs, a save). */
  const showDraft = () => {
    if (!draft) return;
    if (textarea.value !== draft.text) textarea.value = draft.text;
    drawCheck();
    drawConflict();
    text(status, `${scope}: ${describeDoc(draft.base)}${draft.dirty ? " · edited, not saved" : ""}`);
    drawApplied();
  };

  // -------------------------------------------------------- the conflict
  const drawConflict = () => {
    const newer = draft?.newer ?? null;
    if (!draft || !newer) {
      conflict.hidden = true;
      conflict.replaceChildren();
      refusal = "";
      return;
    }
    conflict.hidden = false;
    // The edit as the page prints documents, when it parses: the diff then
    // shows changed values, not changed layout.
    const mine = checked.ok ? printJson(checked.value) : draft.text;
    const rows = lineDiff(newer.text, mine);
    const counts = diffCounts(rows);
    const takeTheirs = h("button", { type: "button", class: "take-theirs" }, `Take version ${newer.version} (drop my edit)`);
    const retry = session.guard(h("button", { type: "button", class: "primary retry" }, `Put my edit onto version ${newer.version}`));
    const keep = h("button", { type: "button", class: "quiet" }, `Keep editing on top of version ${newer.version}`);
    takeTheirs.addEventListener("click", () => {
      draft?.takeTheirs();
      replace(saveResult);
      showDraft();
      void loadHistory();
    });
    retry.addEventListener("click", () => {
      draft?.rebase();
      showDraft();
      void save();
    });
    keep.addEventListener("click", () => {
      draft?.rebase();
      replace(saveResult);
      showDraft();
    });
    if (!checked.ok) {
      retry.disabled = true;
      retry.title = "Fix the JSON first";
    }
    const diff = diffTable(rows, `Version ${newer.version} against your edit`);
    replace(
      conflict,
      h("h3", {}, `${scope} is now at version ${newer.version}`),
      refusal ? h("p", { class: "error", role: "alert" }, `Your save was refused: ${refusal}`) : null,
      h(
        "p",
        {},
        `Version ${newer.version} was written ${when(newer.at)} by ${newer.role || "unknown"}, after version ${draft.base.version}, which your edit is based on. ` +
          (refusal ? "" : "Saving now would be refused. "),
        `Below, − lines are only in version ${newer.version} and + lines only in your edit${checked.ok ? " (as Format prints it)" : ""}: ${counts.removed} −, ${counts.added} +.`,
      ),
      h("details", { class: "conflict-diff", open: refusal !== "" || rows.length <= 40 }, h("summary", {}, "Line diff: current version → your edit"), diff),
      h("div", { class: "buttons" }, retry, takeTheirs, keep),
    );
  };

  // ---------------------------------------------------------------- save
  const save = async () => {
    if (!draft || !checked.ok || saving) return;
    const value = checked.value;
    const expected = draft.expected;
    const target = scope;
    saving = true;
    setSave();
    replace(saveResult, h("p", { class: "muted" }, `Saving onto version ${expected}…`));
    try {
      const response = await configApi.putConfig({ scope: target, data: value, expectedVersion: expected });
      if (target !== scope || !draft) return;
      draft.saved(doc(target, response.version, value, new Date(), ""));
      refusal = "";
      replace(saveResult, h("p", { class: "ok saved" }, `Saved as version ${response.version}. Nodes apply it on their heartbeat stream; see "Applied on the nodes".`));
      showDraft();
      void loadHistory();
    } catch (error) {
      if (target !== scope || !draft) return;
      if (codeOf(error) === Code.Aborted) {
        refusal = describe(error);
        replace(saveResult);
        try {
          const current = await configApi.getConfig({ scope: target });
          const fresh = doc(current.scope, current.version, current.data, current.updatedAt ? timestampDate(current.updatedAt) : undefined, current.role);
          const seen = draft.seen(fresh);
          if (seen === "adopted") {
            // The current version holds exactly this edit: nothing to save.
            replace(saveResult, h("p", { class: "ok" }, `Version ${fresh.version} already holds this document.`));
          }
        } catch (fetchError) {
          replace(saveResult, h("p", { class: "error", role: "alert" }, `Your save was refused (${refusal}), and the current version could not be read: ${describe(fetchError)}`));
        }
        const keepRefusal = refusal;
        showDraft();
        if (draft.newer) {
          refusal = keepRefusal;
          drawConflict();
        }
        void loadHistory();
      } else {
        replace(saveResult, h("p", { class: "error", role: "alert" }, `Not saved: ${describe(error)}`));
      }
    } finally {
      saving = false;
      setSave();
    }
  };
  saveButton.addEventListener("click", () => void save());
  textarea.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === "s") {
      event.preventDefault();
      if (!saveButton.disabled) void save();
    }
  });
  formatButton.addEventListener("click", () => {
    if (!checked.ok || !draft) return;
    draft.text = printJson(checked.value);
    showDraft();
  });
  revertButton.addEventListener("click", () => {
    if (!draft) return;
    draft.text = draft.base.text;
    replace(saveResult);
    showDraft();
  });

  // --------------------------------------------------------------- watch
  // Not through `follow`: a scope may go a long time without a version,
  // and the header's state is the membership's and the metrics' to tell.
  const watch = () => {
    watchStop?.abort();
    watchStop = null;
    watchNote.hidden = true;
    if (!draft || !visible) return;
    const stop = new AbortController();
    watchStop = stop;
    const quit = () => stop.abort();
    signal.addEventListener("abort", quit, { once: true });
    stop.signal.addEventListener("abort", () => signal.removeEventListener("abort", quit), { once: true });
    const watched = scope;
    const backoff = new Backoff();
    void (async () => {
      while (!stop.signal.aborted) {
        const opened = Date.now();
        try {
          const known = draft ? (draft.newer?.version ?? draft.base.version) : 0n;
          for await (const event of configApi.watchConfig({ scope: watched, fromVersion: known }, { signal: stop.signal })) {
            backoff.reset();
            watchNote.hidden = true;
            if (watched !== scope || !draft) return;
            const fresh = fromEvent(event);
            const seen = draft.seen(fresh);
            if (seen === "old") continue;
            if (seen === "adopted") {
              replace(saveResult, h("p", { class: "muted" }, `Version ${fresh.version} was written ${when(fresh.at)} by ${fresh.role || "unknown"}; the editor shows it.`));
            }
            showDraft();
            scheduleHistory();
          }
          if (stop.signal.aborted) return;
          throw new Error("the stream ended");
        } catch (error) {
          if (stop.signal.aborted) return;
          const code = codeOf(error);
          if (code === Code.Unauthenticated || code === Code.PermissionDenied) {
            watchNote.hidden = false;
            text(watchNote, `Not following new versions of ${watched}: ${describe(error)}`);
            return;
          }
          if (Date.now() - opened > 10_000) backoff.reset();
          const wait = backoff.next();
          watchNote.hidden = false;
          text(watchNote, `Not following new versions of ${watched} (${describe(error)}); trying again in ${format.duration(wait)}.`);
          try {
            await sleep(wait, stop.signal);
          } catch {
            return;
          }
        }
      }
    })();
  };

  // ---------------------------------------------------------------- load
  const load = async (given: string) => {
    const parsed = parseScope(given);
    if ("problem" in parsed) {
      scopeProblem.hidden = false;
      text(scopeProblem, parsed.problem);
      return;
    }
    scopeProblem.hidden = true;
    const mine = ++generation;
    text(status, `Loading ${given.trim()}…`);
    try {
      const response = await configApi.getConfig({ scope: given.trim() });
      if (mine !== generation) return;
      scope = response.scope;
      scopeInput.value = scope;
      draft = new Draft(doc(scope, response.version, response.data, response.updatedAt ? timestampDate(response.updatedAt) : undefined, response.role));
      refusal = "";
      pick = null;
      picked = false;
      replace(saveResult);
      replace(rollbackResult);
      replace(compareBox);
      if (location.hash !== `#config/${scope}`) history_replace(`#config/${scope}`);
      if (scope.startsWith("node:")) {
        nodeInput.value = scope.slice("node:".length);
        void showEffective();
      }
      showDraft();
      watch();
      await loadHistory();
    } catch (error) {
      if (mine !== generation) return;
      scopeProblem.hidden = false;
      text(scopeProblem, `Could not load ${given.trim()}: ${describe(error)}`);
      text(status, draft ? `${scope}: ${describeDoc(draft.base)}` : "");
    }
  };
  /** Names the scope in the URL without loading it again. */
  const history_replace = (hash: string) => {
    window.history.replaceState(null, "", hash);
  };
  scopeForm.addEventListener("submit", (event) => {
    event.preventDefault();
    if (draft?.dirty && !window.confirm(`Drop your unsaved edit of ${scope}?`)) return;
    void load(scopeInput.value);
  });

  // ------------------------------------------------------------- history
  const loadHistory = async (older = false) => {
    if (!scope) return;
    const target = scope;
    try {
      const before = older && history.length ? (history[history.length - 1] as ConfigVersion).version : 0n;
      const response = await configApi.history({ scope: target, limit: HISTORY_PAGE, beforeVersion: before });
      if (target !== scope) return;
      history = older ? [...history, ...response.versions] : response.versions;
      historyComplete = response.versions.length < HISTORY_PAGE;
      historyProblem.hidden = true;
      if (!picked && !older && history.length > 0) {
        const newest = (history[0] as ConfigVersion).version;
        const previous = history[1]?.version ?? 0n;
        if (pick?.a !== previous || pick.b !== newest) {
          pick = { a: previous, b: newest };
          void compare();
        }
      }
      // The version shown: who wrote it and when, as the control plane keeps it.
      const shown = draft ? history.find((v) => v.version === draft?.base.version) : undefined;
      if (draft && shown) {
        draft.base.role = shown.role;
        draft.base.at = shown.createdAt ? timestampDate(shown.createdAt) : draft.base.at;
        text(status, `${scope}: ${describeDoc(draft.base)}${draft.dirty ? " · edited, not saved" : ""}`);
      }
      drawHistory();
    } catch (error) {
      if (cancelled(error)) return;
      historyProblem.hidden = false;
      text(historyProblem, `Could not read the history: ${describe(error)}`);
    }
  };
  let historyTimer: ReturnType<typeof setTimeout> | undefined;
  const scheduleHistory = () => {
    clearTimeout(historyTimer);
    historyTimer = setTimeout(() => void loadHistory(), 300);
  };
  olderButton.addEventListener("click", () => void loadHistory(true));

  const rollback = async (version: ConfigVersion) => {
    if (!draft) return;
    const current = draft.newer?.version ?? draft.base.version;
    const edited = draft.dirty ? " Your unsaved edit stays in the editor, and will then be based on an older version." : "";
    if (
      !(await confirmAction(
        `Roll ${scope} back to version ${version.version}?`,
        `This writes a new version of ${scope} holding version ${version.version}'s data (written ${when(version.createdAt ? timestampDate(version.createdAt) : undefined)}); every node it applies to takes it. Only if ${scope} is still at version ${current}.${edited}`,
        "roll back",
      ))
    ) {
      return;
    }
    try {
      const response = await configApi.rollback({ scope, version: version.version, expectedVersion: current });
      replace(rollbackResult, h("p", { class: "ok", role: "status" }, `Rolled back: version ${response.version} holds version ${version.version}'s data.`));
      pick = null;
      picked = false;
      await loadHistory();
    } catch (error) {
      replace(rollbackResult, h("p", { class: "error", role: "alert" }, `Not rolled back: ${describe(error)}`));
    }
  };

  const drawHistory = () => {
    if (history.length === 0) {
      replace(historyBox, h("p", { class: "muted" }, `${scope} was never written: its configuration is an empty object.`));
      olderButton.hidden = true;
      return;
    }
    const newest = (history[0] as ConfigVersion).version;
    const rows: (ConfigVersion | null)[] = [...history];
    if (historyComplete) rows.push(null);
    const radio = (side: "a" | "b", version: bigint) => {
      const input = h("input", {
        type: "radio",
        name: `config-${side}`,
        value: String(version),
        "aria-label": `${side === "a" ? "A" : "B"}: version ${version}`,
      });
      input.checked = pick?.[side] === version;
      input.addEventListener("change", () => {
        pick = { a: pick?.a ?? 0n, b: pick?.b ?? newest, [side]: version };
        picked = true;
        void compare();
      });
      return input;
    };
    const tableElement = table(["A", "B", "Version", "Written", "By", "Note", ""], rows, (v) => {
      if (v === null) {
        return [radio("a", 0n), "", "0", "–", "–", h("span", { class: "muted" }, "before the first write (empty)"), ""];
      }
      const button =
        v.version === newest
          ? h("span", { class: "muted" }, "current")
          : session.guard(h("button", { type: "button", class: "rollback", onclick: () => void rollback(v) }, "Roll back to this"));
      return [
        radio("a", v.version),
        radio("b", v.version),
        h("strong", {}, String(v.version)),
        when(v.createdAt ? timestampDate(v.createdAt) : undefined),
        v.role || "–",
        v.rollbackOf > 0n ? `rollback to version ${v.rollbackOf}` : "",
        button,
      ];
    }, { class: "compact history-table" });
    tableElement.querySelectorAll("tbody tr").forEach((tr, i) => {
      const v = rows[i];
      tr.setAttribute("data-version", v ? String(v.version) : "0");
    });
    replace(historyBox, tableElement);
    olderButton.hidden = historyComplete;
  };

  /** The diff of the two versions picked: Config.Diff's paths, and the documents' lines. */
  const compare = async () => {
    if (!pick || !scope) return;
    const target = scope;
    let { a, b } = pick;
    if (a === b) {
      replace(compareBox, h("p", { class: "muted" }, `A and B are both version ${a}: pick two different versions.`));
      return;
    }
    if (a > b) [a, b] = [b, a];
    replace(compareBox, h("p", { class: "muted" }, `Comparing versions ${a} and ${b}…`));
    try {
      const [response, older, newer] = await Promise.all([
        configApi.diff({ scope: target, fromVersion: a, toVersion: b }),
        documentOf(target, a),
        documentOf(target, b),
      ]);
      if (target !== scope) return;
      const changes = response.changes;
      replace(
        compareBox,
        h("h3", {}, `From version ${response.fromVersion} to version ${response.toVersion}: ${format.plural(changes.length, "key changed", "keys changed")}`),
        changes.length
          ? table(["Key", "Change", `In ${response.fromVersion}`, `In ${response.toVersion}`], changes, (c) => [
              h("code", {}, c.path),
              h("span", { class: `change change-${CHANGE_WORDS[c.kind]}` }, CHANGE_WORDS[c.kind]),
              h("code", {}, brief(valueJson(c.oldValue))),
              h("code", {}, brief(valueJson(c.newValue))),
            ], { class: "compact path-diff" })
          : h("p", { class: "muted" }, "No key differs."),
        h("details", { class: "version-diff", open: true }, h("summary", {}, "Line diff of the two documents"), diffTable(lineDiff(older, newer), `Version ${a} against version ${b}`)),
      );
    } catch (error) {
      if (target !== scope) return;
      replace(compareBox, h("p", { class: "error", role: "alert" }, `Could not compare ${a} and ${b}: ${describe(error)}`));
    }
  };

  /** A version's document as printed, from the history shown or the control plane. */
  const documentOf = async (target: string, version: bigint): Promise<string> => {
    if (version === 0n) return printJson({});
    const known = history.find((v) => v.version === version);
    if (known) return printJson(known.data ?? {});
    const response = await configApi.history({ scope: target, limit: 1, beforeVersion: version + 1n });
    const found = response.versions[0];
    if (!found || found.version !== version) throw new Error(`version ${version} is not in ${target}'s history`);
    return printJson(found.data ?? {});
  };

  // ------------------------------------------------------------- applied
  let appliedKey = "";
  const drawApplied = () => {
    const versions = appliedVersions(farm.nodes.values());
    const target = draft ? (draft.newer?.version ?? draft.base.version) : 0n;
    const key = `${scope}|${target}|${versions.map((v) => `${v.version}:${v.names.join(",")}`).join(";")}|${farm.synced}`;
    if (key === appliedKey) return;
    appliedKey = key;
    if (!farm.synced && farm.nodes.size === 0) {
      text(coverageLine, "Waiting for the membership…");
      appliedBox.replaceChildren();
      return;
    }
    const total = farm.nodes.size;
    if (draft && scope) {
      const c = coverage(farm.nodes.values(), scope, target);
      coverageLine.className = `coverage ${c.covered > 0 && c.current === c.covered ? "ok" : c.covered === 0 ? "muted" : "pending"}`;
      text(
        coverageLine,
        c.covered === 0
          ? `${scope} applies to no current node.`
          : target === 0n
            ? `${scope} was never written; it applies to ${format.plural(c.covered, "node")}.`
            : `Version ${target} of ${scope}: applied by ${c.current} of ${format.plural(c.covered, "node")} it applies to` +
              (c.behind.length ? `; waiting for ${c.behind.slice(0, 5).join(", ")}${c.behind.length > 5 ? ` and ${c.behind.length - 5} more` : ""}.` : "."),
      );
    } else {
      text(coverageLine, "");
    }
    if (versions.length === 0) {
      replace(appliedBox, h("p", { class: "muted" }, "No node in the farm."));
      return;
    }
    const rows = versions.map((v) => {
      const share = total ? (v.names.length / total) * 100 : 0;
      const names = h("details", { class: "names-on" }, h("summary", {}, "names"), h("p", {}, v.names.join(", ")));
      return h(
        "tr",
        { "data-version": String(v.version), class: target > 0n && v.version >= target ? "has-target" : "" },
        h("td", {}, v.version === 0n ? "0 (none yet)" : String(v.version)),
        h("td", { class: "count" }, String(v.names.length)),
        h("td", { class: "share" }, h("span", { class: "bar" }, h("span", { class: "fill", style: `width: ${share.toFixed(1)}%` }))),
        h("td", {}, names),
      );
    });
    replace(
      appliedBox,
      h(
        "table",
        { class: "compact applied-table", "aria-label": "Nodes by applied version" },
        h("thead", {}, h("tr", {}, h("th", {}, "Version applied"), h("th", {}, "Nodes"), h("th", {}, "Share"), h("th", {}, ""))),
        h("tbody", {}, ...rows),
      ),
      h("p", { class: "muted" }, `Live from the membership: ${format.plural(total, "node")}, each with the version it reported applying. A node's version is the highest of its layers (global, group, node).`),
    );
  };

  let optionsKey = -1;
  const drawOptions = () => {
    if (optionsKey === farm.membership) return;
    optionsKey = farm.membership;
    const names = [...farm.nodes.values()].map((n) => n.name || n.id).sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
    const groups = [...new Set([...farm.nodes.values()].map((n) => n.group))].sort();
    scopeOptions.replaceChildren(
      h("option", { value: "global" }),
      ...groups.map((g) => h("option", { value: `group:${g}` })),
      ...names.map((n) => h("option", { value: `node:${n}` })),
    );
    nodeOptions.replaceChildren(...names.map((n) => h("option", { value: n })));
  };
  const schedule = frameScheduler(() => {
    drawApplied();
    drawOptions();
  }, () => visible);
  farm.addEventListener("change", schedule);

  // ----------------------------------------------------------- effective
  const showEffective = async () => {
    const given = nodeInput.value.trim();
    if (!given) {
      replace(effectiveBox, h("p", { class: "error", role: "alert" }, "Give a node's id (n7) or name (node-007)."));
      return;
    }
    replace(effectiveBox, h("p", { class: "muted" }, `Reading ${given}'s effective configuration…`));
    try {
      const response = await configApi.getEffectiveConfig({ nodeId: given });
      const node = [...farm.nodes.values()].find((n) => n.id === given || n.name === given);
      const applied = node
        ? node.configVersion >= response.version
          ? h("span", { class: "ok" }, `applied (the node reports version ${node.configVersion})`)
          : h("span", { class: "pending" }, `not applied yet (the node reports version ${node.configVersion})`)
        : h("span", { class: "muted" }, "the node is not in the membership shown");
      replace(
        effectiveBox,
        h("p", { class: "effective-facts" }, `${node ? `${node.name} (${node.id})` : given}: effective version ${response.version}, `, applied, "."),
        h("pre", { class: "json-view" }, printJson(response.data ?? {})),
      );
    } catch (error) {
      replace(effectiveBox, h("p", { class: "error", role: "alert" }, `Could not read ${given}'s effective configuration: ${describe(error)}`));
    }
  };
  effectiveForm.addEventListener("submit", (event) => {
    event.preventDefault();
    void showEffective();
  });

  drawCheck();
  return {
    element,
    show() {
      visible = true;
      measure();
      schedule();
      if (draft) {
        placeBand();
        watch();
      }
    },
    hide() {
      visible = false;
      watchStop?.abort();
      watchStop = null;
    },
    route(path) {
      let given = path[0] ?? "";
      try {
        given = decodeURIComponent(given);
      } catch {
        // Not percent-encoded: taken as it is, and checked by `load`.
      }
      const wanted = given || scope || "global";
      if (wanted === scope && draft) return;
      scopeInput.value = wanted;
      void load(wanted);
    },
  };
}
