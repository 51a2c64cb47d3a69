import assert from "node:assert/strict";
import { test } from "node:test";

import { create } from "@bufbuild/protobuf";

import { EventKind, WatchEventSchema } from "../gen/farm/v1/discovery_pb";
import { NodeInfoSchema, NodeState } from "../gen/farm/v1/node_pb";
import { changes, FarmStore } from "../src/store";

const node = (id: string, state: NodeState, extra: Record<string, unknown> = {}) =>
  create(NodeInfoSchema, { id, name: `node-${id}`, group: "default", address: `127.0.0.1:${id.length}`, state, ...extra });

const event = (revision: number, kind: EventKind, info?: ReturnType<typeof node>) =>
  create(WatchEventSchema, { revision: BigInt(revision), kind, node: info });

test("a snapshot becomes the membership once SYNCED arrives, with no event", () => {
  const store = new FarmStore();
  store.apply(event(7, EventKind.SNAPSHOT, node("n1", NodeState.HEALTHY)));
  assert.equal(store.nodes.size, 0, "not before SYNCED");
  store.apply(event(7, EventKind.SNAPSHOT, node("n2", NodeState.STARTING)));
  store.apply(event(7, EventKind.SYNCED));
  assert.equal(store.nodes.size, 2);
  assert.equal(store.revision, 7n);
  assert.ok(store.synced);
  assert.equal(store.feed.length, 0, "a first snapshot is not news");
});

test("live events tell joins, health with reasons, config, leadership and leaves", () => {
  const store = new FarmStore();
  store.apply(event(1, EventKind.SYNCED));
  store.apply(event(2, EventKind.JOINED, node("n1", NodeState.STARTING)));
  store.apply(event(3, EventKind.CHANGED, node("n1", NodeState.HEALTHY, { leader: true })));
  store.apply(event(4, EventKind.CHANGED, node("n1", NodeState.HEALTHY, { leader: true, configVersion: 3n })));
  store.apply(event(5, EventKind.CHANGED, node("n1", NodeState.UNHEALTHY, { stateReason: "heartbeat stream closed", configVersion: 3n })));
  store.apply(event(6, EventKind.LEFT, node("n1", NodeState.UNHEALTHY, { stateReason: "deregistered" })));
  assert.deepEqual(
    store.feed.map((e) => [e.kind, e.text]),
    [
      ["joined", "joined default at 127.0.0.1:2"],
      ["health", "starting → healthy"],
      ["leader", "became leader of default"],
      ["config", "applied config version 3"],
      ["health", "healthy → unhealthy: heartbeat stream closed"],
      ["leader", "no longer leads default"],
      ["left", "left: deregistered"],
    ],
  );
  assert.equal(store.revision, 6n);
  assert.equal(store.nodes.size, 0);
  assert.equal(store.eventsOf("n1").length, 7);
});

test("a resumed stream replays, then SYNCED: nothing repeated, no resync note", () => {
  const store = new FarmStore();
  store.apply(event(5, EventKind.SNAPSHOT, node("n1", NodeState.HEALTHY)));
  store.apply(event(5, EventKind.SYNCED));
  store.disconnected();
  assert.equal(store.synced, false);
  store.apply(event(6, EventKind.CHANGED, node("n1", NodeState.STOPPED, { stateReason: "killed" })));
  store.apply(event(6, EventKind.SYNCED));
  assert.deepEqual(store.feed.map((e) => e.text), ["healthy → stopped: killed"]);
  assert.ok(store.synced);
});

test("a fresh snapshot after a gap tells what changed meanwhile, once", () => {
  const store = new FarmStore();
  store.apply(event(5, EventKind.SNAPSHOT, node("n1", NodeState.HEALTHY)));
  store.apply(event(5, EventKind.SNAPSHOT, node("n2", NodeState.HEALTHY)));
  store.apply(event(5, EventKind.SYNCED));
  store.disconnected();
  // The control plane restarted: n1 is unhealthy, n2 is gone, n3 joined.
  store.apply(event(90, EventKind.SNAPSHOT, node("n1", NodeState.UNHEALTHY)));
  store.apply(event(90, EventKind.SNAPSHOT, node("n3", NodeState.STARTING)));
  store.apply(event(90, EventKind.SYNCED));
  const told = store.feed.map((e) => `${e.nodeId} ${e.text}`);
  assert.deepEqual(told, [
    "n1 healthy → unhealthy (while the page was not connected)",
    "n3 joined default (while the page was not connected)",
    "n2 left (while the page was not connected)",
    " Reconnected: the control plane sent the whole membership again; 3 changes meanwhile, listed below",
  ]);
  assert.ok(store.feed.every((e) => e.meanwhile));
  assert.deepEqual([...store.nodes.keys()].sort(), ["n1", "n3"]);
  assert.equal(store.revision, 90n);
});

test("a batched snapshot carries many nodes per event", () => {
  const store = new FarmStore();
  store.apply(create(WatchEventSchema, { revision: 4n, kind: EventKind.SNAPSHOT, nodes: [node("n1", NodeState.HEALTHY), node("n2", NodeState.STARTING)] }));
  store.apply(create(WatchEventSchema, { revision: 4n, kind: EventKind.SNAPSHOT, nodes: [node("n3", NodeState.HEALTHY)] }));
  assert.equal(store.nodes.size, 0, "not before SYNCED");
  store.apply(event(4, EventKind.SYNCED));
  assert.deepEqual([...store.nodes.keys()].sort(), ["n1", "n2", "n3"]);
  assert.equal(store.feed.length, 0);
});

test("RESET starts a new snapshot", () => {
  const store = new FarmStore();
  store.apply(event(5, EventKind.SNAPSHOT, node("n1", NodeState.HEALTHY)));
  store.apply(event(5, EventKind.SYNCED));
  store.apply(event(9, EventKind.RESET));
  store.apply(event(9, EventKind.SNAPSHOT, node("n1", NodeState.HEALTHY)));
  store.apply(event(9, EventKind.SYNCED));
  assert.equal(store.nodes.size, 1);
  assert.deepEqual(store.feed.map((e) => e.kind), ["resync"]);
});

test("changes() ignores what the page does not show", () => {
  const before = node("n1", NodeState.HEALTHY);
  const after = node("n1", NodeState.HEALTHY, { lastHeartbeat: { seconds: 5n, nanos: 0 } });
  assert.deepEqual(changes(before, after), []);
});
