import assert from "node:assert/strict";
import { test } from "node:test";

import { create } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";

import {
  LatencyPercentilesSchema,
  LoadMode,
  LoadTestProgressSchema,
  LoadTestReportSchema,
  LoadTestRequestSchema,
  PercentilePointSchema,
} from "../gen/farm/v1/loadtest_pb";
import { NodeInfoSchema, NodeState } from "../gen/farm/v1/node_pb";
import {
  DEFAULT_FORM,
  type LoadForm,
  RunProgress,
  checkForm,
  errorRows,
  figureLine,
  groupChoices,
  groupLabel,
  inFlight,
  percentileRows,
  runFailure,
  spectrumColumns,
  stoppedLine,
  summaryRows,
} from "../src/views/loadrun";

const form = (changes: Partial<LoadForm> = {}): LoadForm => ({ ...DEFAULT_FORM, ...changes });

/** The problems of a form that must be refused, as `field: message`. */
function refused(changes: Partial<LoadForm>): string[] {
  const checked = checkForm(form(changes));
  assert.equal(checked.ok, false, `refused: ${JSON.stringify(changes)}`);
  return checked.ok ? [] : checked.problems.map((p) => `${p.field}: ${p.message}`);
}

test("the default form is an open-loop unary run of 10 s at 100/s to every group", () => {
  const checked = checkForm(form());
  assert.ok(checked.ok);
  const r = checked.request;
  assert.equal(r.mode, LoadMode.UNARY);
  assert.equal(r.rate, 100);
  assert.equal(r.durationMs, 10_000);
  assert.equal(checked.durationS, 10);
  assert.equal(r.group, "");
  // Left empty: 0, which the control plane reads as each field's default.
  assert.deepEqual(
    [r.concurrency, r.connections, r.streams, r.warmupMs, r.payloadBytes, r.responseBytes, r.delayMs, r.errorRate],
    [0, 0, 0, 0, 0, 0, 0, 0],
  );
  assert.equal(r.failCode, 14, "UNAVAILABLE, as the control plane defaults to");
  assert.equal(inFlight(r), 1024, "open loop's default");
});

test("a closed loop sends rate 0 whatever the rate field says, and every field converts", () => {
  const checked = checkForm(
    form({
      loop: "closed",
      rate: "not read",
      mode: "stream",
      duration: "2.5",
      group: "edge",
      concurrency: "8",
      connections: "2",
      streams: "3",
      warmup: "0.5",
      payload: "512",
      responseBytes: "2048",
      delay: "20",
      errorRate: "5",
      failCode: "8",
    }),
  );
  assert.ok(checked.ok, JSON.stringify(checked));
  const r = checked.request;
  assert.equal(r.rate, 0);
  assert.equal(r.mode, LoadMode.STREAM);
  assert.equal(r.durationMs, 2500);
  assert.equal(r.group, "edge");
  assert.deepEqual([r.concurrency, r.connections, r.streams], [8, 2, 3]);
  assert.equal(r.warmupMs, 500);
  assert.deepEqual([r.payloadBytes, r.responseBytes, r.delayMs], [512, 2048, 20]);
  assert.equal(r.errorRate, 0.05);
  assert.equal(r.failCode, 8);
  assert.equal(inFlight(create(LoadTestRequestSchema, {})), 16, "closed loop's default");
});

test("each bad value is named, with what would be right", () => {
  assert.deepEqual(refused({ rate: "0" }), ["rate: Rate: 0 is out of range; give a number more than 0 and at most 10000000."]);
  assert.match(refused({ rate: "" })[0] ?? "", /^rate: Rate: required/);
  assert.match(refused({ rate: "fast" })[0] ?? "", /^rate: Rate: give a number/);
  assert.match(refused({ duration: "0" })[0] ?? "", /^duration: Duration: 0 is out of range/);
  assert.match(refused({ duration: "601" })[0] ?? "", /at most 600/);
  assert.match(refused({ duration: "0.0001" })[0] ?? "", /at least 1 ms/);
  assert.match(refused({ concurrency: "0" })[0] ?? "", /^concurrency: Requests in flight: 0 is out of range; give a whole number from 1 to 10000/);
  assert.match(refused({ concurrency: "1.5" })[0] ?? "", /whole number/);
  assert.match(refused({ connections: "101" })[0] ?? "", /^connections: /);
  assert.match(refused({ streams: "-1" })[0] ?? "", /^streams: /);
  assert.match(refused({ payload: "4000001" })[0] ?? "", /^payload: /);
  assert.match(refused({ responseBytes: "1e9" })[0] ?? "", /^responseBytes: /);
  assert.match(refused({ delay: "60001" })[0] ?? "", /^delay: /);
  assert.match(refused({ errorRate: "101" })[0] ?? "", /^errorRate: Error rate: 101 is out of range; give a number from 0 to 100/);
  assert.match(refused({ warmup: "-1" })[0] ?? "", /^warmup: /);
  // Every problem at once, not only the first.
  assert.equal(refused({ rate: "-1", duration: "x", delay: "-5" }).length, 3);
  // A bad rate does not matter in closed loop.
  assert.ok(checkForm(form({ loop: "closed", rate: "-1" })).ok);
});

