// Events and groups: the live feed of `Discovery.Watch` (joins, leaves,
// health changes with their reasons, configuration applied, leadership),
// newest first; and the groups with their capacity, members, leader and
// idle time (`Discovery.ListGroups`, every few seconds).

import { timestampDate } from "@bufbuild/protobuf/wkt";

import type { GroupInfo } from "../../gen/farm/v1/discovery_pb";
import { api, cancelled, describe } from "../api";
import { h, replace, table, text } from "../dom";
import * as format from "../format";
import { type FeedEvent, type FeedKind, STATE_NAMES } from "../store";
import { frameScheduler, type View, type ViewContext } from "./view";

/** Rows drawn at most: the feed keeps more. */
const SHOWN = 500;
const GROUPS_EVERY_MS = 5000;

const KINDS: { kind: FeedKind | ""; label: string }[] = [
  { kind: "", label: "every kind" },
  { kind: "joined", label: "joins" },
  { kind: "left", label: "leaves" },
  { kind: "health", label: "health changes" },
  { kind: "config", label: "config applied" },
  { kind: "leader", label: "leadership" },
];

export function eventsView({ feeds, signal }: ViewContext): View {
  const { farm } = feeds;
  let visible = false;
  const kindSelect = h("select", { "aria-label": "Kind" }, ...KINDS.map((k) => h("option", { value: k.kind }, k.label)));
  const search = h("input", { type: "search", placeholder: "node or group", "aria-label": "Filter events" });
  const counts = h("span", { class: "muted", role: "status" });
  const list = h("ol", { class: "feed", "aria-label": "Events, newest first", "aria-live": "polite" });
  const groups = h("div", { class: "groups" });
  const groupsNote = h("p", { class: "muted" });
  const element = h(
    "div",
    { class: "view events" },
    h("h1", {}, "Events & groups"),
    h(
      "div",
      { class: "split" },
      h(
        "section",
        { "aria-label": "Events" },
        h("h2", {}, "Events"),
        h("div", { class: "toolbar" }, kindSelect, search, counts),
        list,
      ),
      h("section", { "aria-label": "Groups" }, h("h2", {}, "Groups"), groups, groupsNote),
    ),
  );

  const row = (e: FeedEvent) =>
    h(
      "li",
      { class: `event kind-${e.kind}${e.meanwhile ? " meanwhile" : ""}`, "data-state": STATE_NAMES[e.state], "data-revision": String(e.revision), "data-seq": e.seq },
      h("time", { datetime: e.at.toISOString() }, format.clock(e.at)),
      e.nodeId ? h("a", { class: "who", href: `#nodes/${e.nodeId}` }, e.nodeName || e.nodeId) : null,
      e.group ? h("span", { class: "group" }, e.group) : null,
      h("span", { class: "what" }, e.text),
    );

  let drawnKey = "";
  const draw = () => {
    const kind = kindSelect.value;
    const needle = search.value.trim().toLowerCase();
    const picked: FeedEvent[] = [];
    for (let i = farm.feed.length - 1; i >= 0 && picked.length < SHOWN; i--) {
      const e = farm.feed[i] as FeedEvent;
      if (kind && e.kind !== kind && e.kind !== "resync") continue;
      if (needle && !e.nodeName.toLowerCase().includes(needle) && !e.group.toLowerCase().includes(needle) && !e.nodeId.includes(needle)) continue;
      picked.push(e);
    }
    const key = `${kind}|${needle}|${picked[0]?.seq ?? 0}|${picked.length}`;
    if (key !== drawnKey) {
      drawnKey = key;
      list.replaceChildren(...picked.map(row));
      if (picked.length === 0) list.append(h("li", { class: "muted" }, farm.synced ? "No event yet: the feed shows what happens from now on." : "Connecting…"));
    }
    text(counts, `${format.plural(farm.feed.length, "event")} since this page opened`);
  };
  const schedule = frameScheduler(draw, () => visible);
  farm.addEventListener("change", schedule);
  kindSelect.addEventListener("change", schedule);
  search.addEventListener("input", schedule);

  const showGroups = (list: GroupInfo[]) => {
    const now = new Date();
    const leaderName = (id: string) => (id ? (farm.nodes.get(id)?.name ?? id) : "none healthy");
    replace(
      groups,
      list.length
        ? table(["Group", "Members", "Healthy", "Capacity", "Leader", "Idle"], list, (g) => [
            g.name,
            format.count(g.members),
            format.count(g.healthy),
            g.capacity ? format.count(g.capacity) : "unlimited",
            leaderName(g.leaderId),
            g.emptySince ? `empty for ${format.duration(now.getTime() - timestampDate(g.emptySince).getTime())}` : "in use",
          ])
        : h("p", { class: "muted" }, "No group yet."),
    );
    text(groupsNote, `As of ${format.clock(now)}; empty groups are purged after the control plane's idle timeout.`);
  };
  const refreshGroups = async () => {
    try {
      showGroups((await api.discovery.listGroups({}, { signal })).groups);
    } catch (error) {
      if (!cancelled(error)) text(groupsNote, `Could not list the groups: ${describe(error)}`);
    }
  };
  // Every few seconds while shown.
  const poll = async () => {
    while (!signal.aborted) {
      await new Promise((resolve) => setTimeout(resolve, GROUPS_EVERY_MS));
      if (visible) await refreshGroups();
    }
  };
  void poll();

  return {
    element,
    show() {
      visible = true;
      schedule();
      void refreshGroups();
    },
    hide() {
      visible = false;
    },
  };
}
