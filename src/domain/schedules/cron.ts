import { Cron } from 'croner';

/**
 * A schedule's cron expression in its time zone, parsed by croner: 5 fields (minute precision) or 6 (seconds first).
 * Time zones and daylight saving come from croner: a wall-clock time that a spring-forward skips runs at the first
 * instant after the gap (02:30 on the night Europe/Berlin jumps from 02:00 to 03:00 runs at 03:00), and one that a
 * fall-back repeats runs once, at its first occurrence. Every instant here is a whole second.
 */
export interface CronSchedule {
  /** The first tick strictly after `after`, or null when the expression never fires again. */
  next(after: Date): Date | null;
  /** The next `count` ticks strictly after `after`. */
  nextTicks(count: number, after: Date): Date[];
  /** The newest `count` ticks at or before `atOrBefore`, newest first. */
  previousTicks(count: number, atOrBefore: Date): Date[];
}

/** Why an expression or time zone cannot be used (one message each), or null when both can. */
export interface CronProblems {
  cron?: string;
  timezone?: string;
}

/** Whether `timezone` is an IANA zone name the runtime knows (`Europe/Berlin`, `UTC`). */
export function isKnownTimeZone(timezone: string): boolean {
  try {
    new Intl.DateTimeFormat('en', { timeZone: timezone });
    return true;
  } catch {
    return false;
  }
}

/** Parses without throwing: the problems to show a client, or the schedule. `now` is for "never fires". */
export function checkCron(
  cron: string,
  timezone: string,
  now: Date,
): { schedule: CronSchedule; problems: null } | { schedule: null; problems: CronProblems } {
  if (!isKnownTimeZone(timezone))
    return { schedule: null, problems: { timezone: 'is not a known IANA time zone' } };
  let schedule: CronSchedule;
  try {
    schedule = parseCron(cron, timezone);
  } catch (error) {
    return {
      schedule: null,
      problems: { cron: `is not a valid cron expression: ${(error as Error).message}` },
    };
  }
  if (schedule.next(now) === null) return { schedule: null, problems: { cron: 'never fires after now' } };
  return { schedule, problems: null };
}

/** Throws on an expression croner refuses. Only 5 and 6 fields: a year field would let a schedule end silently. */
export function parseCron(cron: string, timezone: string): CronSchedule {
  const job = new Cron(cron, { timezone, paused: true, mode: '5-or-6-parts' });
  return {
    next: (after) => job.nextRun(after),
    nextTicks: (count, after) => job.nextRuns(count, after),
    previousTicks: (count, atOrBefore) =>
      // croner counts a tick in the same second as the reference; one past it (in that second) is left out.
      job
        .previousRuns(count + 1, new Date(atOrBefore.getTime() + 1))
        .filter((tick) => tick.getTime() <= atOrBefore.getTime())
        .slice(0, count),
  };
}
