// Which nodes the grid shows: a filter by name (or id), group, state and
// label. Pure, tested in test/filter.test.ts.

import type { NodeInfo, NodeState } from "../../gen/farm/v1/node_pb";

/** A filter over the grid, as the toolbar sets it. */
export interface Filter {
  name: string;
  group: string;
  state: NodeState | null;
  /** `key=value`, or `key` for any value. */
  label: string;
}

/** Whether `node` passes `filter`. */
export function matches(node: NodeInfo, filter: Filter): boolean {
  if (filter.group && node.group !== filter.group) return false;
  if (filter.state !== null && node.state !== filter.state) return false;
  if (filter.name) {
    const needle = filter.name.toLowerCase();
    if (!node.name.toLowerCase().includes(needle) && !node.id.toLowerCase().includes(needle)) return false;
  }
  if (filter.label) {
    const at = filter.label.indexOf("=");
    const key = (at < 0 ? filter.label : filter.label.slice(0, at)).trim();
    const value = at < 0 ? null : filter.label.slice(at + 1).trim();
    if (!(key in node.labels)) return false;
    if (value !== null && node.labels[key] !== value) return false;
  }
  return true;
}