test("groups: every group first, healthy nodes counted, and a group without one is refused", () => {
  const node = (id: string, group: string, state: NodeState) =>
    create(NodeInfoSchema, { id, name: `node-${id}`, group, state });
  const choices = groupChoices([
    node("n1", "edge", NodeState.HEALTHY),
    node("n2", "edge", NodeState.UNHEALTHY),
    node("n3", "core", NodeState.STOPPED),
    node("n4", "default", NodeState.HEALTHY),
  ]);
  assert.deepEqual(
    choices.map((c) => [c.group, c.healthy, c.total]),
    [
      ["", 2, 4],
      ["core", 0, 1],
      ["default", 1, 1],
      ["edge", 1, 2],
    ],
  );
  assert.equal(groupLabel(choices[3]!), "edge (1 of 2 healthy)");
  assert.equal(groupLabel(choices[0]!), "Every group (2 of 4 healthy)");
  assert.equal(groupLabel(choices[2]!), "default (1 healthy)");
  assert.ok(checkForm(form({ group: "edge" }), choices).ok);
  const none = checkForm(form({ group: "core" }), choices);
  assert.ok(!none.ok && none.problems[0]?.message === "Targets: no healthy node in group core to drive.");
  const gone = checkForm(form({ group: "gone" }), choices);
  assert.ok(!gone.ok && gone.problems[0]?.field === "group");
  // Before the membership is known, the control plane judges.
  assert.ok(checkForm(form({ group: "gone" }), null).ok);
});

const progress = (second: number, requests: number, errors: number, us: [number, number, number, number, number]) =>
  create(LoadTestProgressSchema, {
    second: BigInt(second),
    requests: BigInt(requests),
    errors: BigInt(errors),
    throughputRps: requests,
    p50Us: BigInt(us[0]),
    p99Us: BigInt(us[1]),
    maxUs: BigInt(us[2]),
    uncorrectedP50Us: BigInt(us[3]),
    uncorrectedP99Us: BigInt(us[4]),
  });

test("progress is kept second by second; a second without requests is a gap, not a zero", () => {
  const run = new RunProgress();
  run.add(progress(1, 100, 2, [1500, 9000, 12_000, 1200, 8000]));
  run.add(progress(2, 0, 0, [0, 0, 0, 0, 0]));
  run.add(progress(3, 50, 1, [2000, 4000, 5000, 1000, 3000]));
  assert.deepEqual(run.seconds, [1, 2, 3]);
  assert.deepEqual(run.throughput, [100, 0, 50]);
  assert.deepEqual(run.p50Ms, [1.5, null, 2]);
  assert.deepEqual(run.p99Ms, [9, null, 4]);
  assert.deepEqual(run.uncorrectedP50Ms, [1.2, null, 1]);
  assert.deepEqual(run.uncorrectedP99Ms, [8, null, 3]);
  assert.equal(run.requests, 150n);
  assert.equal(run.errors, 3n);
  assert.equal(run.measured, 3);
  assert.equal(run.last?.second, 3n);

  assert.equal(
    figureLine(progress(1, 100, 2, [1500, 9000, 12_000, 1200, 8000]), 10),
    "Second 1 of 10 · 100/s · 2 errors · p50 1.50 ms (uncorrected 1.20 ms) · p99 9.00 ms (uncorrected 8.00 ms) · max 12.0 ms",
  );
  assert.equal(figureLine(progress(2, 0, 0, [0, 0, 0, 0, 0]), 2.5), "Second 2 of 3 · 0.0/s · 0 errors · no request completed");

  assert.equal(
    stoppedLine(run, 10, "with the Stop button"),
    "Stopped with the Stop button after 3 seconds of 10 s: 150 requests, 3 errors. A stopped run has no report: below is the last second received.",
  );
  assert.equal(
    stoppedLine(new RunProgress(), 120, "with the Stop button"),
    "Stopped with the Stop button before the first second of 2 min was measured.",
  );
});

const latency = (base: number) =>
  create(LatencyPercentilesSchema, {
    p50: BigInt(base),
    p90: BigInt(base * 2),
    p99: BigInt(base * 4),
    p999: BigInt(base * 8),
    p9999: BigInt(base * 16),
    max: BigInt(base * 32),
    mean: base * 1.5,
  });

