// The load test section's logic, apart from the page: the form's values
// checked and turned into a `LoadTestRequest` (an empty field sends 0,
// which the control plane reads as the field's documented default), the
// progress of a run kept second by second for the charts, and the final
// report as the rows the page shows. Pure: tested in test/loadtest.test.ts.

import { create } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";

import {
  type LatencyPercentiles,
  LoadMode,
  type LoadTestProgress,
  type LoadTestReport,
  type LoadTestRequest,
  LoadTestRequestSchema,
} from "../../gen/farm/v1/loadtest_pb";
import { type NodeInfo, NodeState } from "../../gen/farm/v1/node_pb";
import * as format from "../format";

/** Limits the control plane checks (control-plane/src/api/loadtest.rs). */
export const LIMITS = {
  durationS: 600,
  concurrency: 10_000,
  connections: 100,
  streams: 100,
  bytes: 4_000_000,
  delayMs: 60_000,
} as const;

/** What `loadgen run` (and so the control plane) takes for unset fields. */
export const DEFAULTS = {
  durationS: 10,
  closedConcurrency: 16,
  openConcurrency: 1024,
  failCode: 14,
} as const;

/**
 * gRPC status codes by number, as the control plane names them
 * (`DEADLINE_EXCEEDED`): connect's own `Code` names (`DeadlineExceeded`)
 * in gRPC's spelling. Connect spells code 1 `Canceled`; gRPC `CANCELLED`.
 */
export const CODE_NAMES: readonly string[] = Array.from({ length: Code.Unauthenticated + 1 }, (_, code) =>
  code === 0
    ? "OK"
    : code === Code.Canceled
      ? "CANCELLED"
      : (Code[code] ?? String(code)).replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase(),
);

/** What each failure code means to the one reading the error table. */
const CODE_MEANINGS: Record<string, string> = {
  CANCELLED: "the call was cancelled",
  UNKNOWN: "an error the node did not classify",
  INVALID_ARGUMENT: "the node refused the request as invalid",
  DEADLINE_EXCEEDED: "no answer in time",
  NOT_FOUND: "not found",
  ALREADY_EXISTS: "already exists",
  PERMISSION_DENIED: "not allowed",
  RESOURCE_EXHAUSTED: "the node was out of capacity",
  FAILED_PRECONDITION: "not possible in the node's state",
  ABORTED: "aborted",
  OUT_OF_RANGE: "out of range",
  UNIMPLEMENTED: "the node does not offer it",
  INTERNAL: "the node failed",
  UNAVAILABLE: "the node could not be reached or refused to serve",
  DATA_LOSS: "data lost",
  UNAUTHENTICATED: "not authenticated",
  OTHER: "a code gRPC does not define",
};

/** The form as the page holds it: every field as typed. */
export interface LoadForm {
  mode: "unary" | "stream";
  /** Open loop (a fixed rate) or closed loop (as fast as possible). */
  loop: "open" | "closed";
  /** Requests per second in total, open loop. */
  rate: string;
  /** Seconds to measure. */
  duration: string;
  /** "" for every group. */
  group: string;
  /** Requests in flight at most; "" for the default of the loop. */
  concurrency: string;
  connections: string;
  streams: string;
  /** Seconds sent before measuring. */
  warmup: string;
  /** Bytes. */
  payload: string;
  /** Bytes; "" or 0 for the node's own setting. */
  responseBytes: string;
  /** Milliseconds; "" or 0 for the node's own setting. */
  delay: string;
  /** Percent of requests asked to fail. */
  errorRate: string;
  /** gRPC status code number of those failures. */
  failCode: string;
}

export const DEFAULT_FORM: Readonly<LoadForm> = {
  mode: "unary",
  loop: "open",
  rate: "100",
  duration: String(DEFAULTS.durationS),
  group: "",
  concurrency: "",
  connections: "",
  streams: "",
  warmup: "",
  payload: "",
  responseBytes: "",
  delay: "",
  errorRate: "",
  failCode: String(DEFAULTS.failCode),
};

export interface Problem {
  field: keyof LoadForm;
  message: string;
}

export type Checked = { ok: true; request: LoadTestRequest; durationS: number } | { ok: false; problems: Problem[] };

/** A group of the farm as the target select offers it. */
export interface GroupChoice {
  /** "" for every group. */
  group: string;
  healthy: number;
  total: number;
}

