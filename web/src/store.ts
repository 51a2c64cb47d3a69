// The farm's membership as `Discovery.Watch` tells it, and the feed of
// events a person reads: joins, leaves, health changes with their reasons,
// configuration applied, leadership.
//
// Resuming: the page asks to resume after the last revision it saw. When
// the control plane still holds the events since, it replays them and
// nothing is missed or repeated. When it does not (it restarted, or this
// page fell behind), it sends the whole membership again; the page then
// compares it with what it knew and tells what changed meanwhile, once.
// Pure of I/O: tested in test/store.test.ts.

import { EventKind, type WatchEvent } from "../gen/farm/v1/discovery_pb";
import { type NodeInfo, NodeState } from "../gen/farm/v1/node_pb";

/** What an event in the feed is about. */
export type FeedKind = "joined" | "left" | "health" | "config" | "leader" | "address" | "resync";

export interface FeedEvent {
  /** Unique within the page, for keys. */
  seq: number;
  /** The membership revision after it (0 for the page's own notes). */
  revision: bigint;
  /** When the page learnt of it. */
  at: Date;
  kind: FeedKind;
  nodeId: string;
  nodeName: string;
  group: string;
  /** The state after it, for colour. */
  state: NodeState;
  /** The sentence shown. */
  text: string;
  /** Learnt from a fresh membership list, not seen as it happened. */
  meanwhile: boolean;
}

export const STATE_NAMES: Record<NodeState, string> = {
  [NodeState.UNSPECIFIED]: "unknown",
  [NodeState.STARTING]: "starting",
  [NodeState.HEALTHY]: "healthy",
  [NodeState.UNHEALTHY]: "unhealthy",
  [NodeState.STOPPED]: "stopped",
};

/** Most events the page keeps. */
export const FEED_LIMIT = 5000;

/** Sentences telling how `before` became `after` (none when nothing shown changed). */
export function changes(before: NodeInfo, after: NodeInfo): { kind: FeedKind; text: string }[] {
  const found: { kind: FeedKind; text: string }[] = [];
  if (before.state !== after.state) {
    const reason = after.stateReason ? `: ${after.stateReason}` : "";
    found.push({
      kind: "health",
      text: `${STATE_NAMES[before.state]} → ${STATE_NAMES[after.state]}${reason}`,
    });
  }
  if (before.configVersion !== after.configVersion) {
    found.push({ kind: "config", text: `applied config version ${after.configVersion}` });
  }
  if (before.leader !== after.leader) {
    found.push({
      kind: "leader",
      text: after.leader ? `became leader of ${after.group}` : `no longer leads ${after.group}`,
    });
  }
  if (before.address !== after.address && after.address !== "") {
    found.push({ kind: "address", text: `now at ${after.address}` });
  }
  return found;
}

export class FarmStore extends EventTarget {
  /** The members by id. */
  readonly nodes = new Map<string, NodeInfo>();
  /** The last revision seen: where a reconnect resumes. */
  revision = 0n;
  /** Whether the membership is complete (a snapshot or replay finished). */
  synced = false;
  /** Newest last. */
  readonly feed: FeedEvent[] = [];
  /** Grows whenever a node joins or leaves (views re-sort only then). */
  membership = 0;

  private seq = 0;
  /** A snapshot being received: it replaces `nodes` once SYNCED arrives. */
  private incoming: Map<string, NodeInfo> | null = null;
  /** Whether the page knew a membership before this snapshot. */
  private knewBefore = false;

  constructor(private readonly now: () => Date = () => new Date()) {
    super();
  }

  /** The stream broke: what is shown is no longer live. */
  disconnected(): void {
    this.synced = false;
    this.incoming = null;
    this.dispatchEvent(new Event("change"));
  }

  /** Applies one event of the stream, in order. */
  apply(event: WatchEvent): void {
    const node = event.node;
    switch (event.kind) {
      case EventKind.SNAPSHOT:
        if (this.incoming === null) {
          this.incoming = new Map();
          this.knewBefore = this.nodes.size > 0 || this.revision > 0n;
        }
        if (node) this.incoming.set(node.id, node);
        // A batched snapshot (`batch_snapshot`): many nodes per event.
        for (const each of event.nodes) this.incoming.set(each.id, each);
        break;
      case EventKind.SYNCED:
        if (this.incoming !== null) this.adopt(this.incoming);
        this.incoming = null;
        this.revision = event.revision;
        this.synced = true;
        break;
      case EventKind.RESET:
        this.incoming = new Map();
        this.knewBefore = true;
        break;
      case EventKind.JOINED:
        if (node) {
          this.nodes.set(node.id, node);
          this.membership += 1;
          this.note(event.revision, "joined", node, `joined ${node.group} at ${node.address || "no address yet"}`);
        }
        this.revision = event.revision;
        break;
      case EventKind.LEFT:
        if (node) {
          this.nodes.delete(node.id);
          this.membership += 1;
          this.note(event.revision, "left", node, node.stateReason ? `left: ${node.stateReason}` : "left");
        }
        this.revision = event.revision;
        break;
      case EventKind.CHANGED:
        if (node) {
          const before = this.nodes.get(node.id);
          this.nodes.set(node.id, node);
          for (const change of before ? changes(before, node) : []) {
            this.note(event.revision, change.kind, node, change.text);
          }
        }
        this.revision = event.revision;
        break;
      default:
        break;
    }
    this.dispatchEvent(new Event("change"));
  }

  /** The events that concern one node, newest first. */
  eventsOf(nodeId: string): FeedEvent[] {
    return this.feed.filter((e) => e.nodeId === nodeId).reverse();
  }

  /** Takes a complete membership; tells what changed since the last one known. */
  private adopt(fresh: Map<string, NodeInfo>): void {
    if (this.knewBefore) {
      let told = 0;
      for (const [id, node] of fresh) {
        const before = this.nodes.get(id);
        if (!before) {
          this.note(0n, "joined", node, `joined ${node.group} (while the page was not connected)`, true);
          told += 1;
          continue;
        }
        for (const change of changes(before, node)) {
          this.note(0n, change.kind, node, `${change.text} (while the page was not connected)`, true);
          told += 1;
        }
      }
      for (const [id, node] of this.nodes) {
        if (!fresh.has(id)) {
          this.note(0n, "left", node, "left (while the page was not connected)", true);
          told += 1;
        }
      }
      this.note(
        0n,
        "resync",
        null,
        told === 0
          ? "Reconnected: the control plane sent the whole membership again; nothing changed meanwhile"
          : `Reconnected: the control plane sent the whole membership again; ${told} ${told === 1 ? "change" : "changes"} meanwhile, listed below`,
        true,
      );
    }
    this.nodes.clear();
    for (const [id, node] of fresh) this.nodes.set(id, node);
    this.membership += 1;
  }

  private note(
    revision: bigint,
    kind: FeedKind,
    node: NodeInfo | null,
    text: string,
    meanwhile = false,
  ): void {
    this.seq += 1;
    this.feed.push({
      seq: this.seq,
      revision,
      at: this.now(),
      kind,
      nodeId: node?.id ?? "",
      nodeName: node?.name ?? "",
      group: node?.group ?? "",
      state: node?.state ?? NodeState.UNSPECIFIED,
      text,
      meanwhile,
    });
    if (this.feed.length > FEED_LIMIT) this.feed.splice(0, this.feed.length - FEED_LIMIT);
  }
}
