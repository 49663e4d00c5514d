/** Command-line options and how long each phase runs in quick and full mode. */

export interface BenchOptions {
  quick: boolean;
  json: string | null;
  chart: string | null;
  /** Minutes of soak at a moderate rate; 0 = none. */
  soakMinutes: number;
  /** Where to write the CPU profile of the submit hot path (Chrome DevTools format); null = summarise only. */
  cpuProfile: string | null;
}

export interface Plan {
  mode: 'quick' | 'full';
  submitConcurrencies: number[];
  submitSeconds: number;
  pgSeconds: number;
  kafkaMessages: number;
  kafkaSingleSends: number;
  bullmqJobs: number;
  bullmqWarmup: number;
  /** Also run pg-boss through work() (bounded by its polling interval: about 400 jobs/s, so jobs / 400 s). */
  pgBossWork: boolean;
  getSeconds: number;
  uncachedIds: number;
  profileSeconds: number;
  /** Fixed offered rates, tasks/s. */
  e2eRates: number[];
  e2eSeconds: number;
  /** Offered rates well above capacity run this long, so the backlog they leave drains in bounded time. */
  overloadSeconds: number;
  drainTimeoutSeconds: number;
  burstTasks: number;
  sustainTries: number;
  sustainSeconds: number;
  rebuildMaxSeconds: number;
  /** A safety net: the whole run is aborted (and cleaned up) after this. */
  watchdogSeconds: number;
}

export const USAGE = `usage: npm run bench -- [--quick] [--json PATH] [--chart PATH] [--soak MINUTES] [--cpu-prof PATH]

  --quick        short phases, fewer rates (a smoke run, about 3 minutes)
  --json PATH    write every figure as JSON
  --chart PATH   write an SVG of end-to-end latency (p50, p99) against offered rate
  --soak N       also run N minutes at a moderate rate, sampling the resident size every 10 s
  --cpu-prof P   also write the CPU profile of POST /tasks there (Chrome DevTools format)

Starts PostgreSQL, Redis and Kafka with scripts/services.sh unless DATABASE_URL, REDIS_URL and
KAFKA_BROKERS are all set, and stops what it started.`;

export function parseArgs(argv: readonly string[]): BenchOptions {
  const options: BenchOptions = { quick: false, json: null, chart: null, soakMinutes: 0, cpuProfile: null };
  const value = (i: number, name: string): string => {
    const v = argv[i + 1];
    if (v === undefined || v.startsWith('--')) throw new Error(`${name} needs a value\n\n${USAGE}`);
    return v;
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--quick') options.quick = true;
    else if (arg === '--json') options.json = value(i++, arg);
    else if (arg === '--chart') options.chart = value(i++, arg);
    else if (arg === '--cpu-prof') options.cpuProfile = value(i++, arg);
    else if (arg === '--soak') {
      const minutes = Number(value(i++, arg));
      if (!Number.isFinite(minutes) || minutes <= 0 || minutes > 24 * 60)
        throw new Error(`--soak needs a number of minutes (0 < N <= 1440)\n\n${USAGE}`);
      options.soakMinutes = minutes;
    } else if (arg === '--help' || arg === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else throw new Error(`unknown argument ${arg}\n\n${USAGE}`);
  }
  return options;
}

export function planFor(options: BenchOptions): Plan {
  const soakSeconds = options.soakMinutes * 60;
  if (options.quick)
    return {
      mode: 'quick',
      submitConcurrencies: [1, 16, 64],
      submitSeconds: 3,
      pgSeconds: 2,
      kafkaMessages: 10_000,
      kafkaSingleSends: 200,
      bullmqJobs: 2_000,
      bullmqWarmup: 200,
      pgBossWork: true,
      getSeconds: 2,
      uncachedIds: 600,
      profileSeconds: 3,
      e2eRates: [50, 200],
      e2eSeconds: 4,
      overloadSeconds: 3,
      drainTimeoutSeconds: 15,
      burstTasks: 200,
      sustainTries: 1,
      sustainSeconds: 4,
      rebuildMaxSeconds: 15,
      watchdogSeconds: 8 * 60 + soakSeconds,
    };
  return {
    mode: 'full',
    submitConcurrencies: [1, 16, 64],
    submitSeconds: 15,
    pgSeconds: 10,
    kafkaMessages: 100_000,
    kafkaSingleSends: 1_000,
    bullmqJobs: 10_000,
    bullmqWarmup: 1_000,
    pgBossWork: true,
    getSeconds: 8,
    uncachedIds: 4_000,
    profileSeconds: 8,
    e2eRates: [50, 100, 200, 400, 1000],
    e2eSeconds: 15,
    overloadSeconds: 6,
    drainTimeoutSeconds: 60,
    burstTasks: 4_000,
    sustainTries: 3,
    sustainSeconds: 20,
    rebuildMaxSeconds: 90,
    watchdogSeconds: 28 * 60 + soakSeconds,
  };
}
