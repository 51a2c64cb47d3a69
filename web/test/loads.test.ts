import assert from "node:assert/strict";
import { test } from "node:test";

import { create } from "@bufbuild/protobuf";

import { NodeLoadsSchema } from "../gen/farm/v1/metrics_pb";
import { LoadTable } from "../src/loads";

const loads = (ids: string[], cpu: number[]) =>
  create(NodeLoadsSchema, {
    nodeIds: ids,
    cpuPercent: cpu,
    memoryUsedBytes: cpu.map((c) => c * 1000),
    memoryLimitBytes: cpu.map(() => 100_000),
    requestsPerSecond: cpu.map((c) => c / 2),
  });

test("each node's load is found by its id, and a node without one has none", () => {
  const table = new LoadTable();
  table.adopt(loads(["n1", "n2", "n3"], [10, 20, 30]));
  assert.equal(table.size, 3);
  assert.deepEqual(table.get("n2"), { cpuPercent: 20, memoryUsed: 20_000, memoryLimit: 100_000, requestsPerSecond: 10 });
  assert.equal(table.get("n9"), undefined);
  assert.equal(table.cpuAt(table.indexOf("n3")), 30);
  assert.ok(Number.isNaN(table.cpuAt(table.indexOf("n9"))));
});

test("the index is built again only when the ids change", () => {
  const table = new LoadTable();
  table.adopt(loads(["n1", "n2"], [10, 20]));
  const layout = table.layout;
  table.adopt(loads(["n1", "n2"], [50, 60]));
  assert.equal(table.layout, layout, "same ids: same index");
  assert.equal(table.get("n2")?.cpuPercent, 60, "new figures all the same");
  table.adopt(loads(["n1", "n3"], [5, 7]));
  assert.notEqual(table.layout, layout);
  assert.equal(table.get("n2"), undefined, "n2 left");
  assert.equal(table.get("n3")?.cpuPercent, 7);
  table.adopt(undefined);
  assert.equal(table.size, 0);
  assert.equal(table.get("n1"), undefined);
});
