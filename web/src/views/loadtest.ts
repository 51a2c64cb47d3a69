// Load test: `LoadTest.Run` from the page. A form (mode, pace, duration,
// targets by group, the rest folded away), then the run live (throughput
// and latency each second, corrected and uncorrected), then the report:
// the summary, percentiles, latency by percentile and the errors by code.
//
// The run's stream is the page's third connection to the control plane
// (besides membership and metrics), and the only one this section opens.
// Stop, or leaving the section, cancels the call: the control plane stops
// a run whose caller left, and sends no report then, so the page keeps the
// last progress it received.

import { LoadTest, type LoadTestReport, type LoadTestRequest, type LoadTestStarted } from "../../gen/farm/v1/loadtest_pb";
import { client, cancelled, codeOf, describe } from "../api";
import { Chart, percentileX } from "../chart";
import { h, replace, table, text } from "../dom";
import * as format from "../format";
import {
  CODE_NAMES,
  DEFAULT_FORM,
  DEFAULTS,
  LIMITS,
  type LoadForm,
  RunProgress,
  checkForm,
  errorRows,
  figureLine,
  groupChoices,
  groupLabel,
  percentileRows,
  requestSummary,
  runFailure,
  spectrumColumns,
  stoppedLine,
  summaryRows,
} from "./loadrun";
import { frameScheduler, type View, type ViewContext } from "./view";

/** This section's service (its client loads with the section). */
const loadTestApi = client(LoadTest);

/** Latency in milliseconds, as axes and legends read it. */
const ms = (v: number) => format.micros(v * 1000);