/** Every group of `nodes` by name, after "every group"; healthy nodes counted. */
export function groupChoices(nodes: Iterable<NodeInfo>): GroupChoice[] {
  const all: GroupChoice = { group: "", healthy: 0, total: 0 };
  const groups = new Map<string, GroupChoice>();
  for (const node of nodes) {
    const healthy = node.state === NodeState.HEALTHY ? 1 : 0;
    let choice = groups.get(node.group);
    if (!choice) {
      choice = { group: node.group, healthy: 0, total: 0 };
      groups.set(node.group, choice);
    }
    choice.healthy += healthy;
    choice.total += 1;
    all.healthy += healthy;
    all.total += 1;
  }
  return [all, ...[...groups.values()].sort((a, b) => (a.group < b.group ? -1 : a.group > b.group ? 1 : 0))];
}

/** How a group reads in the select: `edge (3 of 4 healthy)`, `Every group (5 healthy)`. */
export function groupLabel(choice: GroupChoice): string {
  const what = choice.group === "" ? "Every group" : choice.group;
  const of = choice.healthy === choice.total ? "" : ` of ${format.count(choice.total)}`;
  return `${what} (${format.count(choice.healthy)}${of} healthy)`;
}

/**
 * Checks the form and makes the request, or says what to fix, field by
 * field. `groups` (when the membership is known) lets a group without a
 * healthy node be caught before sending.
 */
export function checkForm(form: LoadForm, groups: GroupChoice[] | null = null): Checked {
  const problems: Problem[] = [];
  const fail = (field: keyof LoadForm, message: string) => problems.push({ field, message });

  /** A number in [min, max] (whole when asked), `empty` when blank; null when wrong. */
  const number = (
    field: keyof LoadForm,
    what: string,
    rule: { min: number; max: number; whole?: boolean; empty?: number; above?: boolean },
  ): number | null => {
    const raw = form[field].trim();
    if (raw === "") {
      if (rule.empty !== undefined) return rule.empty;
      fail(field, `${what}: required.`);
      return null;
    }
    const value = Number(raw);
    const range = rule.above ? `more than ${rule.min} and at most ${rule.max}` : `from ${rule.min} to ${rule.max}`;
    const kind = rule.whole ? "a whole number" : "a number";
    if (!Number.isFinite(value) || (rule.whole && !Number.isInteger(value))) {
      fail(field, `${what}: give ${kind} ${range}.`);
      return null;
    }
    if ((rule.above ? value <= rule.min : value < rule.min) || value > rule.max) {
      fail(field, `${what}: ${value} is out of range; give ${kind} ${range}.`);
      return null;
    }
    return value;
  };

  const open = form.loop === "open";
  const rate = open ? number("rate", "Rate", { min: 0, max: 10_000_000, above: true }) : 0;
  const durationS = number("duration", "Duration", { min: 0, max: LIMITS.durationS, above: true });
  if (durationS !== null && Math.round(durationS * 1000) < 1) fail("duration", "Duration: at least 1 ms (0.001 s).");
  const concurrency = number("concurrency", "Requests in flight", { min: 1, max: LIMITS.concurrency, whole: true, empty: 0 });
  const connections = number("connections", "Connections per node", { min: 1, max: LIMITS.connections, whole: true, empty: 0 });
  const streams = number("streams", "Streams per connection", { min: 1, max: LIMITS.streams, whole: true, empty: 0 });
  const warmupS = number("warmup", "Warm-up", { min: 0, max: LIMITS.durationS, empty: 0 });
  const payload = number("payload", "Payload", { min: 0, max: LIMITS.bytes, whole: true, empty: 0 });
  const responseBytes = number("responseBytes", "Response size", { min: 0, max: LIMITS.bytes, whole: true, empty: 0 });
  const delayMs = number("delay", "Delay", { min: 0, max: LIMITS.delayMs, whole: true, empty: 0 });
  const errorPercent = number("errorRate", "Error rate", { min: 0, max: 100, empty: 0 });
  const failCode = number("failCode", "Failure code", { min: 1, max: CODE_NAMES.length - 1, whole: true, empty: 0 });

  if (groups !== null) {
    const chosen = groups.find((g) => g.group === form.group);
    const where = form.group === "" ? "the farm" : `group ${form.group}`;
    if (!chosen) fail("group", `Targets: group ${form.group} is no longer in the farm.`);
    else if (chosen.healthy === 0) fail("group", `Targets: no healthy node in ${where} to drive.`);
  }

  if (
    problems.length > 0 ||
    rate === null ||
    durationS === null ||
    concurrency === null ||
    connections === null ||
    streams === null ||
    warmupS === null ||
    payload === null ||
    responseBytes === null ||
    delayMs === null ||
    errorPercent === null ||
    failCode === null
  ) {
    return { ok: false, problems };
  }
  return {
    ok: true,
    durationS: Math.round(durationS * 1000) / 1000,
    request: create(LoadTestRequestSchema, {
      group: form.group,
      mode: form.mode === "stream" ? LoadMode.STREAM : LoadMode.UNARY,
      rate,
      concurrency,
      connections,
      streams,
      durationMs: Math.round(durationS * 1000),
      warmupMs: Math.round(warmupS * 1000),
      payloadBytes: payload,
      responseBytes,
      delayMs,
      errorRate: errorPercent / 100,
      failCode,
    }),
  };
}

