// The page's two permanent streams: the membership (`Discovery.Watch`) and
// the farm's metrics (`Metrics.WatchMetrics`, one snapshot a second, with
// every node's load in compact columns rather than its full metrics), and
// what the page keeps of them: the last ten minutes of the farm's figures,
// and every node's latest load.

import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";

import { type FarmMetrics, FarmMetricsSchema } from "../gen/farm/v1/metrics_pb";
import { api } from "./api";
import { follow } from "./live";
import { LoadTable } from "./loads";
import { FarmStore } from "./store";

export type { NodeLoad } from "./loads";

/**
 * Figures for the dashboard benchmark (control-plane/benches/dashboard.rs),
 * kept only when the page's URL has `?bench`: the milliseconds each
 * snapshot took to take in (`add`) and each grid draw took (`draw`), and
 * when (`performance.now()`) the membership was first complete
 * (`syncedAt`), the first snapshot came (`metricsAt`) and the grid first
 * showed every node with its load (`fullGridAt`). Nothing else reads them.
 */
export interface BenchFigures {
  add: number[];
  draw: number[];
  syncedAt: number | null;
  metricsAt: number | null;
  fullGridAt: number | null;
  /** Median milliseconds to decode the latest snapshot, as its stream did, over `times` runs. */
  decode(times: number): number;
}

export const bench: BenchFigures | null = new URLSearchParams(location.search).has("bench")
  ? { add: [], draw: [], syncedAt: null, metricsAt: null, fullGridAt: null, decode: () => Number.NaN }
  : null;
if (bench) (window as unknown as { __farmBench: BenchFigures }).__farmBench = bench;

/** Notes one figure of the benchmark (kept to the last 10,000). */
export function benchNote(list: number[], ms: number): void {
  list.push(ms);
  if (list.length > 10_000) list.shift();
}

/** Seconds of history the overview's charts cover. */
export const HISTORY_SECONDS = 600;
/** Snapshots a second: the interval asked of WatchMetrics. */
const METRICS_INTERVAL_MS = 1000;

/** A series' values; null where the page was not connected. */
export type Column = (number | null)[];

/** The farm's figures over time, one column per series (uPlot's layout). */
export interface Series {
  /** Seconds since the epoch. */
  at: number[];
  cpuAvg: Column;
  cpuMax: Column;
  memoryUsed: Column;
  memoryLimit: Column;
  requestsPerSecond: Column;
  errorRate: Column;
  p50Ms: Column;
  p99Ms: Column;
}

function emptySeries(): Series {
  return {
    at: [],
    cpuAvg: [],
    cpuMax: [],
    memoryUsed: [],
    memoryLimit: [],
    requestsPerSecond: [],
    errorRate: [],
    p50Ms: [],
    p99Ms: [],
  };
}

export class MetricsFeed extends EventTarget {
  /** The latest snapshot, or null before the first and while disconnected. */
  latest: FarmMetrics | null = null;
  readonly series: Series = emptySeries();
  /** Every node's latest load, by node id (nodes that never reported have none). */
  readonly loads = new LoadTable();

  /** The stream broke: the figures shown are no longer live. */
  disconnected(): void {
    this.latest = null;
    this.dispatchEvent(new Event("change"));
  }

  add(farm: FarmMetrics): void {
    const started = bench ? performance.now() : 0;
    this.latest = farm;
    const s = this.series;
    const at = farm.at ? timestampMs(farm.at) / 1000 : Date.now() / 1000;
    // A gap (the page was disconnected) shows as a break in the lines.
    const last = s.at[s.at.length - 1];
    if (last !== undefined && at - last > 3 * (METRICS_INTERVAL_MS / 1000)) {
      this.push(last + 1, null);
    }
    this.push(at, farm);
    const cutoff = at - HISTORY_SECONDS;
    let drop = 0;
    while (drop < s.at.length && (s.at[drop] ?? at) < cutoff) drop += 1;
    if (drop > 0) for (const column of Object.values(s) as Column[]) column.splice(0, drop);
    this.loads.adopt(farm.loads);
    this.dispatchEvent(new Event("change"));
    if (bench) benchNote(bench.add, performance.now() - started);
  }

  private push(at: number, farm: FarmMetrics | null): void {
    const s = this.series;
    const value = (f: (m: FarmMetrics) => number) => (farm === null ? null : f(farm));
    s.at.push(at);
    s.cpuAvg.push(value((m) => m.cpuPercentAvg));
    s.cpuMax.push(value((m) => m.cpuPercentMax));
    s.memoryUsed.push(value((m) => Number(m.memoryUsedBytes)));
    s.memoryLimit.push(value((m) => Number(m.memoryLimitBytes)));
    s.requestsPerSecond.push(value((m) => m.requestsPerSecond));
    s.errorRate.push(value((m) => m.errorRate * 100));
    // No request served: no latency (a gap, not a zero).
    const served = farm !== null && (farm.latency?.count ?? 0n) > 0n;
    s.p50Ms.push(served ? (farm.latency?.p50Us ?? 0) / 1000 : null);
    s.p99Ms.push(served ? (farm.latency?.p99Us ?? 0) / 1000 : null);
  }
}

/** The feeds every view reads. */
export interface Feeds {
  farm: FarmStore;
  metrics: MetricsFeed;
}

/** Starts both streams; they run until `signal` aborts. */
export function startFeeds(signal: AbortSignal): Feeds {
  const farm = new FarmStore();
  const metrics = new MetricsFeed();
  follow(
    "membership",
    {
      // Snapshots in batches: 10,000 nodes are 10 messages, not 10,000.
      open: (s) => api.discovery.watch({ fromRevision: farm.revision, batchSnapshot: true }, { signal: s }),
      message: (event) => {
        farm.apply(event);
        if (bench && farm.synced) bench.syncedAt ??= performance.now();
      },
      broken: () => farm.disconnected(),
    },
    signal,
  );
  follow(
    "metrics",
    {
      open: (s) =>
        api.metrics.watchMetrics({ intervalMs: METRICS_INTERVAL_MS, includeLoads: true }, { signal: s }),
      message: (snapshot) => {
        if (bench) bench.metricsAt ??= performance.now();
        metrics.add(snapshot);
      },
      broken: () => metrics.disconnected(),
      // Three missed snapshots: the control plane is gone or stuck.
      silenceMs: 3 * METRICS_INTERVAL_MS + 500,
    },
    signal,
  );
  if (bench) {
    bench.decode = (times) => {
      if (!metrics.latest) return Number.NaN;
      const bytes = toBinary(FarmMetricsSchema, metrics.latest);
      const runs: number[] = [];
      for (let i = 0; i < times; i++) {
        const started = performance.now();
        fromBinary(FarmMetricsSchema, bytes);
        runs.push(performance.now() - started);
      }
      return runs.sort((a, b) => a - b)[Math.floor(runs.length / 2)] ?? Number.NaN;
    };
  }
  return { farm, metrics };
}