export function loadTestView(context: ViewContext): View {
  const { session, feeds } = context;
  const farm = feeds.farm;
  let visible = false;

  // The form. Every control is guarded: a viewer sees it disabled, with why.
  type Control = HTMLInputElement | HTMLSelectElement;
  const controls = new Map<keyof LoadForm, Control>();
  const field = <T extends Control>(name: keyof LoadForm, control: T): T => {
    control.name = name;
    control.id = `loadtest-${name}`;
    controls.set(name, session.guard(control));
    return control;
  };
  const input = (name: keyof LoadForm, attributes: Record<string, string | number>) =>
    field(name, h("input", { type: "number", value: DEFAULT_FORM[name], ...attributes }));
  const options = (pairs: [string, string][]) => pairs.map(([value, label]) => h("option", { value }, label));

  const mode = field(
    "mode",
    h("select", {}, ...options([["unary", "unary (Work)"], ["stream", "stream (WorkStream)"]])),
  );
  const loop = field(
    "loop",
    h(
      "select",
      {},
      ...options([
        ["open", "open loop: a fixed rate"],
        ["closed", "closed loop: flat out"],
      ]),
    ),
  );
  const rate = input("rate", { min: 0, step: "any", class: "narrow" });
  const duration = input("duration", { min: 0, max: LIMITS.durationS, step: "any", class: "narrow" });
  const group = field("group", h("select", {}, h("option", { value: "" }, "Every group")));
  const concurrency = input("concurrency", { min: 1, max: LIMITS.concurrency, step: 1, class: "narrow" });
  const connections = input("connections", { min: 1, max: LIMITS.connections, step: 1, class: "narrow", placeholder: "1" });
  const streams = input("streams", { min: 1, max: LIMITS.streams, step: 1, class: "narrow", placeholder: "1" });
  const warmup = input("warmup", { min: 0, max: LIMITS.durationS, step: "any", class: "narrow", placeholder: "0" });
  const payload = input("payload", { min: 0, max: LIMITS.bytes, step: 1, class: "narrow", placeholder: "0" });
  const responseBytes = input("responseBytes", { min: 0, max: LIMITS.bytes, step: 1, class: "narrow", placeholder: "node's" });
  const delay = input("delay", { min: 0, max: LIMITS.delayMs, step: 1, class: "narrow", placeholder: "node's" });
  const errorRate = input("errorRate", { min: 0, max: 100, step: "any", class: "narrow", placeholder: "0" });
  const failCode = field(
    "failCode",
    h("select", {}, ...options(CODE_NAMES.slice(1).map((name, i): [string, string] => [String(i + 1), `${i + 1} ${name}`]))),
  );
  failCode.value = DEFAULT_FORM.failCode;

  /** A labelled control with a hint under it. */
  const labelled = (control: Control, label: string, hint = "", unit = "") =>
    h(
      "div",
      { class: "lt-field" },
      h("label", { for: control.id }, label),
      h("span", { class: "lt-control" }, control, unit ? h("span", { class: "muted" }, unit) : null),
      hint ? h("span", { class: "lt-hint muted" }, hint) : null,
    );
  const rateField = labelled(rate, "Rate", "requests per second, across all targets", "req/s");
  const concurrencyHint = h("span", {});
  const advanced = h(
    "details",
    { class: "lt-advanced" },
    h("summary", {}, "Advanced: requests in flight, connections, sizes, delay, failures"),
    h(
      "div",
      { class: "lt-grid" },
      labelled(concurrency, "Requests in flight", "", "at most"),
      labelled(connections, "Connections", `HTTP/2 connections per node, 1 to ${LIMITS.connections}`, "per node"),
      labelled(streams, "Streams", `per connection, stream mode only, 1 to ${LIMITS.streams}`, "per conn."),
      labelled(warmup, "Warm-up", "sent before measuring, not in the report", "s"),
      labelled(payload, "Payload", `request size, 0 to ${format.count(LIMITS.bytes)}`, "bytes"),
      labelled(responseBytes, "Response size", "empty or 0: the node's configured size", "bytes"),
      labelled(delay, "Delay", "before each answer; empty or 0: the node's configured delay", "ms"),
      labelled(errorRate, "Error rate", "share of requests asked to fail", "%"),
      labelled(failCode, "Failure code", "the status those requests fail with"),
    ),
  );
  concurrency.parentElement?.parentElement?.append(concurrencyHint);
  concurrencyHint.className = "lt-hint muted";

  const problems = h("ul", { class: "lt-problems error", role: "alert", hidden: true });
  const startButton = session.guard(h("button", { type: "submit", class: "primary" }, "Start load test"));
  const stopButton = h("button", { type: "button", class: "danger", hidden: true }, "Stop");
  const fieldset = h(
    "fieldset",
    {},
    h(
      "div",
      { class: "lt-grid" },
      labelled(mode, "Mode", "unary: one call per request; stream: requests as messages on long-lived streams"),
      labelled(group, "Targets", "the healthy nodes of a group, or of every group"),
      labelled(loop, "Pace", "closed loop: as fast as the requests in flight allow"),
      rateField,
      labelled(duration, "Duration", `measured time, at most ${LIMITS.durationS} s`, "s"),
    ),
    advanced,
  );
  const form = h(
    "form",
    { class: "panel lt-form", novalidate: true, "aria-label": "Load test" },
    session.canAct ? null : h("p", { class: "muted why-not" }, session.whyNot),
    fieldset,
    problems,
    h("div", { class: "buttons" }, startButton, stopButton),
  );

  // The run, live.
  const runTitle = h("h2", {}, "Run");
  const status = h("p", { class: "lt-status", role: "status" });
  const bar = h("progress", { max: 1, value: 0, "aria-label": "Seconds measured" });
  const figures = h("p", { class: "lt-figures" }, "–");
  const throughputBox = h("div", { class: "chart lt-throughput" });
  const latencyBox = h("div", { class: "chart lt-latency" });
  const runSection = h(
    "section",
    { class: "lt-run", "aria-label": "Run", hidden: true },
    runTitle,
    status,
    bar,
    figures,
    h("div", { class: "charts lt-charts" }, throughputBox, latencyBox),
  );

  // The report.
  const reportSection = h("section", { class: "lt-report", "aria-label": "Report", hidden: true });

  const element = h(
    "div",
    { class: "view loadtest" },
    h("h1", {}, "Load test"),
    h(
      "p",
      { class: "muted" },
      "The control plane drives the farm's healthy nodes through their Workload service, with the engine of ",
      h("code", {}, "loadgen run"),
      ", and streams each second's figures, then the report. One load test runs at a time; Stop, or leaving this section, ends it.",
    ),
    form,
    runSection,
    reportSection,
  );

  // The pace decides which fields matter and what the defaults are.
  const paced = () => {
    const open = loop.value === "open";
    rateField.hidden = !open;
    const fallback = open ? DEFAULTS.openConcurrency : DEFAULTS.closedConcurrency;
    concurrency.placeholder = String(fallback);
    text(
      concurrencyHint,
      open
        ? `empty: ${fallback}; scheduled requests beyond it are missed, 1 to ${format.count(LIMITS.concurrency)}`
        : `empty: ${fallback}; the closed loop keeps this many busy, 1 to ${format.count(LIMITS.concurrency)}`,
    );
    streams.disabled = !session.canAct || mode.value !== "stream";
  };
  loop.addEventListener("change", paced);
  mode.addEventListener("change", paced);
  paced();

  // The target groups, from the live membership.
  const drawGroups = () => {
    const choices = groupChoices(farm.nodes.values());
    const chosen = group.value;
    const present = choices.some((c) => c.group === chosen);
    const wanted = [
      ...choices.map((c) => [c.group, groupLabel(c)] as const),
      ...(present ? [] : [[chosen, `${chosen}: no longer in the farm`] as const]),
    ];
    const current = [...group.options].map((o) => [o.value, o.textContent ?? ""] as const);
    if (current.length === wanted.length && current.every(([v, l], i) => v === wanted[i]?.[0] && l === wanted[i]?.[1])) return;
    group.replaceChildren(...wanted.map(([value, label]) => h("option", { value }, label)));
    group.value = chosen;
  };
  farm.addEventListener("change", frameScheduler(drawGroups, () => visible));

  const read = (): LoadForm => {
    const form = { ...DEFAULT_FORM };
    for (const [name, control] of controls) (form as Record<keyof LoadForm, string>)[name] = control.value;
    return form as LoadForm;
  };

  const showProblems = (list: { field: keyof LoadForm; message: string }[]) => {
    for (const control of controls.values()) control.removeAttribute("aria-invalid");
    problems.hidden = list.length === 0;
    problems.replaceChildren(...list.map((p) => h("li", {}, p.message)));
    for (const p of list) {
      const control = controls.get(p.field);
      control?.setAttribute("aria-invalid", "true");
      if (p.field !== "mode" && p.field !== "loop" && p.field !== "group" && p.field !== "failCode" && p.field !== "rate" && p.field !== "duration") {
        advanced.open = true;
      }
    }
  };

  // One run at a time from this page.
  let running: AbortController | null = null;
  let stopWhy = "";
  let charts: Chart[] = [];
  let spectrumChart: Chart | null = null;

  const stop = (why: string) => {
    if (!running) return;
    stopWhy = why;
    running.abort();
  };
  stopButton.addEventListener("click", () => stop("with the Stop button"));
  context.signal.addEventListener("abort", () => stop("as the page stopped"));

  const busy = (on: boolean) => {
    fieldset.disabled = on;
    startButton.disabled = on || !session.canAct;
    stopButton.hidden = !on;
    element.classList.toggle("running", on);
  };

  const makeRunCharts = (request: LoadTestRequest, durationS: number) => {
    for (const chart of charts) chart.destroy();
    const xRange: [number, number] = [1, Math.max(2, Math.ceil(durationS))];
    charts = [
      new Chart(throughputBox, {
        title: "Throughput (requests per second)",
        x: "seconds",
        xRange,
        lines: [
          { label: "completed", color: "--series-1", format: format.rate },
          ...(request.rate > 0 ? [{ label: "asked", color: "--series-3", format: format.rate, dash: [4, 4] }] : []),
        ],
      }),
      new Chart(latencyBox, {
        title: "Latency each second",
        x: "seconds",
        xRange,
        lines: [
          { label: "p50", color: "--series-1", format: ms },
          { label: "p99", color: "--series-2", format: ms },
          { label: "p50 uncorrected", color: "--series-1", format: ms, dash: [4, 4] },
          { label: "p99 uncorrected", color: "--series-2", format: ms, dash: [4, 4] },
        ],
      }),
    ];
  };

  const drawProgress = (progress: RunProgress, request: LoadTestRequest) => {
    const [throughput, latency] = charts;
    throughput?.set([
      progress.seconds,
      progress.throughput,
      ...(request.rate > 0 ? [progress.seconds.map(() => request.rate)] : []),
    ]);
    latency?.set([progress.seconds, progress.p50Ms, progress.p99Ms, progress.uncorrectedP50Ms, progress.uncorrectedP99Ms]);
  };

  const startedLine = (started: LoadTestStarted) => {
    const names = started.nodeIds.map((id) => farm.nodes.get(id)?.name ?? id);
    const shown = names.length > 6 ? `${names.slice(0, 6).join(", ")} and ${names.length - 6} more` : names.join(", ");
    return `Driving ${format.plural(started.nodes, "node")}: ${shown}.`;
  };

  const showReport = (report: LoadTestReport, request: LoadTestRequest, durationS: number, nodes: number | null) => {
    spectrumChart?.destroy();
    spectrumChart = null;
    const summary = summaryRows(report, durationS);
    const percentiles = percentileRows(report);
    const errors = errorRows(report);
    const spectrumBox = h("div", { class: "chart lt-spectrum" });
    replace(
      reportSection,
      h("h2", {}, report.interrupted ? "Report (stopped early)" : "Report"),
      h("p", { class: "muted" }, `Asked: ${requestSummary(request, nodes)}.`),
      h(
        "div",
        { class: "lt-tables" },
        table(["", ""], summary, (row) => [row.label, row.tone ? h("span", { class: row.tone }, row.value) : row.value], {
          class: "lt-summary",
          "aria-label": "Summary",
        }),
        table(["Latency", "Corrected", "Uncorrected"], percentiles, (row) => [row.label, row.corrected, row.uncorrected], {
          class: "lt-percentiles",
          "aria-label": "Latency percentiles",
        }),
      ),
      h(
        "p",
        { class: "muted lt-note" },
        report.rate > 0
          ? "Corrected latency counts from when each request was due (open loop: coordinated omission corrected); uncorrected, from when it was sent."
          : "In closed loop a request is sent when it is due: corrected and uncorrected latency are the same.",
      ),
      report.requests > 0n ? spectrumBox : h("p", { class: "muted" }, "No request completed: no latency to plot."),
      h("h3", {}, "Errors"),
      errors.length
        ? table(["Code", "Meaning", "Requests", "Share"], errors, (row) => [row.code, row.meaning, row.count, row.share], {
            class: "lt-errors",
            "aria-label": "Errors by code",
          })
        : h("p", { class: "ok lt-no-errors" }, report.requests > 0n ? "No request failed." : "None."),
    );
    reportSection.hidden = false;
    if (report.requests > 0n) {
      spectrumChart = new Chart(spectrumBox, {
        title: "Latency by percentile",
        x: "percentile",
        logY: true,
        height: 240,
        lines: [
          { label: "corrected", color: "--series-2", format: ms },
          { label: "uncorrected", color: "--series-1", format: ms, dash: [4, 4] },
        ],
      });
      spectrumChart.set(spectrumColumns(report, percentileX));
    }
  };

  const run = async () => {
    if (running) return;
    const checked = checkForm(read(), farm.synced ? groupChoices(farm.nodes.values()) : null);
    if (!checked.ok) {
      showProblems(checked.problems);
      problems.querySelector("li")?.scrollIntoView({ block: "nearest" });
      return;
    }
    showProblems([]);
    const { request, durationS } = checked;
    const controller = new AbortController();
    running = controller;
    stopWhy = "";
    busy(true);
    const progress = new RunProgress();
    let report: LoadTestReport | null = null;
    let nodes: number | null = null;
    runSection.hidden = false;
    reportSection.hidden = true;
    spectrumChart?.destroy();
    spectrumChart = null;
    text(runTitle, "Running");
    text(status, `Starting: ${requestSummary(request)}…`);
    status.className = "lt-status";
    bar.max = Math.max(1, Math.ceil(durationS));
    bar.value = 0;
    text(figures, "Waiting for the first second…");
    makeRunCharts(request, durationS);
    drawProgress(progress, request);
    try {
      for await (const event of loadTestApi.run(request, { signal: controller.signal })) {
        const e = event.event;
        switch (e.case) {
          case "started":
            nodes = e.value.nodes;
            text(status, `${startedLine(e.value)} ${requestSummary(request, nodes)}.`);
            break;
          case "progress":
            progress.add(e.value);
            bar.value = Math.min(bar.max, Number(e.value.second));
            text(figures, figureLine(e.value, durationS));
            drawProgress(progress, request);
            break;
          case "report":
            report = e.value;
            break;
          default:
            break;
        }
      }
      if (report) {
        text(runTitle, report.interrupted ? "Stopped early" : "Finished");
        text(
          status,
          report.interrupted
            ? `The control plane stopped the run early (it is shutting down): the report covers ${format.duration(report.durationS * 1000)}.`
            : `Finished: ${format.plural(Number(report.requests), "request")} in ${format.duration(report.durationS * 1000)}.`,
        );
        bar.value = bar.max;
        showReport(report, request, durationS, nodes);
      } else {
        text(runTitle, "Ended");
        status.className = "lt-status error";
        text(status, "The stream ended without a report.");
      }
    } catch (error) {
      if (controller.signal.aborted || cancelled(error)) {
        text(runTitle, "Stopped");
        text(status, stoppedLine(progress, durationS, stopWhy || "by the browser"));
      } else if (nodes === null) {
        // Refused before it started: said by the form, not as a run.
        runSection.hidden = true;
        problems.hidden = false;
        problems.replaceChildren(h("li", {}, runFailure(codeOf(error), describe(error))));
      } else {
        text(runTitle, "Failed");
        status.className = "lt-status error";
        text(status, runFailure(codeOf(error), describe(error)));
      }
    } finally {
      running = null;
      busy(false);
      paced();
    }
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    void run();
  });

  return {
    element,
    show() {
      visible = true;
      drawGroups();
    },
    hide() {
      visible = false;
      stop("when you left the Load test section");
    },
  };
}
