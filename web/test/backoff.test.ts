import assert from "node:assert/strict";
import { test } from "node:test";

import { Backoff, sleep } from "../src/backoff";

test("waits double up to the cap, between half and all of each step", () => {
  const low = new Backoff({ initialMs: 100, maxMs: 1000, factor: 2 }, () => 0);
  assert.deepEqual(
    Array.from({ length: 6 }, () => low.next()),
    [50, 100, 200, 400, 500, 500],
  );
  const high = new Backoff({ initialMs: 100, maxMs: 1000, factor: 2 }, () => 1);
  assert.deepEqual(
    Array.from({ length: 6 }, () => high.next()),
    [100, 200, 400, 800, 1000, 1000],
  );
});

test("a success starts again from the first wait", () => {
  const backoff = new Backoff({ initialMs: 100, maxMs: 1000, factor: 2 }, () => 1);
  backoff.next();
  backoff.next();
  assert.equal(backoff.failures, 2);
  backoff.reset();
  assert.equal(backoff.failures, 0);
  assert.equal(backoff.next(), 100);
});

test("sleep ends early when aborted", async () => {
  const stop = new AbortController();
  const started = Date.now();
  const slept = sleep(10_000, stop.signal);
  stop.abort(new Error("stopped"));
  await assert.rejects(slept, /stopped/);
  assert.ok(Date.now() - started < 1000);
});
