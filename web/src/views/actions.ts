// Admin actions on the farm: `Farm.NodeAction` on one node or a selection,
// `Farm.Scale`, `Farm.Broadcast` and `Farm.SimulateLoad`. Each asks for
// confirmation, then shows its result (per node, as a table) and errors in
// words. For a viewer every control is disabled, with the reason.

import { create } from "@bufbuild/protobuf";

import {
  BroadcastRequestSchema,
  type BroadcastResponse,
  NodeActionKind,
} from "../../gen/farm/v1/farm_pb";
import { api, describe } from "../api";
import { h, replace, table, text } from "../dom";
import * as format from "../format";
import { STATE_NAMES } from "../store";
import type { ViewContext } from "./view";

export const ACTIONS: { kind: NodeActionKind; label: string; effect: string }[] = [
  { kind: NodeActionKind.START, label: "start", effect: "starts it if it is not running" },
  { kind: NodeActionKind.STOP, label: "stop", effect: "stops it gracefully; the farm does not replace it" },
  { kind: NodeActionKind.RESTART, label: "restart", effect: "stops it gracefully and starts it again" },
  { kind: NodeActionKind.PAUSE, label: "pause", effect: "freezes it (SIGSTOP): it stops heartbeating" },
  { kind: NodeActionKind.UNPAUSE, label: "unpause", effect: "lets a paused node run again" },
  { kind: NodeActionKind.KILL, label: "kill", effect: "kills it at once (SIGKILL); the farm starts it again" },
  { kind: NodeActionKind.REMOVE, label: "remove", effect: "stops it and forgets its identity" },
];

/** How many node actions run at once on a selection. */
const PARALLEL = 8;

/** Asks the user to confirm; resolves true when they do. */
export function confirmAction(title: string, body: string, confirm: string): Promise<boolean> {
  return new Promise((resolve) => {
    const yes = h("button", { type: "submit", class: "primary", value: "yes" }, confirm);
    const no = h("button", { type: "submit", value: "no", formnovalidate: true }, "Cancel");
    const dialog = h(
      "dialog",
      { class: "confirm", "aria-label": title },
      h("form", { method: "dialog" }, h("h2", {}, title), h("p", {}, body), h("div", { class: "buttons" }, no, yes)),
    );
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "yes");
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
    yes.focus();
  });
}

/** A per-node result row. */
interface Row {
  node: string;
  ok: boolean;
  message: string;
  elapsedMs: number;
}

function resultsTable(title: string, rows: Row[]): HTMLElement {
  const failed = rows.filter((r) => !r.ok).length;
  return h(
    "div",
    { class: "results", role: "status" },
    h("h3", {}, `${title}: ${rows.length - failed} succeeded, ${failed} failed`),
    table(["Node", "Result", "Detail", "Took"], rows, (r) => [
      r.node,
      h("span", { class: r.ok ? "ok" : "bad" }, r.ok ? "done" : "failed"),
      r.message,
      format.duration(r.elapsedMs),
    ]),
  );
}

function broadcastRows(response: BroadcastResponse): Row[] {
  return response.results.map((r) => ({
    node: r.name || r.nodeId,
    ok: r.code === 0,
    message: r.code === 0 ? r.output || "ok" : r.message,
    elapsedMs: r.elapsedMs,
  }));
}

/** Runs `action` on every node of `ids`, a few at a time; one row each. */
async function actOn(context: ViewContext, ids: string[], kind: NodeActionKind): Promise<Row[]> {
  const rows: Row[] = [];
  let next = 0;
  const worker = async () => {
    while (next < ids.length) {
      const id = ids[next++] as string;
      const name = context.feeds.farm.nodes.get(id)?.name ?? id;
      const started = performance.now();
      try {
        const response = await api.farm.nodeAction({ nodeId: id, action: kind });
        const after = response.node;
        rows.push({
          node: name,
          ok: true,
          message: after ? `now ${STATE_NAMES[after.state]}${after.stateReason ? ` (${after.stateReason})` : ""}` : "done",
          elapsedMs: performance.now() - started,
        });
      } catch (error) {
        rows.push({ node: name, ok: false, message: describe(error), elapsedMs: performance.now() - started });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(PARALLEL, ids.length) }, worker));
  return rows.sort((a, b) => (a.node < b.node ? -1 : 1));
}

