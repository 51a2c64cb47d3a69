// When to try again after a stream broke: exponential backoff with "full
// jitter" (each wait drawn between half and all of the capped exponential
// step), so that a hundred pages that lost the same control plane do not
// come back in one burst. Pure, tested in test/backoff.test.ts.

export interface BackoffOptions {
  /** The first wait's ceiling, in milliseconds. */
  initialMs: number;
  /** No wait exceeds this, in milliseconds. */
  maxMs: number;
  /** Each step multiplies the ceiling by this. */
  factor: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { initialMs: 250, maxMs: 8000, factor: 2 };

/** Successive waits; `reset` after a success starts again from the first. */
export class Backoff {
  private attempt = 0;

  constructor(
    private readonly options: BackoffOptions = DEFAULT_BACKOFF,
    private readonly random: () => number = Math.random,
  ) {}

  /** Failures since the last success. */
  get failures(): number {
    return this.attempt;
  }

  /** The wait before the next attempt, in milliseconds. */
  next(): number {
    const { initialMs, maxMs, factor } = this.options;
    const ceiling = Math.min(maxMs, initialMs * factor ** this.attempt);
    this.attempt += 1;
    return Math.round(ceiling / 2 + (this.random() * ceiling) / 2);
  }

  /** The stream works again. */
  reset(): void {
    this.attempt = 0;
  }
}

/** Resolves after `ms`, or at once (rejecting) when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", abort);
      resolve();
    }, ms);
    const abort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", abort, { once: true });
  });
}