const report = (changes: Record<string, unknown> = {}) =>
  create(LoadTestReportSchema, {
    requests: 1000n,
    errors: 30n,
    errorsByCode: { UNAVAILABLE: 10n, DEADLINE_EXCEEDED: 20n },
    rate: 100,
    throughputRps: 99.5,
    missed: 0n,
    keptUp: true,
    durationS: 10,
    latencyUs: latency(1000),
    uncorrectedLatencyUs: latency(800),
    mode: LoadMode.UNARY,
    spectrum: [
      create(PercentilePointSchema, { percentile: 0, latencyUs: 500n, uncorrectedLatencyUs: 400n }),
      create(PercentilePointSchema, { percentile: 90, latencyUs: 2000n, uncorrectedLatencyUs: 1600n }),
      create(PercentilePointSchema, { percentile: 99.999, latencyUs: 30_000n, uncorrectedLatencyUs: 20_000n }),
      create(PercentilePointSchema, { percentile: 100, latencyUs: 32_000n, uncorrectedLatencyUs: 25_600n }),
    ],
    ...changes,
  });

test("the summary tells throughput against the asked rate, whether it kept up, and an early stop", () => {
  const rows = (r: ReturnType<typeof report>, asked = 10) =>
    Object.fromEntries(summaryRows(r, asked).map((row) => [row.label, `${row.value}${row.tone ? ` [${row.tone}]` : ""}`]));
  const open = rows(report());
  assert.equal(open["Requests"], "1\u2009000");
  assert.equal(open["Errors"], "30 (3.0 %) [bad]");
  assert.equal(open["Throughput"], "99.5/s of 100/s asked (99.5 %)");
  assert.equal(open["Kept up"], "yes: every scheduled request was sent [ok]");
  assert.equal(open["Missed"], "0");
  assert.equal(open["Duration"], "10 s");
  assert.equal(open["Mode"], "unary (Work)");
  assert.equal(open["Connect errors"], undefined, "shown only when there were some");

  const behind = rows(report({ keptUp: false, missed: 1234n, connectErrors: 3n }));
  assert.match(behind["Kept up"] ?? "", /^no: .*\[bad\]$/);
  assert.match(behind["Missed"] ?? "", /^1\u2009234 scheduled requests never sent.*\[bad\]$/);
  assert.equal(behind["Connect errors"], "3 [bad]");

  const closed = rows(report({ rate: 0, errors: 0n, errorsByCode: {}, mode: LoadMode.STREAM }));
  assert.equal(closed["Throughput"], "99.5/s (closed loop: as fast as possible)");
  assert.equal(closed["Missed"], undefined);
  assert.equal(closed["Errors"], "0 (0 %)");
  assert.equal(closed["Mode"], "stream (WorkStream)");

  const early = rows(report({ interrupted: true, durationS: 4.2 }), 60);
  assert.equal(early["Duration"], "4 s of 1 min (stopped early) [bad]");
});

test("percentiles side by side, corrected and uncorrected; none when nothing completed", () => {
  const rows = percentileRows(report());
  assert.deepEqual(
    rows.map((r) => r.label),
    ["p50", "p90", "p99", "p99.9", "p99.99", "max", "mean"],
  );
  assert.deepEqual(rows[0], { label: "p50", corrected: "1.00 ms", uncorrected: "800 µs" });
  assert.deepEqual(rows[5], { label: "max", corrected: "32.0 ms", uncorrected: "25.6 ms" });
  assert.ok(percentileRows(report({ requests: 0n })).every((r) => r.corrected === "–" && r.uncorrected === "–"));
});

test("errors by code, most first, with what the code means and its share", () => {
  assert.deepEqual(errorRows(report()), [
    { code: "DEADLINE_EXCEEDED", meaning: "no answer in time", count: "20", share: "2.0 %" },
    { code: "UNAVAILABLE", meaning: "the node could not be reached or refused to serve", count: "10", share: "1.0 %" },
  ]);
  assert.deepEqual(errorRows(report({ errorsByCode: {} })), []);
});

/** chart.ts's percentile axis (chart.ts itself needs a browser). */
const percentileX = (p: number) => 1 / (1 - Math.min(p, 99.9999) / 100);

test("the spectrum plots on the percentile axis, up to 99.999 and the maximum", () => {
  const [xs, corrected, uncorrected] = spectrumColumns(report(), percentileX);
  assert.equal(xs.length, 4);
  assert.equal(xs[0], 1, "0 % sits at the start of the log axis");
  assert.ok(Math.abs((xs[1] ?? 0) - 10) < 1e-9, "90 % one decade on");
  assert.ok(xs.every((x, i) => i === 0 || x > (xs[i - 1] ?? 0)), `rising: ${xs}`);
  assert.deepEqual(corrected, [0.5, 2, 30, 32]);
  assert.deepEqual(uncorrected, [0.4, 1.6, 20, 25.6]);
});

test("a busy control plane reads as another load test running", () => {
  assert.equal(
    runFailure(Code.ResourceExhausted, "The control plane is busy: a load test is already running"),
    "Another load test is running on this control plane (one runs at a time). Try again when it has finished.",
  );
  assert.equal(
    runFailure(Code.FailedPrecondition, "Not possible in the current state: no healthy node matches the selection"),
    "The load test could not run. Not possible in the current state: no healthy node matches the selection",
  );
});
