// Time series and percentile plots drawn by uPlot (a canvas chart library
// of about 50 KB that draws hundreds of thousands of points smoothly). The
// charts follow their container's width and the page's colour scheme.
//
// uPlot loads with the first chart, not with the page: the node grid, where
// a page of 10,000 nodes spends its first second, draws none. Its styles
// are in the page's stylesheet (main.ts imports them).

import type uPlot from "uplot";

import { h } from "./dom";

type UPlot = typeof uPlot;
let library: Promise<UPlot> | null = null;

/** uPlot, fetched once. */
function loadLibrary(): Promise<UPlot> {
  library ??= import("uplot").then((module) => module.default);
  return library;
}

export interface LineSpec {
  label: string;
  /** A CSS colour variable, e.g. `--series-1`. */
  color: string;
  /** How a value reads in the legend. */
  format: (value: number) => string;
  dash?: number[];
}

export interface ChartSpec {
  title: string;
  lines: LineSpec[];
  height?: number;
  /** The y axis starts at zero (default) or follows the data. */
  fromZero?: boolean;
  /**
   * The x axis: wall-clock time (default), seconds counted from 1 (a run's
   * seconds), or a log-scaled percentile axis.
   */
  x?: "time" | "seconds" | "percentile";
  /** Fixed bounds of the x axis (e.g. a run's whole duration), else the data's. */
  xRange?: [number, number];
  /** The y axis in log scale. */
  logY?: boolean;
}

function cssColor(variable: string): string {
  return getComputedStyle(document.documentElement).getPropertyValue(variable).trim() || "#888";
}

/**
 * A chart in `container`; call `set` with columns (x first) to draw. It
 * draws once uPlot has loaded (at once after the first chart), with the
 * latest columns given meanwhile.
 */
export class Chart {
  private plot: uPlot | null = null;
  private resize: ResizeObserver | null = null;
  private pending: (number | null)[][] | null = null;
  private destroyed = false;

  constructor(
    readonly container: HTMLElement,
    spec: ChartSpec,
  ) {
    loadLibrary().then(
      (UPlot) => {
        if (!this.destroyed) this.create(UPlot, spec);
      },
      (error: unknown) => {
        // The chart's code could not be fetched: most often the control
        // plane was upgraded under an open page.
        container.replaceChildren(h("strong", {}, spec.title), " This chart could not load: reload the page.");
        container.title = error instanceof Error ? error.message : String(error);
        container.classList.add("error");
      },
    );
  }

  private create(UPlot: UPlot, spec: ChartSpec): void {
    const container = this.container;
    const axisColor = cssColor("--muted");
    const gridColor = cssColor("--grid");
    const percentile = spec.x === "percentile";
    const seconds = spec.x === "seconds";
    const xRange = spec.xRange;
    const options: uPlot.Options = {
      title: spec.title,
      width: Math.max(200, container.clientWidth),
      height: spec.height ?? 160,
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
      hooks: {
        // Out of the cursor's way, the legend shows the latest values.
        draw: [
          (u) => {
            const last = u.data[0].length - 1;
            if (last >= 0 && u.cursor.idx == null && u.legend.idx !== last) u.setLegend({ idx: last }, false);
          },
        ],
      },
      scales: {
        x: percentile
          ? { time: false, distr: 3 }
          : seconds
            ? { time: false, ...(xRange ? { range: (): uPlot.Range.MinMax => xRange } : {}) }
            : { time: true },
        y: {
          distr: spec.logY ? 3 : 1,
          range: (_u, min, max) => {
            const low = spec.fromZero === false || spec.logY ? min : 0;
            const high = max > low ? max : low + 1;
            return [low, high * (spec.logY ? 1.5 : 1.1)];
          },
        },
      },
      axes: [
        {
          stroke: axisColor,
          grid: { stroke: gridColor, width: 1 },
          ticks: { stroke: gridColor },
          ...(percentile
            ? {
                // One tick a "nine" (0, 90, 99, 99.9 %…): between them labels crowd.
                splits: (_u: uPlot, _i: number, min: number, max: number) => {
                  const ticks: number[] = [];
                  for (let e = Math.ceil(Math.log10(min) - 1e-9); e <= Math.floor(Math.log10(max) + 1e-9); e++) ticks.push(10 ** e);
                  return ticks;
                },
                values: (_u: uPlot, ticks: number[]) => ticks.map((t) => percentileLabel(t)),
              }
            : {}),
          ...(seconds
            ? {
                incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600],
                values: (_u: uPlot, ticks: number[]) => ticks.map((t) => `${t} s`),
              }
            : {}),
        },
        {
          stroke: axisColor,
          grid: { stroke: gridColor, width: 1 },
          ticks: { stroke: gridColor },
          size: 64,
          // A log scale's splits between labelled ones come as null.
          values: (_u: uPlot, ticks: (number | null)[]) =>
            ticks.map((t) => (t === null ? null : (spec.lines[0]?.format(t) ?? String(t)))),
        },
      ],
      series: [
        percentile
          ? { label: "percentile", value: (_u, v) => (v === null ? "–" : percentileLabel(v)) }
          : seconds
            ? { label: "second", value: (_u, v) => (v === null ? "–" : String(v)) }
            : {},
        ...spec.lines.map((line) => ({
          label: line.label,
          stroke: cssColor(line.color),
          width: 2,
          spanGaps: false,
          ...(line.dash ? { dash: line.dash } : {}),
          value: (_u: uPlot, v: number | null) => (v === null ? "–" : line.format(v)),
        })),
      ],
    };
    const plot = new UPlot(options, [[], ...spec.lines.map(() => [])], container);
    this.plot = plot;
    this.resize = new ResizeObserver(() => {
      const width = Math.max(200, container.clientWidth);
      if (width !== plot.width) plot.setSize({ width, height: plot.height });
    });
    this.resize.observe(container);
    if (this.pending) this.set(this.pending);
    this.pending = null;
  }

  /** Draws `columns`: x values first, then one column per line. */
  set(columns: (number | null)[][]): void {
    const plot = this.plot;
    if (plot === null) {
      this.pending = columns;
      return;
    }
    plot.setData(columns as uPlot.AlignedData);
    // A chart drawn once (a report) shows its latest values too: uPlot's
    // first draw may come before its legend is ready for them.
    requestAnimationFrame(() => {
      const last = plot.data[0].length - 1;
      if (last >= 0 && plot.cursor.idx == null) plot.setLegend({ idx: last }, false);
    });
  }

  destroy(): void {
    this.destroyed = true;
    this.resize?.disconnect();
    this.plot?.destroy();
  }
}

/**
 * Percentile plots put `1 / (1 - p)` on a log axis, so 90, 99, 99.9 and
 * 99.99 are evenly spaced. This turns such a value back into its label;
 * the end of the axis, where `percentileX` puts the maximum (100), reads
 * `max`.
 */
export function percentileLabel(inverse: number): string {
  if (inverse >= percentileX(100) * (1 - 1e-9)) return "max";
  const p = 100 * (1 - 1 / inverse);
  if (p <= 0) return "0 %";
  const digits = Math.min(4, Math.max(0, Math.ceil(-Math.log10(100 - p)) + 1));
  // Zeros after the point go (99.900 → 99.9), not those of a whole number (90).
  return `${p.toFixed(digits).replace(/(\.\d*?)0+$/, "$1").replace(/\.$/, "")} %`;
}

/** The x value at which percentile `p` (0 to 100) is plotted. */
export function percentileX(p: number): number {
  return 1 / (1 - Math.min(p, 99.9999) / 100);
}
