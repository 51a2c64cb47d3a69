// The dashboard: a header with the sections, the connection state and who
// is signed in; the section the URL's fragment names (#nodes, #config…).
//
// Start-up asks the control plane who this page is (`ControlPlane.GetStatus`).
// With tokens configured and none given, it answers UNAUTHENTICATED and the
// page asks for a token, which it keeps in sessionStorage for this tab.

import "./style.css";
// Every stylesheet loads with the page, those of the sections that load
// later too: only their code waits (a section then shows styled at once).
import "uplot/dist/uPlot.min.css";
import "./views/config.css";
import "./views/loadtest.css";

import { Code } from "@connectrpc/connect";

import { api, codeOf, describe, setToken, token } from "./api";
import { Backoff, sleep } from "./backoff";
import { startFeeds, type Feeds } from "./feeds";
import { clock, duration } from "./format";
import { h, replace, text } from "./dom";
import { connection } from "./live";
import { Session } from "./session";
import { eventsView } from "./views/events";
import { nodesView } from "./views/nodes";
import { overviewView } from "./views/overview";
import { lazyView, type View, type ViewContext } from "./views/view";

const SECTIONS: { id: string; title: string; make: (context: ViewContext) => View }[] = [
  { id: "overview", title: "Overview", make: overviewView },
  { id: "nodes", title: "Nodes", make: nodesView },
  { id: "events", title: "Events & groups", make: eventsView },
  // These three, with the JSON editor, the diff and the load test's code,
  // load when first opened.
  { id: "config", title: "Configuration", make: (c) => lazyView(() => import("./views/config").then((m) => m.configView(c))) },
  { id: "catalog", title: "Catalog", make: (c) => lazyView(() => import("./views/catalog").then((m) => m.catalogView(c))) },
  { id: "loadtest", title: "Load test", make: (c) => lazyView(() => import("./views/loadtest").then((m) => m.loadTestView(c))) },
];

const root = document.getElementById("app") ?? document.body;

/** Asks for a token; resolves once one is stored. */
function signIn(problem: string): Promise<void> {
  return new Promise((resolve) => {
    const input = h("input", {
      type: "password",
      name: "token",
      autocomplete: "current-password",
      placeholder: "admin or viewer token",
      "aria-label": "Token",
      required: true,
    });
    const form = h(
      "form",
      { class: "signin" },
      h("h1", {}, "farm"),
      h("p", {}, "This control plane needs a token. Ask whoever runs it for a viewer token (to watch) or an admin token (to act)."),
      problem ? h("p", { class: "error", role: "alert" }, problem) : null,
      h("label", {}, "Token ", input),
      h("button", { type: "submit", class: "primary" }, "Sign in"),
      h("p", { class: "muted" }, "The token stays in this tab only (sessionStorage), and is sent as an authorization header, never in a URL."),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      setToken(input.value.trim());
      resolve();
    });
    replace(root, form);
    input.focus();
  });
}

/** Learns who this page is, asking for a token as long as needed; and whether it asked. */
async function session(): Promise<{ current: Session; askedForToken: boolean }> {
  const backoff = new Backoff();
  let problem = "";
  let askedForToken = false;
  for (;;) {
    try {
      return { current: new Session(await api.controlPlane.getStatus({})), askedForToken };
    } catch (error) {
      const code = codeOf(error);
      if (code === Code.Unauthenticated) {
        problem = token() === null ? "" : `That token was refused. ${describe(error)}`;
        setToken(null);
        askedForToken = true;
        await signIn(problem);
        continue;
      }
      const wait = backoff.next();
      replace(
        root,
        h(
          "div",
          { class: "signin" },
          h("h1", {}, "farm"),
          h("p", { class: "error", role: "alert" }, describe(error)),
          h("p", {}, `Trying again in ${duration(wait)}…`),
        ),
      );
      await sleep(wait);
    }
  }
}

