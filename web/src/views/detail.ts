// One node in detail (#nodes/ID): what the control plane knows of it, its
// last 60 samples as charts (refreshed every second from
// `Metrics.GetNodeMetrics`), and the events that concern it.

import { timestampDate, timestampMs } from "@bufbuild/protobuf/wkt";

import type { GetNodeMetricsResponse } from "../../gen/farm/v1/metrics_pb";
import { api, cancelled, describe } from "../api";
import { Chart } from "../chart";
import { h, replace, table, text } from "../dom";
import * as format from "../format";
import { STATE_NAMES } from "../store";
import { nodeActionButtons } from "./actions";
import type { ViewContext } from "./view";

const REFRESH_MS = 1000;

export interface Detail {
  element: HTMLElement;
  open(id: string): void;
  close(): void;
  /** The membership changed: show the node's latest facts. */
  refresh(): void;
}

export function nodeDetail(context: ViewContext): Detail {
  const { farm } = context.feeds;
  const title = h("h2", {});
  const facts = h("dl", { class: "facts" });
  const labels = h("div", { class: "labels" });
  const problem = h("p", { class: "error", role: "alert", hidden: true });
  const box = () => h("div", { class: "chart" });
  const chartBoxes = [box(), box(), box(), box()] as const;
  const events = h("div", { class: "node-events" });
  const actions = h("div", { class: "node-actions" });
  const closeButton = h("button", { type: "button", class: "quiet close", "aria-label": "Close the detail" }, "✕");
  const element = h(
    "aside",
    { class: "detail", hidden: true, "aria-label": "Node detail" },
    h("div", { class: "detail-head" }, title, closeButton),
    problem,
    facts,
    labels,
    actions,
    h("h3", {}, "Last 60 samples"),
    h("div", { class: "charts detail-charts" }, ...chartBoxes),
    h("h3", {}, "Events"),
    events,
  );
  closeButton.addEventListener("click", () => {
    location.hash = "#nodes";
  });

  let current: string | null = null;
  let charts: Chart[] | null = null;
  let stop: AbortController | null = null;
  let eventsShown = -1;

  const showFacts = () => {
    if (current === null) return;
    const node = farm.nodes.get(current);
    if (!node) {
      text(title, current);
      facts.replaceChildren(h("dt", {}, "State"), h("dd", {}, farm.synced ? "not a member of the farm (left or never joined)" : "loading…"));
      return;
    }
    text(title, `${node.name}${node.leader ? " ★" : ""}`);
    const rows: [string, string][] = [
      ["State", `${STATE_NAMES[node.state]}${node.stateReason ? ` (${node.stateReason})` : ""}`],
      ["Id", node.id],
      ["Group", `${node.group}${node.leader ? " (leader)" : ""}`],
      ["Address", node.address || "–"],
      ["Runtime id", node.runtimeId || (node.managed ? "not running" : "not managed by this control plane")],
      ["Starts", node.managed ? format.count(node.starts) : "–"],
      ["Config applied", node.configVersion > 0n ? `version ${node.configVersion}` : "none"],
      ["Registered", node.registeredAt ? format.dateTime(timestampDate(node.registeredAt)) : "–"],
      ["Last heartbeat", node.lastHeartbeat ? format.ago(timestampDate(node.lastHeartbeat), new Date()) : "never"],
    ];
    facts.replaceChildren(...rows.flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
    facts.dataset.state = STATE_NAMES[node.state];
    const pairs = Object.entries(node.labels).sort(([a], [b]) => (a < b ? -1 : 1));
    replace(
      labels,
      ...(pairs.length ? pairs.map(([k, v]) => h("span", { class: "label-chip" }, `${k}=${v}`)) : [h("span", { class: "muted" }, "no labels")]),
    );
    const mine = farm.eventsOf(current);
    if (mine.length !== eventsShown) {
      eventsShown = mine.length;
      replace(
        events,
        mine.length
          ? table(["When", "What"], mine.slice(0, 100), (e) => [format.clock(e.at), e.text], { class: "compact" })
          : h("p", { class: "muted" }, "No event since this page opened."),
      );
    }
  };

  const showSamples = (response: GetNodeMetricsResponse) => {
    if (!charts) {
      const [cpu, memory, rps, net] = chartBoxes;
      charts = [
        new Chart(cpu, { title: "CPU (% of its limit)", height: 120, lines: [{ label: "CPU", color: "--series-1", format: format.percent }] }),
        new Chart(memory, {
          title: "Memory",
          height: 120,
          lines: [
            { label: "used", color: "--series-1", format: format.bytes },
            { label: "limit", color: "--series-3", format: format.bytes, dash: [4, 4] },
          ],
        }),
        new Chart(rps, { title: "Requests per second", height: 120, lines: [{ label: "requests", color: "--series-1", format: format.rate }] }),
        new Chart(net, {
          title: "Network",
          height: 120,
          lines: [
            { label: "received", color: "--series-1", format: (v) => `${format.bytes(v)}/s` },
            { label: "sent", color: "--series-2", format: (v) => `${format.bytes(v)}/s` },
          ],
        }),
      ];
    }
    const history = response.history;
    const at = history.map((s) => (s.at ? timestampMs(s.at) / 1000 : 0));
    const [cpu, memory, rps, net] = charts as [Chart, Chart, Chart, Chart];
    cpu.set([at, history.map((s) => s.cpuPercent)]);
    memory.set([at, history.map((s) => Number(s.memoryUsedBytes)), history.map((s) => Number(s.memoryLimitBytes))]);
    rps.set([at, history.map((s) => s.requestsPerSecond)]);
    net.set([at, history.map((s) => s.netRxBytesPerSecond), history.map((s) => s.netTxBytesPerSecond)]);
  };

  const poll = async (id: string, signal: AbortSignal) => {
    while (!signal.aborted) {
      try {
        const response = await api.metrics.getNodeMetrics({ nodeId: id }, { signal });
        problem.hidden = true;
        showSamples(response);
      } catch (error) {
        if (cancelled(error) || signal.aborted) return;
        problem.hidden = false;
        text(problem, `Its metrics: ${describe(error)}`);
      }
      await new Promise((resolve) => setTimeout(resolve, REFRESH_MS));
    }
  };

  return {
    element,
    open(id) {
      if (current === id) return;
      this.close();
      current = id;
      eventsShown = -1;
      element.hidden = false;
      replace(actions, ...nodeActionButtons(context, id));
      showFacts();
      stop = new AbortController();
      void poll(id, stop.signal);
    },
    close() {
      stop?.abort();
      stop = null;
      current = null;
      element.hidden = true;
      for (const chart of charts ?? []) chart.destroy();
      charts = null;
    },
    refresh() {
      showFacts();
    },
  };
}
