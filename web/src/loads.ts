// Every node's latest load, as `WatchMetrics` sends it with `include_loads`:
// columns (ids, CPU, memory, requests/s), kept as they arrive. A node's
// entry is found through an index of the ids, built again only when the
// list of ids changes (nodes joined, left or first reported), not on every
// snapshot: at 10,000 nodes a snapshot then costs no allocation per node.
// Pure of I/O: tested in test/loads.test.ts.

import type { NodeLoads } from "../gen/farm/v1/metrics_pb";

/** One node's load, as the grid draws it. */
export interface NodeLoad {
  cpuPercent: number;
  memoryUsed: number;
  memoryLimit: number;
  requestsPerSecond: number;
}

export class LoadTable {
  private ids: string[] = [];
  private cpu: ArrayLike<number> = [];
  private memoryUsed: ArrayLike<number> = [];
  private memoryLimit: ArrayLike<number> = [];
  private requests: ArrayLike<number> = [];
  private index = new Map<string, number>();
  /** Grows whenever the list of ids changes. */
  layout = 0;

  /** Nodes with a load. */
  get size(): number {
    return this.ids.length;
  }

  /** Takes the loads of a snapshot (none: every load is forgotten). */
  adopt(loads: NodeLoads | undefined): void {
    const ids = loads?.nodeIds ?? [];
    if (!sameIds(this.ids, ids)) {
      this.index = new Map(ids.map((id, i) => [id, i]));
      this.layout += 1;
    }
    this.ids = ids;
    this.cpu = loads?.cpuPercent ?? [];
    this.memoryUsed = loads?.memoryUsedBytes ?? [];
    this.memoryLimit = loads?.memoryLimitBytes ?? [];
    this.requests = loads?.requestsPerSecond ?? [];
  }

  /** Where node `id` is in the columns, or -1: valid until `layout` changes. */
  indexOf(id: string): number {
    return this.index.get(id) ?? -1;
  }

  /** CPU percent of the node at `index` (from `indexOf`), NaN for -1. */
  cpuAt(index: number): number {
    return index < 0 ? Number.NaN : (this.cpu[index] ?? Number.NaN);
  }

  /** Node `id`'s load, or undefined when it has none. */
  get(id: string): NodeLoad | undefined {
    const i = this.index.get(id);
    if (i === undefined) return undefined;
    return {
      cpuPercent: this.cpu[i] ?? 0,
      memoryUsed: this.memoryUsed[i] ?? 0,
      memoryLimit: this.memoryLimit[i] ?? 0,
      requestsPerSecond: this.requests[i] ?? 0,
    };
  }
}

function sameIds(a: readonly string[], b: readonly string[]): boolean {
  if (a === b) return true;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
