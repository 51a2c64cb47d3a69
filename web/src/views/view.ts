// What every section of the page is: an element, told when it is shown
// and hidden (a hidden view stops drawing), and the rest of the URL's
// fragment (`#nodes/n7` → `["n7"]`).

import type { Feeds } from "../feeds";
import type { Session } from "../session";

export interface ViewContext {
  session: Session;
  feeds: Feeds;
  /** Aborts when the page stops (signed out, token refused). */
  signal: AbortSignal;
}

export interface View {
  element: HTMLElement;
  show(): void;
  hide(): void;
  route?(path: string[]): void;
}

/**
 * Calls `draw` at most once a frame however often `schedule` is called,
 * and not at all while `visible()` is false.
 */
export function frameScheduler(draw: () => void, visible: () => boolean): () => void {
  let pending = false;
  return () => {
    if (pending || !visible()) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      if (visible()) draw();
    });
  };
}
