// The dependency catalog: names by prefix (`Catalog.List`, a page at a
// time), and one name's dependencies and dependents (`Catalog.Get`), each a
// link to its own entry (#catalog/NAME).

import { Catalog } from "../../gen/farm/v1/catalog_pb";
import { client, describe } from "../api";
import { h, replace, text } from "../dom";
import * as format from "../format";
import type { View, ViewContext } from "./view";

/** This section's service (its client loads with the section). */
const catalogApi = client(Catalog);

const PAGE = 100;

export function catalogView(_context: ViewContext): View {
  const search = h("input", { type: "search", placeholder: "name prefix, e.g. lib", "aria-label": "Search names" });
  const total = h("span", { class: "muted", role: "status" });
  const names = h("ul", { class: "names", "aria-label": "Names" });
  const more = h("button", { type: "button", hidden: true }, "More");
  const problem = h("p", { class: "error", role: "alert", hidden: true });
  const entry = h("section", { class: "entry", "aria-label": "Entry" }, h("p", { class: "muted" }, "Pick a name to see what it depends on and what depends on it."));
  const element = h(
    "div",
    { class: "view catalog" },
    h("h1", {}, "Catalog"),
    h(
      "p",
      { class: "muted" },
      "Names indexed through Catalog.Index or the line protocol (INDEX|name|deps). A name is indexed only once all its dependencies are, and cannot be removed while another name depends on it.",
    ),
    h("div", { class: "split" }, h("section", { "aria-label": "Names" }, h("div", { class: "toolbar" }, search, total), problem, names, more), entry),
  );

  const link = (name: string) => h("a", { href: `#catalog/${encodeURIComponent(name)}` }, name);
  let token = "";
  let generation = 0;
  /** Names of the current search on the page. */
  let listed = 0;
  const list = async (fresh: boolean) => {
    const mine = fresh ? ++generation : generation;
    if (fresh) token = "";
    try {
      const response = await catalogApi.list({ prefix: search.value.trim(), pageToken: token, pageSize: PAGE });
      if (mine !== generation) return;
      problem.hidden = true;
      if (fresh) names.replaceChildren();
      names.append(...response.names.map((n) => h("li", {}, link(n))));
      if (fresh && response.names.length === 0) names.append(h("li", { class: "muted" }, search.value.trim() ? "No name starts with that." : "The catalog is empty."));
      token = response.nextPageToken;
      more.hidden = token === "";
      listed = fresh ? response.names.length : listed + response.names.length;
      const indexed = `${format.plural(Number(response.total), "name")} indexed`;
      text(
        total,
        search.value.trim() ? `${format.count(listed)}${token ? "+" : ""} starting with that, of ${indexed}` : indexed,
      );
    } catch (error) {
      if (mine !== generation) return;
      problem.hidden = false;
      text(problem, describe(error));
    }
  };
  search.addEventListener("input", () => void list(true));
  more.addEventListener("click", () => void list(false));

  const show = async (name: string) => {
    replace(entry, h("p", { class: "muted" }, `Loading ${name}…`));
    try {
      const got = await catalogApi.get({ name });
      const listOf = (items: string[], none: string) =>
        items.length ? h("ul", { class: "names" }, ...[...items].sort().map((n) => h("li", {}, link(n)))) : h("p", { class: "muted" }, none);
      replace(
        entry,
        h("h2", {}, got.name),
        h("h3", {}, `Depends on (${got.dependencies.length})`),
        listOf(got.dependencies, "Nothing: it needs no other name."),
        h("h3", {}, `Depended on by (${got.dependents.length})`),
        listOf(got.dependents, "Nothing: it could be removed."),
      );
    } catch (error) {
      replace(entry, h("h2", {}, name), h("p", { class: "error", role: "alert" }, describe(error)));
    }
  };

  let started = false;
  return {
    element,
    show() {
      if (!started) {
        started = true;
        void list(true);
      }
    },
    hide() {},
    route(path) {
      const name = path[0];
      if (name) void show(decodeURIComponent(name));
    },
  };
}
