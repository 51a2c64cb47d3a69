// How figures read on the page: bytes, percentages, latencies, rates,
// durations and times. Pure functions, tested in test/format.test.ts.

const BYTE_UNITS = ["B", "KiB", "MiB", "GiB", "TiB"] as const;

/** `1536` → `1.5 KiB`; whole bytes below 1 KiB. */
export function bytes(value: number | bigint): string {
  let n = Number(value);
  if (!Number.isFinite(n) || n < 0) return "–";
  let unit = 0;
  while (n >= 1024 && unit < BYTE_UNITS.length - 1) {
    n /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${n} B` : `${n < 10 ? n.toFixed(1) : Math.round(n)} ${BYTE_UNITS[unit]}`;
}

/** A share from 0 to 100 (`12.345` → `12.3 %`). */
export function percent(value: number): string {
  if (!Number.isFinite(value)) return "–";
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} %`;
}

/** A ratio from 0 to 1 as a percentage (`0.0123` → `1.23 %`). */
export function ratio(value: number): string {
  if (!Number.isFinite(value)) return "–";
  const p = value * 100;
  if (p === 0) return "0 %";
  return `${p < 1 ? p.toFixed(2) : p < 10 ? p.toFixed(1) : Math.round(p)} %`;
}

/** A latency given in microseconds: `850 µs`, `1.25 ms`, `2.5 s`. */
export function micros(value: number | bigint): string {
  const us = Number(value);
  if (!Number.isFinite(us) || us < 0) return "–";
  if (us < 1000) return `${Math.round(us)} µs`;
  const ms = us / 1000;
  if (ms < 1000) return `${ms < 10 ? ms.toFixed(2) : ms < 100 ? ms.toFixed(1) : Math.round(ms)} ms`;
  const s = ms / 1000;
  return `${s < 10 ? s.toFixed(2) : s.toFixed(1)} s`;
}

/** A count with thousands separated by thin spaces: `12 345`. */
export function count(value: number | bigint): string {
  const n = typeof value === "bigint" ? value : BigInt(Math.round(Number.isFinite(value) ? value : 0));
  const negative = n < 0n;
  const digits = (negative ? -n : n).toString();
  const groups: string[] = [];
  for (let end = digits.length; end > 0; end -= 3) {
    groups.unshift(digits.slice(Math.max(0, end - 3), end));
  }
  return (negative ? "-" : "") + groups.join("\u2009");
}

/** Requests (or anything) per second: `950/s`, `12.3k/s`, `1.2M/s`. */
export function rate(value: number): string {
  if (!Number.isFinite(value) || value < 0) return "–";
  if (value < 1000) return `${value < 10 ? value.toFixed(1) : Math.round(value)}/s`;
  if (value < 1e6) return `${(value / 1000).toFixed(value < 1e4 ? 2 : 1)}k/s`;
  return `${(value / 1e6).toFixed(2)}M/s`;
}

/** A span of time given in milliseconds: `250 ms`, `42 s`, `3 min 5 s`, `2 h 1 min`, `3 d 4 h`. */
export function duration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return "–";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return s % 60 ? `${m} min ${s % 60} s` : `${m} min`;
  const h = Math.floor(m / 60);
  if (h < 24) return m % 60 ? `${h} h ${m % 60} min` : `${h} h`;
  const d = Math.floor(h / 24);
  return h % 24 ? `${d} d ${h % 24} h` : `${d} d`;
}

/** How long ago `then` was, seen from `now`: `just now`, `5 s ago`, `3 min ago`. */
export function ago(then: Date, now: Date): string {
  const ms = now.getTime() - then.getTime();
  if (ms < 1000) return "just now";
  return `${duration(ms)} ago`;
}

/** A wall-clock time of day, `14:03:07`, in the page's time zone. */
export function clock(at: Date): string {
  const two = (n: number) => String(n).padStart(2, "0");
  return `${two(at.getHours())}:${two(at.getMinutes())}:${two(at.getSeconds())}`;
}

/** A date and time, `2026-12-02 14:03:07`, in the page's time zone. */
export function dateTime(at: Date): string {
  const two = (n: number) => String(n).padStart(2, "0");
  return `${at.getFullYear()}-${two(at.getMonth() + 1)}-${two(at.getDate())} ${clock(at)}`;
}

/** `1 node`, `3 nodes`. */
export function plural(n: number, one: string, many = `${one}s`): string {
  return `${count(n)} ${n === 1 ? one : many}`;
}