/** The badge telling whether what the page shows is live, and the banner saying why not. */
function connectionState(signal: AbortSignal): { badge: HTMLElement; banner: HTMLElement } {
  const badge = h("span", { class: "link", role: "status", "aria-live": "polite" });
  const banner = h("div", { class: "banner", hidden: true, role: "alert" });
  const show = () => {
    const state = connection.overall();
    badge.dataset.state = state.kind;
    document.body.classList.toggle("stale", state.kind === "lost" || state.kind === "refused");
    switch (state.kind) {
      case "live":
        text(badge, "● live");
        banner.hidden = true;
        break;
      case "connecting":
        text(badge, "◌ connecting…");
        banner.hidden = true;
        break;
      case "lost": {
        const wait = Math.max(0, state.retryAt - Date.now());
        text(badge, "✕ disconnected");
        banner.hidden = false;
        text(
          banner,
          `Lost the control plane at ${clock(state.since)}. ${state.reason}. The figures below are not live. ` +
            `Reconnecting ${wait < 1000 ? "now" : `in ${Math.ceil(wait / 1000)} s`}…`,
        );
        break;
      }
      case "refused":
        text(badge, "✕ refused");
        banner.hidden = false;
        text(banner, state.reason);
        break;
    }
  };
  connection.addEventListener("change", show, { signal });
  const timer = setInterval(show, 1000);
  signal.addEventListener("abort", () => clearInterval(timer), { once: true });
  show();
  return { badge, banner };
}

/** Shows the page for `current`, on `feeds`, until `stop` aborts. */
function start(current: Session, feeds: Feeds, stop: AbortController): void {
  const context: ViewContext = { session: current, feeds, signal: stop.signal };
  const main = h("main", { id: "main" });
  const nav = h("nav", { "aria-label": "Sections" });
  const views = new Map<string, { view: View | null; link: HTMLAnchorElement; make: (c: ViewContext) => View }>();
  for (const section of SECTIONS) {
    const link = h("a", { href: `#${section.id}` }, section.title);
    nav.append(link);
    views.set(section.id, { view: null, link, make: section.make });
  }
  const { badge, banner } = connectionState(stop.signal);
  const signOut = current.status.tokensRequired
    ? h(
        "button",
        {
          class: "quiet",
          onclick: () => {
            setToken(null);
            location.reload();
          },
        },
        "Sign out",
      )
    : null;
  const who = h(
    "span",
    { class: "who", title: current.status.tokensRequired ? "" : "No tokens are configured: every call is allowed" },
    current.status.tokensRequired ? `signed in as ${current.roleName}` : "open (no tokens)",
  );
  const header = h(
    "header",
    {},
    h("a", { class: "brand", href: "#overview" }, "farm"),
    nav,
    h("span", { class: "spacer" }),
    badge,
    who,
    signOut,
  );
  replace(root, header, banner, main);

  let shown: View | null = null;
  const route = () => {
    const id = location.hash.replace(/^#/, "").split("/")[0] || "overview";
    const entry = views.get(id) ?? views.get("overview");
    if (!entry) return;
    for (const other of views.values()) other.link.removeAttribute("aria-current");
    entry.link.setAttribute("aria-current", "page");
    entry.view ??= entry.make(context);
    if (shown !== entry.view) {
      shown?.hide();
      shown = entry.view;
      replace(main, entry.view.element);
      entry.view.show();
      document.title = `${SECTIONS.find((s) => s.id === id)?.title ?? "Overview"} · farm`;
    }
    entry.view.route?.(location.hash.replace(/^#/, "").split("/").slice(1));
  };
  window.addEventListener("hashchange", route);
  route();

  // A stream refused for its token (the control plane's tokens changed):
  // sign in again.
  // Listeners of this start end with it, so a new sign-in adds no second one.
  const refused = () => {
    const state = connection.overall();
    if (state.kind === "refused" && state.code === Code.Unauthenticated) {
      stop.abort();
      setToken(null);
      void boot(`The control plane no longer accepts this page's token. ${state.reason}`);
    }
  };
  connection.addEventListener("change", refused, { signal: stop.signal });
}

async function boot(problem = ""): Promise<void> {
  if (problem) await signIn(problem);
  // The streams open beside the status call, not after its answer: at
  // 10,000 nodes the membership is what the page waits for longest. When
  // the call asked for a token instead, they were refused, and start again
  // with the token.
  let stop = new AbortController();
  let feeds = startFeeds(stop.signal);
  const { current, askedForToken } = await session();
  if (askedForToken) {
    stop.abort();
    stop = new AbortController();
    feeds = startFeeds(stop.signal);
  }
  start(current, feeds, stop);
}

void boot();
