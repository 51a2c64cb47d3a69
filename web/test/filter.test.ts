import assert from "node:assert/strict";
import { test } from "node:test";

import { create } from "@bufbuild/protobuf";

import { NodeInfoSchema, NodeState } from "../gen/farm/v1/node_pb";
import { type Filter, matches } from "../src/views/filter";

const none: Filter = { name: "", group: "", state: null, label: "" };
const node = create(NodeInfoSchema, {
  id: "n7",
  name: "node-007",
  group: "edge",
  state: NodeState.HEALTHY,
  labels: { zone: "a", canary: "" },
});

test("every part of the filter must hold", () => {
  assert.ok(matches(node, none));
  assert.ok(matches(node, { ...none, name: "NODE-00" }), "names ignore case");
  assert.ok(matches(node, { ...none, name: "n7" }), "ids match too");
  assert.ok(!matches(node, { ...none, name: "node-008" }));
  assert.ok(matches(node, { ...none, group: "edge" }));
  assert.ok(!matches(node, { ...none, group: "default" }));
  assert.ok(matches(node, { ...none, state: NodeState.HEALTHY }));
  assert.ok(!matches(node, { ...none, state: NodeState.STOPPED }));
  assert.ok(!matches(node, { ...none, group: "edge", state: NodeState.STOPPED }));
});

test("labels: key=value, or a key for any value", () => {
  assert.ok(matches(node, { ...none, label: "zone=a" }));
  assert.ok(matches(node, { ...none, label: " zone = a " }));
  assert.ok(!matches(node, { ...none, label: "zone=b" }));
  assert.ok(matches(node, { ...none, label: "canary" }));
  assert.ok(matches(node, { ...none, label: "canary=" }));
  assert.ok(!matches(node, { ...none, label: "region" }));
});
