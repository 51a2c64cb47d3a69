// A few lines of DOM building instead of a framework: the page is a handful
// of views, each owning its elements and updating them in place.

type Child = Node | string | number | null | undefined | false;
type Attributes = Record<string, string | number | boolean | null | undefined | EventListener>;

/**
 * `h("button", {class: "danger", onclick: stop}, "Stop")`: an element with
 * attributes (`on…` ones become listeners; `false`, `null` and `undefined`
 * ones are left out) and children (strings become text).
 */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attributes: Attributes = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (typeof value === "function") {
      element.addEventListener(name.replace(/^on/, ""), value);
    } else {
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(element, children);
  return element;
}

/** Appends `children` to `parent`, skipping empty ones. */
export function append(parent: Node, children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    parent.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces every child of `parent` with `children`. */
export function replace(parent: Element, ...children: Child[]): void {
  parent.replaceChildren();
  append(parent, children);
}

/** Sets `element`'s text when it differs (no layout work when unchanged). */
export function text(element: Element, value: string): void {
  if (element.textContent !== value) element.textContent = value;
}

/** A table with a header row and one row per item. */
export function table<T>(
  headings: string[],
  rows: T[],
  cells: (row: T) => Child[],
  attributes: Attributes = {},
): HTMLTableElement {
  return h(
    "table",
    attributes,
    h("thead", {}, h("tr", {}, ...headings.map((heading) => h("th", { scope: "col" }, heading)))),
    h("tbody", {}, ...rows.map((row) => h("tr", {}, ...cells(row).map((cell) => h("td", {}, cell))))),
  );
}
