// The farm's figures over time, as the overview's charts draw them: one
// column per series (uPlot's layout), the last ten minutes of them. Live
// snapshots add to the end; the control plane's own record of the minutes
// before the page opened (`Metrics.GetFarmHistory`) goes before them. A
// stretch with nothing known (the page was not connected, the control
// plane was down) shows as a break in the lines, not as a slope.
// Pure of I/O: tested in test/series.test.ts.

import { timestampMs } from "@bufbuild/protobuf/wkt";

import type { FarmMetrics } from "../gen/farm/v1/metrics_pb";

/** Seconds of history the overview's charts cover. */
export const HISTORY_SECONDS = 600;

/** A series' values; null where nothing is known. */
export type Column = (number | null)[];

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

export function emptySeries(): Series {
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

/** When `farm` was taken, in seconds since the epoch (now if it does not say). */
export function secondsOf(farm: FarmMetrics): number {
  return farm.at ? timestampMs(farm.at) / 1000 : Date.now() / 1000;
}

/**
 * Appends `farm`, one of points `spacing` seconds apart: after a break when
 * it comes more than three spacings after the last point. Keeps the last
 * ten minutes.
 */
export function append(s: Series, farm: FarmMetrics, spacing: number): void {
  const at = secondsOf(farm);
  const last = s.at[s.at.length - 1];
  if (last !== undefined && at - last > 3 * spacing) push(s, last + spacing, null);
  push(s, at, farm);
  trim(s, at);
}

/**
 * Puts the control plane's record (oldest first) before what `s` holds:
 * only its points older than the first one held, with a break wherever
 * two are further apart than three times the record's usual spacing.
 * Returns how many points it added.
 */
export function prepend(s: Series, history: readonly FarmMetrics[]): number {
  const first = s.at[0];
  const older = first === undefined ? [...history] : history.filter((farm) => secondsOf(farm) < first);
  if (older.length === 0) return 0;
  const spacing = usualSpacing(older.map(secondsOf));
  const before = emptySeries();
  for (const farm of older) append(before, farm, spacing);
  const lastBefore = before.at[before.at.length - 1];
  if (first !== undefined && lastBefore !== undefined && first - lastBefore > 3 * spacing) {
    push(before, lastBefore + spacing, null);
  }
  const added = before.at.length;
  for (const key of Object.keys(s) as (keyof Series)[]) {
    (s[key] as (number | null)[]).unshift(...(before[key] as (number | null)[]));
  }
  const newest = s.at[s.at.length - 1];
  if (newest !== undefined) trim(s, newest);
  return added;
}

/** The median gap between consecutive times (1 s when there are fewer than two). */
function usualSpacing(times: number[]): number {
  const gaps = times.slice(1).map((t, i) => t - (times[i] as number)).sort((a, b) => a - b);
  return gaps[Math.floor(gaps.length / 2)] ?? 1;
}

function push(s: Series, at: number, farm: FarmMetrics | null): void {
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

/** Drops what is more than ten minutes older than `newest`. */
function trim(s: Series, newest: number): void {
  const cutoff = newest - HISTORY_SECONDS;
  let drop = 0;
  while (drop < s.at.length && (s.at[drop] ?? newest) < cutoff) drop += 1;
  if (drop > 0) for (const column of Object.values(s) as Column[]) column.splice(0, drop);
}
