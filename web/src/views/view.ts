// What every section of the page is: an element, told when it is shown
// and hidden (a hidden view stops drawing), and the rest of the URL's
// fragment (`#nodes/n7` → `["n7"]`).

import { h, replace } from "../dom";
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

/**
 * A section whose code loads when it is first shown (`load` fetches it), so
 * the page starts without it. Until then it says so; if its code cannot be
 * fetched (the control plane was upgraded under the page), it says that.
 */
export function lazyView(load: () => Promise<View>): View {
  const element = h("div", { class: "lazy" }, h("p", { class: "muted" }, "Loading…"));
  let view: View | null = null;
  let shown = false;
  let path: string[] | null = null;
  let started = false;
  const start = () => {
    if (started) return;
    started = true;
    load().then(
      (loaded) => {
        view = loaded;
        replace(element, loaded.element);
        if (shown) loaded.show();
        if (path !== null) loaded.route?.(path);
      },
      (error: unknown) => {
        const why = error instanceof Error ? error.message : String(error);
        replace(element, h("p", { class: "error", role: "alert" }, `This section could not load (${why}). Reload the page.`));
      },
    );
  };
  return {
    element,
    show() {
      shown = true;
      start();
      view?.show();
    },
    hide() {
      shown = false;
      view?.hide();
    },
    route(rest) {
      path = rest;
      view?.route?.(rest);
    },
  };
}
