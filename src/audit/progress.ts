/** Where progress goes: process.stderr by default, so stdout stays clean for an export. */
export interface ProgressOutput {
  isTTY?: boolean;
  write(text: string): unknown;
}

export interface ProgressOptions {
  /** Leads each line: "verify", "export", "rebuild users". */
  label: string;
  /** Events expected in all, when known: adds a percentage and the time left. */
  total?: number | null;
  output?: ProgressOutput;
  /** Milliseconds clock; injectable for tests. */
  now?: () => number;
  /** Off a terminal, at most one line per this many milliseconds (logs should not fill with progress). */
  plainIntervalMs?: number;
}

export interface ProgressReporter {
  /** Pass as an `onProgress` callback; it is bound. */
  update: (progress: { events: number }) => void;
  /** Writes the final line (and ends the rewritten line on a terminal). */
  done: () => void;
}

const TTY_INTERVAL_MS = 100;
const count = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });

function duration(seconds: number): string {
  const total = Math.max(0, Math.round(seconds));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${s}` : `${m}:${s}`;
}

/**
 * Events done, rate and time left for long work. On a terminal one line is rewritten in place (at most ten
 * times a second); elsewhere, as in CI logs or when stderr is redirected, plain lines every few seconds.
 */
export function createProgressReporter(options: ProgressOptions): ProgressReporter {
  const output = options.output ?? process.stderr;
  const now = options.now ?? Date.now;
  const tty = output.isTTY === true;
  const interval = tty ? TTY_INTERVAL_MS : (options.plainIntervalMs ?? 5000);
  const total = options.total ?? null;
  const started = now();
  let events = 0;
  let lastWritten = -Infinity;

  const line = (): string => {
    const seconds = (now() - started) / 1000;
    const rate = seconds > 0 ? events / seconds : 0;
    let text = `${options.label}: ${count.format(events)} events, ${count.format(rate)}/s`;
    if (total !== null && total > 0) {
      text += ` of ${count.format(total)} (${Math.min(100, Math.floor((events / total) * 100))}%)`;
      if (rate > 0) text += `, ${duration(Math.max(0, total - events) / rate)} left`;
    }
    return text;
  };
  // "\x1b[K" clears what a longer previous line left behind.
  const write = (final: boolean) =>
    output.write(tty ? `\r${line()}\x1b[K${final ? '\n' : ''}` : `${line()}\n`);

  return {
    update: (progress) => {
      events = progress.events;
      const at = now();
      if (at - lastWritten < interval) return;
      lastWritten = at;
      write(false);
    },
    done: () => write(true),
  };
}