/** The requests in flight a request allows, its default filled in. */
export function inFlight(request: LoadTestRequest): number {
  if (request.concurrency > 0) return request.concurrency;
  return request.rate > 0 ? DEFAULTS.openConcurrency : DEFAULTS.closedConcurrency;
}

/** A request in a sentence: `100/s for 10 s, unary, to every group`. */
export function requestSummary(request: LoadTestRequest, nodes: number | null = null): string {
  const pace = request.rate > 0 ? `${format.rate(request.rate)}` : `as fast as ${format.count(inFlight(request))} in flight allow`;
  const mode = request.mode === LoadMode.STREAM ? "streams" : "unary calls";
  const where = request.group === "" ? "every group" : `group ${request.group}`;
  const to = nodes === null ? where : `${format.plural(nodes, "node")} of ${where}`;
  return `${pace} for ${format.duration(request.durationMs)}, ${mode}, to ${to}`;
}

/** A latency column in milliseconds for the charts: null where no request completed. */
type Column = (number | null)[];

/** A run's progress, second by second: what the live charts draw. */
export class RunProgress {
  readonly seconds: number[] = [];
  readonly throughput: number[] = [];
  readonly p50Ms: Column = [];
  readonly p99Ms: Column = [];
  readonly uncorrectedP50Ms: Column = [];
  readonly uncorrectedP99Ms: Column = [];
  requests = 0n;
  errors = 0n;
  connectErrors = 0n;
  last: LoadTestProgress | null = null;

  add(p: LoadTestProgress): void {
    this.last = p;
    this.requests += p.requests;
    this.errors += p.errors;
    this.connectErrors += p.connectErrors;
    const served = p.requests > 0n;
    const ms = (us: bigint) => (served ? Number(us) / 1000 : null);
    this.seconds.push(Number(p.second));
    this.throughput.push(p.throughputRps);
    this.p50Ms.push(ms(p.p50Us));
    this.p99Ms.push(ms(p.p99Us));
    this.uncorrectedP50Ms.push(ms(p.uncorrectedP50Us));
    this.uncorrectedP99Ms.push(ms(p.uncorrectedP99Us));
  }

  /** Seconds measured so far (the last may have been shorter). */
  get measured(): number {
    return this.seconds.length;
  }
}

/** The live line of one second: throughput, errors and latency, corrected and not. */
export function figureLine(p: LoadTestProgress, durationS: number): string {
  const parts = [
    `Second ${p.second} of ${Math.max(1, Math.ceil(durationS))}`,
    `${format.rate(p.throughputRps)}`,
    format.plural(Number(p.errors), "error"),
  ];
  if (p.requests > 0n) {
    parts.push(
      `p50 ${format.micros(p.p50Us)} (uncorrected ${format.micros(p.uncorrectedP50Us)})`,
      `p99 ${format.micros(p.p99Us)} (uncorrected ${format.micros(p.uncorrectedP99Us)})`,
      `max ${format.micros(p.maxUs)}`,
    );
  } else {
    parts.push("no request completed");
  }
  if (p.connectErrors > 0n) parts.push(format.plural(Number(p.connectErrors), "connect error"));
  return parts.join(" · ");
}

/**
 * What the page says of a run stopped by its caller (`why`: "with the Stop
 * button"): the control plane sends no report then.
 */
export function stoppedLine(progress: RunProgress, durationS: number, why: string): string {
  const of = format.duration(durationS * 1000);
  if (progress.measured === 0) return `Stopped ${why} before the first second of ${of} was measured.`;
  return (
    `Stopped ${why} after ${format.plural(progress.measured, "second")} of ${of}: ` +
    `${format.plural(Number(progress.requests), "request")}, ${format.plural(Number(progress.errors), "error")}. ` +
    "A stopped run has no report: below is the last second received."
  );
}

export interface SummaryRow {
  label: string;
  value: string;
  /** Colours the value: good news or bad. */
  tone?: "ok" | "bad";
}

/** A share of requests, `1.25 %`; `–` of none. */
function share(part: bigint, whole: bigint): string {
  return whole > 0n ? format.ratio(Number(part) / Number(whole)) : "–";
}

/** A rate to a tenth below 1000/s (`99.5/s`, not `100/s`, against an asked 100/s). */
function preciseRate(value: number): string {
  if (!(value < 1000 && value >= 0)) return format.rate(value);
  return `${Number.isInteger(value) ? value : value.toFixed(1)}/s`;
}

