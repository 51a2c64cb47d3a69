// Overview: the nodes by state against the desired count, the farm's
// figures now and over the last ten minutes, and the control plane's own
// health.

import { timestampDate } from "@bufbuild/protobuf/wkt";

import type { ControlPlaneStatus } from "../../gen/farm/v1/control_plane_pb";
import { NodeState } from "../../gen/farm/v1/node_pb";
import { api, cancelled, describe } from "../api";
import { Chart } from "../chart";
import { h, text } from "../dom";
import { HISTORY_SECONDS, type MetricsFeed } from "../feeds";
import * as format from "../format";
import { STATE_NAMES } from "../store";
import { frameScheduler, type View, type ViewContext } from "./view";

/** How often the control plane's own figures are asked for. */
const STATUS_EVERY_MS = 5000;

const STATES = [NodeState.HEALTHY, NodeState.STARTING, NodeState.UNHEALTHY, NodeState.STOPPED];

export function overviewView({ feeds, signal }: ViewContext): View {
  const { farm, metrics } = feeds;
  let visible = false;

  const stateFigures = new Map<NodeState, HTMLElement>();
  const tiles = h("section", { class: "tiles", "aria-label": "Nodes by state" });
  const total = h("strong", {}, "–");
  const desired = h("span", { class: "muted" });
  tiles.append(h("div", { class: "tile" }, h("span", { class: "label" }, "Nodes"), total, desired));
  for (const state of STATES) {
    const figure = h("strong", {}, "–");
    stateFigures.set(state, figure);
    tiles.append(
      h(
        "a",
        { class: `tile state-${STATE_NAMES[state]}`, href: `#nodes`, title: `Show the nodes` },
        h("span", { class: "label" }, STATE_NAMES[state]),
        figure,
      ),
    );
  }

  const now = {
    cpu: h("strong", {}, "–"),
    memory: h("strong", {}, "–"),
    rps: h("strong", {}, "–"),
    errors: h("strong", {}, "–"),
    p50: h("strong", {}, "–"),
    p99: h("strong", {}, "–"),
  };
  const figures = h(
    "section",
    { class: "tiles", "aria-label": "The farm now" },
    h("div", { class: "tile" }, h("span", { class: "label" }, "CPU, average"), now.cpu),
    h("div", { class: "tile" }, h("span", { class: "label" }, "Memory used"), now.memory),
    h("div", { class: "tile" }, h("span", { class: "label" }, "Requests"), now.rps),
    h("div", { class: "tile" }, h("span", { class: "label" }, "Error rate"), now.errors),
    h("div", { class: "tile" }, h("span", { class: "label" }, "Latency p50"), now.p50),
    h("div", { class: "tile" }, h("span", { class: "label" }, "Latency p99"), now.p99),
  );

  const box = () => h("div", { class: "chart" });
  const chartBoxes = [box(), box(), box(), box(), box()] as const;
  const charts = h(
    "section",
    { class: "charts", "aria-label": `The last ${HISTORY_SECONDS / 60} minutes` },
    ...chartBoxes,
  );

  // What the charts cover: the control plane's record, then live.
  const coverage = h("p", { class: "muted coverage", role: "status" });

  const health = h("dl", { class: "facts" });
  const healthNote = h("p", { class: "muted" }, "Asking the control plane…");
  const healthBox = h("section", { class: "panel", "aria-label": "Control plane" }, h("h2", {}, "Control plane"), health, healthNote);

  const element = h(
    "div",
    { class: "view overview" },
    h("h1", {}, "Overview"),
    tiles,
    figures,
    h("h2", {}, `The last ${HISTORY_SECONDS / 60} minutes`),
    coverage,
    charts,
    healthBox,
  );

  let made: Chart[] | null = null;
  const makeCharts = () => {
    const [cpu, memory, rps, errors, latency] = chartBoxes;
    made = [
      new Chart(cpu, {
        title: "CPU (% of each node's limit)",
        lines: [
          { label: "average", color: "--series-1", format: format.percent },
          { label: "highest", color: "--series-2", format: format.percent, dash: [4, 4] },
        ],
      }),
      new Chart(memory, {
        title: "Memory",
        lines: [
          { label: "used", color: "--series-1", format: format.bytes },
          { label: "limit", color: "--series-3", format: format.bytes, dash: [4, 4] },
        ],
      }),
      new Chart(rps, {
        title: "Requests per second",
        lines: [{ label: "requests", color: "--series-1", format: format.rate }],
      }),
      new Chart(errors, {
        title: "Error rate",
        lines: [{ label: "failed", color: "--bad", format: (v) => format.ratio(v / 100) }],
      }),
      new Chart(latency, {
        title: "Latency",
        lines: [
          { label: "p50", color: "--series-1", format: (v) => format.micros(v * 1000) },
          { label: "p99", color: "--series-2", format: (v) => format.micros(v * 1000) },
        ],
      }),
    ];
  };

  const draw = () => {
    const counts = new Map<NodeState, number>();
    for (const node of farm.nodes.values()) counts.set(node.state, (counts.get(node.state) ?? 0) + 1);
    text(total, farm.synced ? format.count(farm.nodes.size) : "–");
    for (const [state, figure] of stateFigures) text(figure, farm.synced ? format.count(counts.get(state) ?? 0) : "–");
    const latest = metrics.latest;
    const latency = latest?.latency;
    text(now.cpu, latest ? format.percent(latest.cpuPercentAvg) : "–");
    text(
      now.memory,
      latest ? `${format.bytes(latest.memoryUsedBytes)} of ${format.bytes(latest.memoryLimitBytes)}` : "–",
    );
    text(now.rps, latest ? format.rate(latest.requestsPerSecond) : "–");
    text(now.errors, latest ? format.ratio(latest.errorRate) : "–");
    text(now.p50, latest && latency?.count ? format.micros(latency.p50Us) : "–");
    text(now.p99, latest && latency?.count ? format.micros(latency.p99Us) : "–");
    text(coverage, coverageNote(metrics.series.at[0], metrics.history));
    if (made) {
      const s = metrics.series;
      const [cpu, memory, rps, errors, latencyChart] = made as [Chart, Chart, Chart, Chart, Chart];
      cpu.set([s.at, s.cpuAvg, s.cpuMax]);
      memory.set([s.at, s.memoryUsed, s.memoryLimit]);
      rps.set([s.at, s.requestsPerSecond]);
      errors.set([s.at, s.errorRate]);
      latencyChart.set([s.at, s.p50Ms, s.p99Ms]);
    }
  };
  const schedule = frameScheduler(draw, () => visible);
  farm.addEventListener("change", schedule);
  metrics.addEventListener("change", schedule);

  // The control plane's own figures, every few seconds.
  let previous: { at: number; cpu: number } | null = null;
  const showStatus = (status: ControlPlaneStatus) => {
    const at = performance.now();
    const cpuShare =
      previous && at > previous.at ? ((status.cpuSeconds - previous.cpu) / ((at - previous.at) / 1000)) * 100 : null;
    previous = { at, cpu: status.cpuSeconds };
    text(desired, status.runtime === "none" ? "registered on their own" : `${format.count(status.desiredNodes)} desired`);
    const started = status.startedAt ? timestampDate(status.startedAt) : null;
    const rows: [string, string][] = [
      ["State", status.ready ? "ready" : `not ready: ${status.notReadyReason}`],
      ["Version", status.version],
      ["Runtime", status.runtime],
      ["Up for", started ? format.duration(Date.now() - started.getTime()) : "–"],
      ["CPU", cpuShare === null ? "–" : `${format.percent(cpuShare)} of one core`],
      ["Memory (resident)", format.bytes(status.residentBytes)],
      ["Threads", format.count(status.threads)],
      ["File descriptors", status.maxFds ? `${format.count(status.openFds)} of ${format.count(status.maxFds)}` : format.count(status.openFds)],
      ["Nodes connected", format.count(status.heartbeatStreams)],
      ["Calls answered", `${format.count(status.calls)} (${format.count(status.failedCalls)} failed)`],
      [
        "Catalog",
        `${format.plural(Number(status.catalogNames), "name")}` +
          (status.catalogLineAddress ? `; line protocol on ${status.catalogLineAddress}` : ""),
      ],
    ];
    health.replaceChildren(...rows.flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
    health.classList.toggle("bad", !status.ready);
    text(healthNote, `As of ${format.clock(new Date())}.`);
  };
  const poll = async () => {
    while (!signal.aborted) {
      try {
        showStatus(await api.controlPlane.getStatus({}, { signal }));
      } catch (error) {
        if (cancelled(error)) return;
        previous = null;
        text(healthNote, `Could not ask the control plane: ${describe(error)}`);
      }
      await new Promise((resolve) => setTimeout(resolve, STATUS_EVERY_MS));
    }
  };
  void poll();

  return {
    element,
    show() {
      visible = true;
      // uPlot measures its container: make charts once they are on the page.
      if (!made) makeCharts();
      schedule();
    },
    hide() {
      visible = false;
    },
  };
}

/** Where the charts start, and from what. */
function coverageNote(first: number | undefined, history: MetricsFeed["history"]): string {
  if (first === undefined) return "No figures yet.";
  const since = `Since ${format.clock(new Date(first * 1000))}`;
  if (history === null) return `${since}.`;
  if ("problem" in history) return `${since}, when this page opened: the control plane's earlier figures could not be read (${history.problem}).`;
  if (history.added === 0) return `${since}, when this page opened: the control plane holds no earlier figures (it started since).`;
  return `${since}: the control plane's record until this page opened, then each second.`;
}
