// The node grid: one cell per node, filtered by name, group, state and
// label. Up to CARD_LIMIT shown nodes appear as cards (name, group, state
// with its reason, CPU and memory against the limit, config version, leader
// mark); more, as a dense heat map on a canvas that stays smooth at 10,000.
// Clicking a node opens its detail (#nodes/ID). Admins select nodes and act
// on them; viewers see the actions disabled, with the reason.

import { type NodeInfo, NodeState } from "../../gen/farm/v1/node_pb";
import { h, replace, text } from "../dom";
import { bench, benchNote, type NodeLoad } from "../feeds";
import * as format from "../format";
import { STATE_NAMES } from "../store";
import { actionsPanel } from "./actions";
import { type Filter, matches } from "./filter";
import { nodeDetail } from "./detail";
import { frameScheduler, type View, type ViewContext } from "./view";

/** Most nodes shown as cards; beyond, the heat map. */
export const CARD_LIMIT = 300;
/** Heat-map cell side and gap, in CSS pixels. */
const CELL = 9;
const GAP = 1;

interface Card {
  root: HTMLElement;
  select: HTMLInputElement;
  name: HTMLElement;
  leader: HTMLElement;
  group: HTMLElement;
  state: HTMLElement;
  cpu: HTMLElement;
  cpuBar: HTMLElement;
  memory: HTMLElement;
  memoryBar: HTMLElement;
  config: HTMLElement;
}

/**
 * A heat-map colour for a node, as an index into `Palette.colors`: its
 * state, or for a healthy node its CPU (NaN: no load known).
 */
function cellColor(state: NodeState, cpuPercent: number, heatLevels: number): number {
  if (state !== NodeState.HEALTHY) return heatLevels + 1 + (STATE_SLOTS.get(state) ?? 3);
  if (Number.isNaN(cpuPercent)) return 0;
  const level = Math.min(heatLevels - 1, Math.floor((cpuPercent / 100) * heatLevels));
  return 1 + Math.max(0, level);
}

/** Whether two lists hold the same nodes in the same order (the cells did not move). */
function sameOrder(a: readonly NodeInfo[] | null, b: readonly NodeInfo[]): boolean {
  if (a === b) return true;
  if (a === null || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i]?.id !== b[i]?.id) return false;
  return true;
}

/** Where each state other than healthy has its colour, after the heat levels. */
const STATE_SLOTS = new Map<NodeState, number>([
  [NodeState.STARTING, 0],
  [NodeState.UNHEALTHY, 1],
  [NodeState.STOPPED, 2],
]);

interface Palette {
  /** Idle (no load known), the heat levels, then starting, unhealthy, stopped and unknown. */
  colors: string[];
  heatLevels: number;
  selected: string;
}

function palette(): Palette {
  const css = getComputedStyle(document.documentElement);
  const v = (name: string) => css.getPropertyValue(name).trim();
  const heat = [v("--heat-0"), v("--heat-1"), v("--heat-2"), v("--heat-3"), v("--heat-4")];
  return {
    colors: [
      v("--heat-0"),
      ...heat,
      v("--state-starting"),
      v("--state-unhealthy"),
      v("--state-stopped"),
      v("--muted"),
    ],
    heatLevels: heat.length,
    selected: v("--fg"),
  };
}