/** The report's summary table. `askedS`: the duration asked, in seconds. */
export function summaryRows(report: LoadTestReport, askedS: number): SummaryRow[] {
  const open = report.rate > 0;
  const rows: SummaryRow[] = [
    { label: "Requests", value: format.count(report.requests) },
    {
      label: "Errors",
      value: `${format.count(report.errors)} (${share(report.errors, report.requests)})`,
      ...(report.errors > 0n ? { tone: "bad" as const } : {}),
    },
    {
      label: "Throughput",
      value: open
        ? `${preciseRate(report.throughputRps)} of ${preciseRate(report.rate)} asked (${((100 * report.throughputRps) / report.rate).toFixed(1)} %)`
        : `${preciseRate(report.throughputRps)} (closed loop: as fast as possible)`,
    },
    open
      ? report.keptUp
        ? { label: "Kept up", value: "yes: every scheduled request was sent", tone: "ok" }
        : { label: "Kept up", value: "no: requests fell due faster than the nodes answered", tone: "bad" }
      : { label: "Kept up", value: "not measured in closed loop" },
    {
      label: "Duration",
      value: report.interrupted
        ? `${format.duration(report.durationS * 1000)} of ${format.duration(askedS * 1000)} (stopped early)`
        : format.duration(report.durationS * 1000),
      ...(report.interrupted ? { tone: "bad" as const } : {}),
    },
    { label: "Mode", value: report.mode === LoadMode.STREAM ? "stream (WorkStream)" : "unary (Work)" },
  ];
  if (open) {
    rows.splice(4, 0, {
      label: "Missed",
      value:
        report.missed === 0n
          ? "0"
          : `${format.count(report.missed)} scheduled requests never sent (every request in flight was still waiting)`,
      ...(report.missed > 0n ? { tone: "bad" as const } : {}),
    });
  }
  if (report.connectErrors > 0n) {
    rows.push({ label: "Connect errors", value: format.count(report.connectErrors), tone: "bad" });
  }
  return rows;
}

export interface PercentileRow {
  label: string;
  corrected: string;
  uncorrected: string;
}

/** Latency percentiles, corrected (from the scheduled send) and uncorrected. */
export function percentileRows(report: LoadTestReport): PercentileRow[] {
  const c = report.latencyUs;
  const u = report.uncorrectedLatencyUs;
  const none = report.requests === 0n;
  const pick = (f: (l: LatencyPercentiles) => bigint | number) => (l: LatencyPercentiles | undefined) =>
    l && !none ? format.micros(f(l)) : "–";
  const rows: [string, (l: LatencyPercentiles | undefined) => string][] = [
    ["p50", pick((l) => l.p50)],
    ["p90", pick((l) => l.p90)],
    ["p99", pick((l) => l.p99)],
    ["p99.9", pick((l) => l.p999)],
    ["p99.99", pick((l) => l.p9999)],
    ["max", pick((l) => l.max)],
    ["mean", pick((l) => l.mean)],
  ];
  return rows.map(([label, read]) => ({ label, corrected: read(c), uncorrected: read(u) }));
}

export interface ErrorRow {
  code: string;
  meaning: string;
  count: string;
  share: string;
}

/** Failed requests by code, most first. */
export function errorRows(report: LoadTestReport): ErrorRow[] {
  return Object.entries(report.errorsByCode)
    .sort(([a, x], [b, y]) => (x === y ? (a < b ? -1 : 1) : x > y ? -1 : 1))
    .map(([code, n]) => ({
      code,
      meaning: CODE_MEANINGS[code] ?? "",
      count: format.count(n),
      share: share(n, report.requests),
    }));
}

/**
 * The spectrum as chart columns: the x of each percentile (see
 * `percentileX`), then corrected and uncorrected latency in milliseconds.
 */
export function spectrumColumns(report: LoadTestReport, x: (percentile: number) => number): [number[], number[], number[]] {
  const xs: number[] = [];
  const corrected: number[] = [];
  const uncorrected: number[] = [];
  for (const point of report.spectrum) {
    const at = x(point.percentile);
    // Two points on one x (the maximum beside 99.9999) would draw a spike.
    if (xs.length > 0 && at <= (xs[xs.length - 1] ?? 0)) continue;
    xs.push(at);
    corrected.push(Number(point.latencyUs) / 1000);
    uncorrected.push(Number(point.uncorrectedLatencyUs) / 1000);
  }
  return [xs, corrected, uncorrected];
}

/** A failed run in words; `described` is the page's usual wording of the error. */
export function runFailure(code: Code, described: string): string {
  if (code === Code.ResourceExhausted) {
    return "Another load test is running on this control plane (one runs at a time). Try again when it has finished.";
  }
  return `The load test could not run. ${described}`;
}
