import assert from "node:assert/strict";
import { test } from "node:test";

import * as format from "../src/format";

test("bytes use binary units and whole bytes below 1 KiB", () => {
  assert.equal(format.bytes(0), "0 B");
  assert.equal(format.bytes(1023), "1023 B");
  assert.equal(format.bytes(1536), "1.5 KiB");
  assert.equal(format.bytes(128n * 1024n * 1024n), "128 MiB");
  assert.equal(format.bytes(24 * 1024 ** 3), "24 GiB");
  assert.equal(format.bytes(-1), "–");
});

test("latencies pick their unit", () => {
  assert.equal(format.micros(850), "850 µs");
  assert.equal(format.micros(1250), "1.25 ms");
  assert.equal(format.micros(12_500), "12.5 ms");
  assert.equal(format.micros(250_000), "250 ms");
  assert.equal(format.micros(2_500_000), "2.50 s");
  assert.equal(format.micros(Number.NaN), "–");
});

test("shares, rates and counts", () => {
  assert.equal(format.percent(3.14159), "3.1 %");
  assert.equal(format.percent(42.4), "42 %");
  assert.equal(format.ratio(0), "0 %");
  assert.equal(format.ratio(0.0012), "0.12 %");
  assert.equal(format.ratio(0.1), "10 %");
  assert.equal(format.rate(9.5), "9.5/s");
  assert.equal(format.rate(12_345), "12.3k/s");
  assert.equal(format.rate(2_500_000), "2.50M/s");
  assert.equal(format.count(1234567), "1\u2009234\u2009567");
  assert.equal(format.count(12n), "12");
  assert.equal(format.plural(1, "node"), "1 node");
  assert.equal(format.plural(3, "node"), "3 nodes");
});

test("durations and times", () => {
  assert.equal(format.duration(250), "250 ms");
  assert.equal(format.duration(42_000), "42 s");
  assert.equal(format.duration(185_000), "3 min 5 s");
  assert.equal(format.duration(2 * 3600_000 + 60_000), "2 h 1 min");
  assert.equal(format.duration(3 * 86400_000 + 4 * 3600_000), "3 d 4 h");
  const now = new Date(2026, 11, 2, 14, 3, 7);
  assert.equal(format.clock(now), "14:03:07");
  assert.equal(format.dateTime(now), "2026-12-02 14:03:07");
  assert.equal(format.ago(new Date(now.getTime() - 500), now), "just now");
  assert.equal(format.ago(new Date(now.getTime() - 5000), now), "5 s ago");
});
