import { readdirSync, readFileSync, readlinkSync } from 'node:fs';

/**
 * CPU time by component, from /proc (Linux only; elsewhere every figure is null). Processes are grouped: the
 * service (this process), the bench's load generator, PostgreSQL backends serving the bench's databases
 * (`postgres`), PostgreSQL's own background processes (`pg_bg`: WAL writer, checkpointer, autovacuum, shared by
 * every database), Kafka (java: the bench's broker when its pid is known, see pidsListeningOn; else every java
 * process), Redis, and the rest of the machine (`other`: other people's tests, their PostgreSQL backends and
 * their Kafka brokers included, since this machine is shared). Ticks are USER_HZ, 100.
 */
export type Component = 'service' | 'load' | 'postgres' | 'pg_bg' | 'kafka' | 'redis' | 'other';

/** What each PostgreSQL server process is for, from pg_stat_activity. */
export type PgOwners = ReadonlyMap<number, 'bench' | 'background' | 'foreign'>;

export interface CpuSnapshot {
  at: number;
  byPid: Map<number, { component: Component; ticks: number }>;
  totalBusyTicks: number | null;
}

const TICKS_PER_SECOND = 100;

function readProcStat(pid: number): { comm: string; ticks: number } | null {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const close = text.lastIndexOf(')');
    const comm = text.slice(text.indexOf('(') + 1, close);
    const fields = text.slice(close + 2).split(' ');
    // fields[0] is state (field 3); utime and stime are fields 14 and 15.
    return { comm, ticks: Number(fields[11]) + Number(fields[12]) };
  } catch {
    return null;
  }
}

function totalBusy(): number | null {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
    const values = line.trim().split(/\s+/).slice(1).map(Number);
    const idle = (values[3] ?? 0) + (values[4] ?? 0);
    return values.reduce((a, b) => a + b, 0) - idle;
  } catch {
    return null;
  }
}

export interface Attribution {
  /** Processes that count as the service besides this one (role processes started apart). */
  servicePids?: ReadonlySet<number>;
  /** The bench's Kafka broker(s); other java processes count as `other`. Empty or absent: every java process. */
  kafkaPids?: ReadonlySet<number>;
}

export function cpuSnapshot(
  loadPid: number | null,
  pgOwners: PgOwners = new Map(),
  attribution: Attribution = {},
): CpuSnapshot {
  const servicePids = attribution.servicePids ?? new Set<number>();
  const kafkaPids = attribution.kafkaPids ?? new Set<number>();
  const byPid = new Map<number, { component: Component; ticks: number }>();
  let pids: number[];
  try {
    pids = readdirSync('/proc')
      .filter((name) => /^\d+$/.test(name))
      .map(Number);
  } catch {
    return { at: Date.now(), byPid, totalBusyTicks: null };
  }
  for (const pid of pids) {
    const stat = readProcStat(pid);
    if (!stat) continue;
    let component: Component = 'other';
    if (pid === process.pid || servicePids.has(pid)) component = 'service';
    else if (pid === loadPid) component = 'load';
    else if (stat.comm.startsWith('postgres')) {
      const owner = pgOwners.get(pid);
      component = owner === 'foreign' ? 'other' : owner === 'bench' ? 'postgres' : 'pg_bg';
    } else if (stat.comm === 'java')
      component = kafkaPids.size === 0 || kafkaPids.has(pid) ? 'kafka' : 'other';
    else if (stat.comm.startsWith('redis')) component = 'redis';
    byPid.set(pid, { component, ticks: stat.ticks });
  }
  return { at: Date.now(), byPid, totalBusyTicks: totalBusy() };
}

export interface CpuUsage {
  seconds: number;
  /** CPU seconds used per wall second, by component (1.0 = one core busy). */
  cores: Record<Component, number>;
  /** CPU milliseconds used in the interval, by component (not rounded; for per-task figures). */
  ms: Record<Component, number>;
  /** The whole machine, from /proc/stat. */
  machineCores: number | null;
}

/**
 * What each component used between two snapshots. Processes that exited in between are not counted. A
 * PostgreSQL process is classified by what the later snapshot knew of it (backends come and go).
 */
export function cpuBetween(before: CpuSnapshot, after: CpuSnapshot): CpuUsage {
  const seconds = Math.max(0.001, (after.at - before.at) / 1000);
  const ticks: Record<Component, number> = {
    service: 0,
    load: 0,
    postgres: 0,
    pg_bg: 0,
    kafka: 0,
    redis: 0,
    other: 0,
  };
  for (const [pid, now] of after.byPid) {
    const then = before.byPid.get(pid);
    ticks[now.component] += Math.max(0, now.ticks - (then?.ticks ?? 0));
  }
  const cores = Object.fromEntries(
    Object.entries(ticks).map(([name, t]) => [
      name,
      Math.round((t / TICKS_PER_SECOND / seconds) * 100) / 100,
    ]),
  ) as Record<Component, number>;
  const machineCores =
    before.totalBusyTicks === null || after.totalBusyTicks === null
      ? null
      : Math.round(((after.totalBusyTicks - before.totalBusyTicks) / TICKS_PER_SECOND / seconds) * 100) / 100;
  const ms = Object.fromEntries(
    Object.entries(ticks).map(([name, t]) => [name, (t * 1000) / TICKS_PER_SECOND]),
  ) as Record<Component, number>;
  return { seconds: Math.round(seconds * 10) / 10, cores, ms, machineCores };
}

/**
 * The processes listening on these TCP ports (LISTEN sockets of /proc/net/tcp and tcp6, matched to the socket
 * inodes among each process's file descriptors). Only processes whose command is `comm` are looked at, which
 * keeps the scan short. Empty when /proc cannot tell (not Linux, no permission).
 */
export function pidsListeningOn(ports: readonly number[], comm: string): Set<number> {
  const inodes = new Set<string>();
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
      const fields = line.trim().split(/\s+/);
      if (fields.length < 10 || fields[3] !== '0A') continue;
      const port = parseInt(fields[1]!.split(':').pop()!, 16);
      if (ports.includes(port)) inodes.add(fields[9]!);
    }
  }
  const pids = new Set<number>();
  if (inodes.size === 0) return pids;
  let entries: string[];
  try {
    entries = readdirSync('/proc').filter((name) => /^\d+$/.test(name));
  } catch {
    return pids;
  }
  for (const entry of entries) {
    const pid = Number(entry);
    if (readProcStat(pid)?.comm !== comm) continue;
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        const match = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
        if (match && inodes.has(match[1]!)) {
          pids.add(pid);
          break;
        }
      } catch {
        // the descriptor closed meanwhile
      }
    }
  }
  return pids;
}
