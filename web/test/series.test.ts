import assert from "node:assert/strict";
import { test } from "node:test";

import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";

import { FarmMetricsSchema } from "../gen/farm/v1/metrics_pb";
import { HISTORY_SECONDS, append, emptySeries, prepend } from "../src/series";

/** The farm at `seconds` since the epoch, averaging `cpu` percent. */
const farm = (seconds: number, cpu: number) =>
  create(FarmMetricsSchema, { at: timestampFromMs(seconds * 1000), cpuPercentAvg: cpu });

test("live snapshots follow one another, with a break where the page was not connected", () => {
  const s = emptySeries();
  for (const at of [100, 101, 102]) append(s, farm(at, at - 100), 1);
  // Four seconds without a snapshot: more than three intervals.
  append(s, farm(106, 6), 1);
  assert.deepEqual(s.at, [100, 101, 102, 103, 106]);
  assert.deepEqual(s.cpuAvg, [0, 1, 2, null, 6]);
  // No request served: no latency, rather than a zero.
  assert.deepEqual(s.p50Ms, [null, null, null, null, null]);
});

test("the control plane's record goes before the live snapshots, only what is older", () => {
  const s = emptySeries();
  append(s, farm(1000, 50), 1);
  append(s, farm(1001, 51), 1);
  // A point every 5 s; the last one overlaps the live ones and is left out.
  const record = [980, 985, 990, 995, 1000].map((at) => farm(at, at / 100));
  assert.equal(prepend(s, record), 4);
  assert.deepEqual(s.at, [980, 985, 990, 995, 1000, 1001]);
  assert.deepEqual(s.cpuAvg, [9.8, 9.85, 9.9, 9.95, 50, 51]);
  // Every column as long as the times.
  for (const column of Object.values(s)) assert.equal(column.length, s.at.length);
});

test("a hole in the record, or between it and the live snapshots, shows as a break", () => {
  const s = emptySeries();
  append(s, farm(1000, 50), 1);
  // The record stops 40 s before the page opened (the control plane was
  // down), and has a 30 s hole.
  const record = [900, 905, 910, 940, 945, 950, 955, 960].map((at) => farm(at, 1));
  prepend(s, record);
  assert.deepEqual(s.at, [900, 905, 910, 915, 940, 945, 950, 955, 960, 965, 1000]);
  assert.deepEqual(s.cpuAvg, [1, 1, 1, null, 1, 1, 1, 1, 1, null, 50]);
});

test("nothing older than the first live snapshot adds nothing, and an empty series takes the whole record", () => {
  const live = emptySeries();
  append(live, farm(1000, 50), 1);
  assert.equal(prepend(live, [farm(1000, 1), farm(1005, 2)]), 0);
  assert.deepEqual(live.at, [1000]);

  const empty = emptySeries();
  assert.equal(prepend(empty, [farm(10, 1), farm(15, 2)]), 2);
  assert.deepEqual(empty.at, [10, 15]);
});

test("only the last ten minutes are kept, the record's included", () => {
  const s = emptySeries();
  append(s, farm(10_000, 1), 1);
  const record = Array.from({ length: 200 }, (_, i) => farm(10_000 - 1000 + i * 5, 2));
  prepend(s, record);
  assert.ok((s.at[0] ?? 0) >= 10_000 - HISTORY_SECONDS, `starts at ${s.at[0]}`);
  assert.equal(s.at[s.at.length - 1], 10_000);
  for (let at = 10_001; at <= 10_000 + HISTORY_SECONDS + 10; at++) append(s, farm(at, 3), 1);
  assert.ok((s.at[0] ?? 0) >= 10_010, "the record has aged out");
  assert.equal(s.at.length, HISTORY_SECONDS + 1);
});
