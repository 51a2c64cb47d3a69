// The page's long-lived streams and the connection state the header shows.
//
// Each stream is followed by `follow`: opened, read, and when it breaks
// opened again after a backoff, until the page stops it. A stream that goes
// silent for longer than it promised is treated as broken, so a control
// plane that vanished without closing the connection shows at once as lost,
// not as numbers that stopped moving. Authentication refusals do not retry:
// the page asks for a token instead.

import { Code } from "@connectrpc/connect";

import { cancelled, codeOf, describe } from "./api";
import { Backoff, sleep } from "./backoff";

/** Where one stream stands. */
export type LinkState =
  | { kind: "connecting" }
  | { kind: "live" }
  | { kind: "retrying"; since: Date; retryAt: number; reason: string }
  | { kind: "refused"; code: Code; reason: string };

/** What the header shows: the worst of the streams' states. */
export type Overall =
  | { kind: "connecting" }
  | { kind: "live" }
  | { kind: "lost"; since: Date; retryAt: number; reason: string }
  | { kind: "refused"; code: Code; reason: string };

class Connection extends EventTarget {
  private readonly links = new Map<string, LinkState>();
  private lostSince: Date | null = null;

  set(name: string, state: LinkState): void {
    this.links.set(name, state);
    this.dispatchEvent(new Event("change"));
  }

  drop(name: string): void {
    this.links.delete(name);
    this.dispatchEvent(new Event("change"));
  }

  overall(): Overall {
    let connecting = false;
    let retrying: Extract<LinkState, { kind: "retrying" }> | null = null;
    for (const state of this.links.values()) {
      if (state.kind === "refused") return state;
      if (state.kind === "retrying" && (retrying === null || state.retryAt > retrying.retryAt)) retrying = state;
      if (state.kind === "connecting") connecting = true;
    }
    if (retrying !== null) {
      this.lostSince ??= retrying.since;
      return { kind: "lost", since: this.lostSince, retryAt: retrying.retryAt, reason: retrying.reason };
    }
    this.lostSince = null;
    return connecting ? { kind: "connecting" } : { kind: "live" };
  }
}

/** Every stream's state, for the header. */
export const connection = new Connection();

export interface FollowOptions<T> {
  /** Opens the stream (again); called with the signal that ends it. */
  open: (signal: AbortSignal) => AsyncIterable<T>;
  /** Each message, in order. */
  message: (message: T) => void;
  /** The stream broke or ended (before a reconnect attempt). */
  broken?: () => void;
  /** Longest silence before the stream counts as broken (none if unset). */
  silenceMs?: number;
}

/**
 * Follows the stream `name` until `signal` aborts: reconnects with backoff
 * after every failure, and reports its state to `connection`.
 */
export function follow<T>(name: string, options: FollowOptions<T>, signal: AbortSignal): void {
  const backoff = new Backoff();
  signal.addEventListener("abort", () => connection.drop(name), { once: true });
  void (async () => {
    while (!signal.aborted) {
      connection.set(name, { kind: "connecting" });
      const attempt = new AbortController();
      const stop = () => attempt.abort();
      signal.addEventListener("abort", stop, { once: true });
      let watchdog: ReturnType<typeof setTimeout> | undefined;
      let silent = false;
      const arm = () => {
        if (options.silenceMs === undefined) return;
        clearTimeout(watchdog);
        watchdog = setTimeout(() => {
          silent = true;
          attempt.abort();
        }, options.silenceMs);
      };
      let reason = "the stream ended";
      try {
        arm();
        let first = true;
        for await (const message of options.open(attempt.signal)) {
          arm();
          if (first) {
            first = false;
            backoff.reset();
            connection.set(name, { kind: "live" });
          }
          options.message(message);
        }
      } catch (error) {
        if (signal.aborted) break;
        const code = codeOf(error);
        if (code === Code.Unauthenticated || code === Code.PermissionDenied) {
          connection.set(name, { kind: "refused", code, reason: describe(error) });
          return;
        }
        reason = silent
          ? `no word from the control plane for ${Math.round((options.silenceMs ?? 0) / 1000)} s`
          : cancelled(error)
            ? "the stream was cancelled"
            : describe(error);
      } finally {
        clearTimeout(watchdog);
        signal.removeEventListener("abort", stop);
      }
      if (signal.aborted) break;
      options.broken?.();
      const wait = backoff.next();
      connection.set(name, { kind: "retrying", since: new Date(), retryAt: Date.now() + wait, reason });
      try {
        await sleep(wait, signal);
      } catch {
        break;
      }
    }
  })();
}