/** The buttons of one node's detail: each action, confirmed. */
export function nodeActionButtons(context: ViewContext, id: string): HTMLElement[] {
  const { session } = context;
  const out = h("div", { class: "action-result" });
  const buttons = ACTIONS.map(({ kind, label, effect }) => {
    const button = session.guard(
      h("button", { type: "button", class: kind === NodeActionKind.KILL || kind === NodeActionKind.REMOVE ? "danger" : "" }, label),
    );
    button.addEventListener("click", async () => {
      const name = context.feeds.farm.nodes.get(id)?.name ?? id;
      if (!(await confirmAction(`${label[0]?.toUpperCase()}${label.slice(1)} ${name}?`, `This ${effect}.`, label))) return;
      text(out, `${label} ${name}…`);
      const rows = await actOn(context, [id], kind);
      replace(out, resultsTable(label, rows));
    });
    return button;
  });
  const note = session.canAct ? null : h("p", { class: "muted why-not" }, session.whyNot);
  return [h("div", { class: "buttons" }, ...buttons), ...(note ? [note] : []), out];
}

export interface ActionsPanel {
  element: HTMLElement;
  /** The selection changed: update the counts on the buttons. */
  selectionChanged(): void;
}

/** The actions on the selection (or the whole farm), and Scale. */
export function actionsPanel(context: ViewContext, selection: () => string[]): ActionsPanel {
  const { session } = context;
  const results = h("div", { class: "action-result" });
  const busy = (on: boolean, ...controls: HTMLButtonElement[]) => {
    for (const c of controls) c.disabled = on || !session.canAct;
  };
  const selector = (): { nodes: { nodeIds: string[] } | undefined; what: string } => {
    const ids = selection();
    return ids.length
      ? { nodes: { nodeIds: ids }, what: format.plural(ids.length, "selected node") }
      : { nodes: undefined, what: "every node" };
  };

  // Node actions on the selection.
  const actionSelect = session.guard(
    h("select", { "aria-label": "Action" }, ...ACTIONS.map((a) => h("option", { value: String(a.kind) }, a.label))),
  );
  const apply = session.guard(h("button", { type: "button" }, "Apply to selected"));
  apply.addEventListener("click", async () => {
    const ids = selection();
    const action = ACTIONS.find((a) => String(a.kind) === actionSelect.value);
    if (!action || ids.length === 0) return;
    const names = ids.map((id) => context.feeds.farm.nodes.get(id)?.name ?? id);
    const shown = names.length > 8 ? `${names.slice(0, 8).join(", ")} and ${names.length - 8} more` : names.join(", ");
    if (!(await confirmAction(`${action.label} ${format.plural(ids.length, "node")}?`, `${shown}: this ${action.effect}.`, action.label))) return;
    busy(true, apply);
    text(results, `${action.label}: ${format.plural(ids.length, "node")}…`);
    const rows = await actOn(context, ids, action.kind);
    busy(false, apply);
    replace(results, resultsTable(action.label, rows));
  });

  // Scale.
  const scaleInput = session.guard(h("input", { type: "number", min: 0, step: 1, "aria-label": "Nodes", class: "narrow" }));
  const scale = session.guard(h("button", { type: "button" }, "Scale"));
  scale.addEventListener("click", async () => {
    const nodes = Number(scaleInput.value);
    if (scaleInput.value === "" || !Number.isInteger(nodes) || nodes < 0) {
      text(results, "Scale: give a whole number of nodes, 0 or more.");
      return;
    }
    if (!(await confirmAction(`Scale the farm to ${format.plural(nodes, "node")}?`, "The control plane starts or retires managed nodes until the farm has this many.", "scale"))) return;
    busy(true, scale);
    try {
      const response = await api.farm.scale({ nodes });
      replace(results, h("p", { class: "ok", role: "status" }, `Scaled from ${response.previous} to ${response.desired} nodes.`));
    } catch (error) {
      replace(results, h("p", { class: "error", role: "alert" }, `Scale: ${describe(error)}`));
    }
    busy(false, scale);
  });

  // Broadcast.
  const command = session.guard(
    h("select", { "aria-label": "Command" }, h("option", { value: "info" }, "info"), h("option", { value: "log" }, "set log level")),
  );
  const filterInput = session.guard(h("input", { type: "text", placeholder: "e.g. debug", "aria-label": "Log filter", class: "narrow", value: "info" }));
  const broadcast = session.guard(h("button", { type: "button" }, "Broadcast"));
  broadcast.addEventListener("click", async () => {
    const { nodes, what } = selector();
    const request = create(BroadcastRequestSchema, {
      nodes,
      command:
        command.value === "log"
          ? { case: "logLevel", value: { filter: filterInput.value.trim() } }
          : { case: "info", value: {} },
    });
    const label = command.value === "log" ? `set the log level to "${filterInput.value.trim()}"` : "ask for info";
    if (!(await confirmAction(`Broadcast to ${what}?`, `Each node is asked to ${label}.`, "broadcast"))) return;
    busy(true, broadcast);
    try {
      replace(results, resultsTable("broadcast", broadcastRows(await api.farm.broadcast(request))));
    } catch (error) {
      replace(results, h("p", { class: "error", role: "alert" }, `Broadcast: ${describe(error)}`));
    }
    busy(false, broadcast);
  });

  // Simulated load.
  const cpu = session.guard(h("input", { type: "number", min: 0, max: 100, value: 50, "aria-label": "CPU percent", class: "narrow" }));
  const memory = session.guard(h("input", { type: "number", min: 0, max: 1024, value: 0, "aria-label": "Memory MiB", class: "narrow" }));
  const seconds = session.guard(h("input", { type: "number", min: 1, max: 600, value: 10, "aria-label": "Seconds", class: "narrow" }));
  const simulate = session.guard(h("button", { type: "button" }, "Simulate load"));
  simulate.addEventListener("click", async () => {
    const { nodes, what } = selector();
    const load = { cpuPercent: Number(cpu.value), memoryMib: Number(memory.value), durationMs: Number(seconds.value) * 1000 };
    if (!(await confirmAction(`Simulate load on ${what}?`, `${load.cpuPercent} % CPU and ${load.memoryMib} MiB for ${seconds.value} s on each node.`, "simulate"))) return;
    busy(true, simulate);
    try {
      replace(results, resultsTable("simulated load", broadcastRows(await api.farm.simulateLoad({ nodes, load }))));
    } catch (error) {
      replace(results, h("p", { class: "error", role: "alert" }, `Simulate load: ${describe(error)}`));
    }
    busy(false, simulate);
  });

  const element = h(
    "details",
    { class: "actions" },
    h("summary", {}, "Actions"),
    session.canAct ? null : h("p", { class: "muted why-not" }, session.whyNot),
    h("div", { class: "action-row" }, h("span", { class: "action-name" }, "Selected nodes"), actionSelect, apply),
    h("div", { class: "action-row" }, h("span", { class: "action-name" }, "Farm size"), scaleInput, scale),
    h(
      "div",
      { class: "action-row" },
      h("span", { class: "action-name" }, "Broadcast"),
      command,
      filterInput,
      broadcast,
      h("span", { class: "muted" }, "to the selection, or every node"),
    ),
    h(
      "div",
      { class: "action-row" },
      h("span", { class: "action-name" }, "Load"),
      h("label", {}, cpu, " % CPU"),
      h("label", {}, memory, " MiB"),
      h("label", {}, seconds, " s"),
      simulate,
    ),
    results,
  );

  const selectionChanged = () => {
    const n = selection().length;
    text(apply, n ? `Apply to ${format.plural(n, "selected node")}` : "Apply to selected");
    apply.disabled = !session.canAct || n === 0;
    if (session.canAct && n === 0) apply.title = "Select nodes first (their check boxes, or Select shown)";
    else if (session.canAct) apply.title = "";
  };
  selectionChanged();
  // The farm's size as the page's start learnt it (GetStatus), not from
  // ListNodes: at 10,000 nodes that would fetch and decode every node again
  // beside the membership feed.
  scaleInput.value = String(session.status.desiredNodes);
  return { element, selectionChanged };
}