export function nodesView(context: ViewContext): View {
  const { feeds, session } = context;
  const { farm, metrics } = feeds;
  let visible = false;
  const filter: Filter = { name: "", group: "", state: null, label: "" };
  let layout: "auto" | "cards" | "heatmap" = "auto";
  const selected = new Set<string>();

  // The toolbar.
  const nameInput = h("input", { type: "search", placeholder: "name or id", "aria-label": "Filter by name" });
  const groupSelect = h("select", { "aria-label": "Filter by group" }, h("option", { value: "" }, "every group"));
  const stateSelect = h(
    "select",
    { "aria-label": "Filter by state" },
    h("option", { value: "" }, "every state"),
    ...[NodeState.HEALTHY, NodeState.STARTING, NodeState.UNHEALTHY, NodeState.STOPPED].map((s) =>
      h("option", { value: String(s) }, STATE_NAMES[s]),
    ),
  );
  const labelInput = h("input", { type: "search", placeholder: "label=value", "aria-label": "Filter by label" });
  const layoutSelect = h(
    "select",
    { "aria-label": "Layout" },
    h("option", { value: "auto" }, "cards up to 300, then heat map"),
    h("option", { value: "cards" }, "cards"),
    h("option", { value: "heatmap" }, "heat map"),
  );
  const shownCount = h("span", { class: "muted", role: "status" });
  const selectShown = session.guard(h("button", { type: "button" }, "Select shown"));
  const clearSelection = session.guard(h("button", { type: "button" }, "Clear selection"));
  const onFilter = () => {
    filter.name = nameInput.value.trim();
    filter.group = groupSelect.value;
    filter.state = stateSelect.value === "" ? null : (Number(stateSelect.value) as NodeState);
    filter.label = labelInput.value.trim();
    layout = layoutSelect.value as typeof layout;
    orderKey = "";
    schedule();
  };
  for (const control of [nameInput, labelInput]) control.addEventListener("input", onFilter);
  for (const control of [groupSelect, stateSelect, layoutSelect]) control.addEventListener("change", onFilter);
  const toolbar = h(
    "div",
    { class: "toolbar", role: "search" },
    nameInput,
    groupSelect,
    stateSelect,
    labelInput,
    layoutSelect,
    shownCount,
  );

  const actions = actionsPanel(context, () => [...selected]);
  selectShown.addEventListener("click", () => {
    for (const node of shown) selected.add(node.id);
    actions.selectionChanged();
    schedule();
  });
  clearSelection.addEventListener("click", () => {
    selected.clear();
    actions.selectionChanged();
    schedule();
  });

  const cards = h("div", { class: "cards" });
  const canvas = h("canvas", { class: "heatmap", role: "img", "aria-label": "Heat map of the nodes" });
  const tooltip = h("div", { class: "tooltip", hidden: true });
  const heat = h("div", { class: "heat-wrap" }, canvas, tooltip);
  const legend = h(
    "p",
    { class: "legend muted" },
    "Healthy nodes by CPU: ",
    ...[0, 1, 2, 3, 4].map((i) => h("span", { class: `swatch heat-${i}` }, `${i * 20}–${i * 20 + 20} %`)),
    " · ",
    h("span", { class: "swatch state-starting" }, "starting"),
    h("span", { class: "swatch state-unhealthy" }, "unhealthy"),
    h("span", { class: "swatch state-stopped" }, "stopped"),
  );
  const grid = h("section", { class: "grid", "aria-label": "Nodes" });
  const empty = h("p", { class: "empty muted" });

  const detail = nodeDetail(context);
  const element = h(
    "div",
    { class: "view nodes" },
    h("h1", {}, "Nodes"),
    toolbar,
    h("div", { class: "selection" }, selectShown, clearSelection, actions.element),
    grid,
    detail.element,
  );

  const cardOf = new Map<string, Card>();
  let shown: NodeInfo[] = [];
  let sorted: NodeInfo[] = [];
  let sortedAt = -1;
  let orderKey = "";
  let groups = "";

  const makeCard = (node: NodeInfo): Card => {
    const select = session.guard(h("input", { type: "checkbox", "aria-label": `Select ${node.name}` }));
    select.addEventListener("click", (event) => {
      event.stopPropagation();
      if (select.checked) selected.add(node.id);
      else selected.delete(node.id);
      actions.selectionChanged();
    });
    const card: Card = {
      root: h("article", { class: "card", tabindex: 0, "data-node": node.id }),
      select,
      name: h("h3", {}),
      leader: h("span", { class: "leader", title: "Leader of its group" }, "★"),
      group: h("span", { class: "group" }),
      state: h("span", { class: "state" }),
      cpu: h("span", {}),
      cpuBar: h("span", { class: "fill" }),
      memory: h("span", {}),
      memoryBar: h("span", { class: "fill" }),
      config: h("span", { class: "config" }),
    };
    card.root.append(
      h("div", { class: "card-head" }, card.select, card.name, card.leader),
      h("div", { class: "card-sub" }, card.group, card.state),
      h("div", { class: "meter", title: "CPU against the node's limit" }, h("span", { class: "meter-label" }, "CPU"), h("span", { class: "bar" }, card.cpuBar), card.cpu),
      h("div", { class: "meter", title: "Memory against the node's limit" }, h("span", { class: "meter-label" }, "Mem"), h("span", { class: "bar" }, card.memoryBar), card.memory),
      h("div", { class: "card-foot" }, card.config),
    );
    const open = () => {
      location.hash = `#nodes/${node.id}`;
    };
    card.root.addEventListener("click", open);
    card.root.addEventListener("keydown", (event) => {
      if (event.key === "Enter") open();
    });
    return card;
  };

  const updateCard = (card: Card, node: NodeInfo, load: NodeLoad | undefined) => {
    const state = STATE_NAMES[node.state];
    card.root.dataset.state = state;
    card.root.classList.toggle("selected", selected.has(node.id));
    card.select.checked = selected.has(node.id);
    text(card.name, node.name);
    card.leader.hidden = !node.leader;
    text(card.group, node.group);
    text(card.state, state);
    card.state.title = node.stateReason || state;
    card.root.title = `${node.name} (${node.id}): ${state}${node.stateReason ? `, ${node.stateReason}` : ""}`;
    const cpu = load ? load.cpuPercent : null;
    text(card.cpu, cpu === null ? "–" : format.percent(cpu));
    card.cpuBar.style.width = `${Math.min(100, cpu ?? 0)}%`;
    const memoryShare = load && load.memoryLimit > 0 ? (load.memoryUsed / load.memoryLimit) * 100 : null;
    text(card.memory, load ? `${format.bytes(load.memoryUsed)} / ${format.bytes(load.memoryLimit)}` : "–");
    card.memoryBar.style.width = `${Math.min(100, memoryShare ?? 0)}%`;
    text(card.config, node.configVersion > 0n ? `config v${node.configVersion}` : "no config applied");
  };

  const drawCards = () => {
    const key = shown.map((n) => n.id).join(",");
    if (key !== orderKey || grid.firstChild !== cards) {
      orderKey = key;
      const keep = new Set(shown.map((n) => n.id));
      for (const [id, card] of cardOf) {
        if (!keep.has(id)) {
          card.root.remove();
          cardOf.delete(id);
        }
      }
      const ordered = shown.map((node) => {
        let card = cardOf.get(node.id);
        if (!card) {
          card = makeCard(node);
          cardOf.set(node.id, card);
        }
        return card.root;
      });
      cards.replaceChildren(...ordered);
      if (grid.firstChild !== cards) replace(grid, cards);
    }
    for (const node of shown) {
      const card = cardOf.get(node.id);
      if (card) updateCard(card, node, metrics.loads.get(node.id));
    }
  };

  let colors: Palette | null = null;
  /** Each cell's colour this draw, and as last painted (NONE: not painted). */
  let cellColors = new Uint8Array(0);
  let painted = new Uint8Array(0);
  /** What the painted cells assume: canvas size, cells per row, palette, order. */
  let paintedFor = "";
  let paintedOrder: readonly NodeInfo[] | null = null;
  /** Nodes outlined as selected in the last paint. */
  let paintedSelection = 0;
  let perRow = 1;
  const NONE = 255;
  const drawHeatmap = () => {
    if (grid.firstChild !== heat) {
      replace(grid, heat, legend);
      cardOf.clear();
      cards.replaceChildren();
      orderKey = "";
    }
    colors ??= palette();
    const width = Math.max(CELL, grid.clientWidth);
    perRow = Math.max(1, Math.floor((width + GAP) / (CELL + GAP)));
    const rows = Math.max(1, Math.ceil(shown.length / perRow));
    const ratio = window.devicePixelRatio || 1;
    const cssHeight = rows * (CELL + GAP);
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(cssHeight * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(cssHeight * ratio);
      canvas.style.width = `${width}px`;
      canvas.style.height = `${cssHeight}px`;
    }
    const g = canvas.getContext("2d");
    if (!g) return;
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    // A 1 Hz update changes few cells (a load crossing a level, a node
    // changing state): only those are painted again, unless the cells moved
    // (membership, filter, size, palette) or a selection is outlined.
    const layout = `${canvas.width}x${canvas.height}/${perRow}/${colors.colors.join()}`;
    const sameCells = layout === paintedFor && sameOrder(paintedOrder, shown) && selected.size === 0 && paintedSelection === 0;
    if (!sameCells) {
      g.clearRect(0, 0, width, cssHeight);
      if (painted.length < shown.length) painted = new Uint8Array(shown.length * 2);
      painted.fill(NONE);
      paintedFor = layout;
      paintedOrder = shown;
    }
    // The cells' colours first (no allocation per cell), then one fill
    // per colour: far fewer state changes than one per cell.
    const { colors: fills, heatLevels } = colors;
    if (cellColors.length < shown.length) cellColors = new Uint8Array(shown.length * 2);
    const loads = metrics.loads;
    let changed = 0;
    for (let i = 0; i < shown.length; i++) {
      const node = shown[i] as NodeInfo;
      const color = cellColor(node.state, loads.cpuAt(loads.indexOf(node.id)), heatLevels);
      cellColors[i] = color;
      if (painted[i] !== color) changed += 1;
    }
    if (changed > 0) {
      for (let c = 0; c < fills.length; c++) {
        g.fillStyle = fills[c] as string;
        for (let i = 0; i < shown.length; i++) {
          if (cellColors[i] === c && painted[i] !== c) {
            g.fillRect((i % perRow) * (CELL + GAP), Math.floor(i / perRow) * (CELL + GAP), CELL, CELL);
            painted[i] = c;
          }
        }
      }
    }
    paintedSelection = selected.size;
    if (selected.size > 0) {
      g.strokeStyle = colors.selected;
      g.lineWidth = 1;
      shown.forEach((node, i) => {
        if (selected.has(node.id)) {
          g.strokeRect((i % perRow) * (CELL + GAP) + 0.5, Math.floor(i / perRow) * (CELL + GAP) + 0.5, CELL - 1, CELL - 1);
        }
      });
    }
  };

  const nodeAt = (event: MouseEvent): NodeInfo | undefined => {
    const box = canvas.getBoundingClientRect();
    const col = Math.floor((event.clientX - box.left) / (CELL + GAP));
    const row = Math.floor((event.clientY - box.top) / (CELL + GAP));
    if (col < 0 || col >= perRow) return undefined;
    return shown[row * perRow + col];
  };
  canvas.addEventListener("mousemove", (event) => {
    const node = nodeAt(event);
    if (!node) {
      tooltip.hidden = true;
      return;
    }
    const load = metrics.loads.get(node.id);
    tooltip.hidden = false;
    tooltip.textContent =
      `${node.name} (${node.group}) · ${STATE_NAMES[node.state]}` +
      (node.stateReason ? `: ${node.stateReason}` : "") +
      (load ? ` · CPU ${format.percent(load.cpuPercent)} · ${format.bytes(load.memoryUsed)}` : "");
    const box = heat.getBoundingClientRect();
    tooltip.style.left = `${Math.min(event.clientX - box.left + 12, box.width - 260)}px`;
    tooltip.style.top = `${event.clientY - box.top + 12}px`;
  });
  canvas.addEventListener("mouseleave", () => {
    tooltip.hidden = true;
  });
  canvas.addEventListener("click", (event) => {
    const node = nodeAt(event);
    if (node) location.hash = `#nodes/${node.id}`;
  });

  const draw = () => {
    const started = bench ? performance.now() : 0;
    if (sortedAt !== farm.membership) {
      sortedAt = farm.membership;
      sorted = [...farm.nodes.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      const names = [...new Set(sorted.map((n) => n.group))].sort();
      const key = names.join("\n");
      if (key !== groups) {
        groups = key;
        const current = groupSelect.value;
        groupSelect.replaceChildren(
          h("option", { value: "" }, "every group"),
          ...names.map((g) => h("option", { value: g }, g)),
        );
        groupSelect.value = names.includes(current) ? current : "";
      }
      orderKey = "";
    }
    // Entries of `sorted` may be stale objects: take each node's latest.
    const latest = sorted.map((n) => farm.nodes.get(n.id) ?? n);
    const filtering = filter.name || filter.group || filter.state !== null || filter.label;
    shown = filtering ? latest.filter((n) => matches(n, filter)) : latest;
    for (const id of selected) if (!farm.nodes.has(id)) selected.delete(id);
    text(
      shownCount,
      farm.synced
        ? `${format.count(shown.length)} of ${format.plural(farm.nodes.size, "node")} shown` +
            (selected.size ? ` · ${format.count(selected.size)} selected` : "")
        : "loading the membership…",
    );
    const heatmap = layout === "heatmap" || (layout === "auto" && shown.length > CARD_LIMIT);
    if (shown.length === 0) {
      text(empty, farm.synced ? (farm.nodes.size ? "No node matches the filter." : "No node has registered yet.") : "Loading…");
      if (grid.firstChild !== empty) replace(grid, empty);
      orderKey = "";
    } else if (heatmap) {
      drawHeatmap();
    } else {
      drawCards();
    }
    detail.refresh();
    if (bench) {
      benchNote(bench.draw, performance.now() - started);
      if (bench.fullGridAt === null && farm.synced && shown.length === farm.nodes.size && shown.length > 0 && shown.every((n) => metrics.loads.indexOf(n.id) >= 0)) {
        bench.fullGridAt = performance.now();
      }
    }
  };
  const schedule = frameScheduler(draw, () => visible);
  farm.addEventListener("change", schedule);
  metrics.addEventListener("change", schedule);
  window.addEventListener("resize", schedule);
  const media = window.matchMedia("(prefers-color-scheme: dark)");
  media.addEventListener("change", () => {
    colors = null;
    schedule();
  });

  return {
    element,
    show() {
      visible = true;
      schedule();
    },
    hide() {
      visible = false;
      detail.close();
    },
    route(path) {
      const id = path[0];
      if (id) detail.open(decodeURIComponent(id));
      else detail.close();
    },
  };
}
