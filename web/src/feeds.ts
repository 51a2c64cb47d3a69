// The page's two permanent streams: the membership (`Discovery.Watch`) and
// the farm's metrics (`Metrics.WatchMetrics`, one snapshot a second, with
// every node's load in compact columns rather than its full metrics), and
// what the page keeps of them: the last ten minutes of the farm's figures,
// and every node's latest load.

import { fromBinary, toBinary } from "@bufbuild/protobuf";

import { type FarmMetrics, FarmMetricsSchema } from "../gen/farm/v1/metrics_pb";
import { api, cancelled, describe } from "./api";
import { follow } from "./live";
import { LoadTable } from "./loads";
import { append, emptySeries, prepend, type Series } from "./series";
import { FarmStore } from "./store";

export type { NodeLoad } from "./loads";
export { HISTORY_SECONDS } from "./series";

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

/** Snapshots a second: the interval asked of WatchMetrics. */
const METRICS_INTERVAL_MS = 1000;

export class MetricsFeed extends EventTarget {
  /** The latest snapshot, or null before the first and while disconnected. */
  latest: FarmMetrics | null = null;
  readonly series: Series = emptySeries();
  /** Every node's latest load, by node id (nodes that never reported have none). */
  readonly loads = new LoadTable();
  /**
   * The control plane's record before the page opened, once it answered:
   * how many of its points the charts took (0: it held nothing older), or
   * why it could not be read.
   */
  history: { added: number } | { problem: string } | null = null;

  /** The stream broke: the figures shown are no longer live. */
  disconnected(): void {
    this.latest = null;
    this.dispatchEvent(new Event("change"));
  }

  add(farm: FarmMetrics): void {
    const started = bench ? performance.now() : 0;
    this.latest = farm;
    append(this.series, farm, METRICS_INTERVAL_MS / 1000);
    this.loads.adopt(farm.loads);
    this.dispatchEvent(new Event("change"));
    if (bench) benchNote(bench.add, performance.now() - started);
  }

  /** Takes the control plane's record of the minutes before the first snapshot. */
  backfill(points: FarmMetrics[]): void {
    this.history = { added: prepend(this.series, points) };
    this.dispatchEvent(new Event("change"));
  }

  /** The record could not be read: the charts start when the page opened. */
  backfillFailed(problem: string): void {
    this.history = { problem };
    this.dispatchEvent(new Event("change"));
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
  let askedHistory = false;
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
        // The minutes before the page opened, once the first snapshot is
        // drawn (not in the way of the page's first second).
        if (!askedHistory) {
          askedHistory = true;
          api.metrics.getFarmHistory({}, { signal }).then(
            (record) => metrics.backfill(record.points),
            (error: unknown) => {
              if (!cancelled(error)) metrics.backfillFailed(describe(error));
            },
          );
        }
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
