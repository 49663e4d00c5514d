/**
 * Progress coalescing for one running attempt: a handler may report progress as often as it likes; only the
 * latest report is kept, and each flush (the attempt's progress timer, see attemptTimers.ts) writes that one, so
 * the stream gets at most one TaskProgressed per interval. Writes run one after another, never two at once.
 */

/** One progress report as it is written: a fraction of the work done, and an optional message. */
export interface ProgressReport {
  fraction: number;
  message: string | null;
}

/** How a coalescer writes: `write` records one report, `onError` hears of a write that failed (not retried). */
export interface ProgressCoalescerOptions {
  write: (report: ProgressReport) => Promise<unknown>;
  onError: (error: unknown) => void;
}

/** Keeps the latest progress of one attempt and writes it at each flush, one write after another. */
export class ProgressCoalescer {
  private latest: ProgressReport | null = null;
  private writes: Promise<unknown> = Promise.resolve();
  private flushed = false;

  constructor(private readonly options: ProgressCoalescerOptions) {}

  /** The handler's report: replaces any report not yet written. */
  report(fraction: number, message?: string | null): void {
    this.latest = { fraction, message: message ?? null };
  }

  /** Writes the latest report, after the writes before it; nothing when no report came since the last flush. */
  flush(): void {
    if (!this.latest) return;
    const report = this.latest;
    this.latest = null;
    this.flushed = true;
    this.writes = this.writes.then(() => this.options.write(report)).catch(this.options.onError);
  }

  /** Whether any write was started: the stream may then have moved past the revision the claim left. */
  get wroteAny(): boolean {
    return this.flushed;
  }

  /** Resolves once every write started so far has ended; a report not yet flushed is not written. */
  settled(): Promise<void> {
    return this.writes.then(() => undefined);
  }
}
