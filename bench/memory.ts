import { getHeapSpaceStatistics, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { mb } from './stats.js';

/**
 * Resident size of this process, which is the service's: it runs in-process, started by the same code as
 * `task-manager start`, and the bench's load generator is a separate process. The orchestration left in here
 * (the sampler, the RPC to the load process, the CPU profiler when on) is small beside the service.
 */
export interface MemorySample {
  at: number;
  rss_mb: number;
  heap_used_mb: number;
  /**
   * The JS heap outside the young generation: what survived the scavenges, where a leak accumulates (with old
   * garbage not yet collected, which a major collection clears). heap_used_mb also holds the young generation's
   * garbage of the moment, up to a semi-space (32 MB in the service), which swings a sample by tens of MB and a
   * 10-minute trend by more than the 5 MB that counts as flat.
   */
  retained_heap_mb: number;
}

const YOUNG_SPACES = new Set(['new_space', 'new_large_object_space']);

/** Bytes the young generation holds now. */
function youngGenerationBytes(): number {
  return getHeapSpaceStatistics()
    .filter((space) => YOUNG_SPACES.has(space.space_name))
    .reduce((sum, space) => sum + space.space_used_size, 0);
}

export class MemorySampler {
  private timer: NodeJS.Timeout | null = null;
  private peakRss = 0;
  private phasePeak = 0;
  readonly samples: MemorySample[] = [];

  start(intervalMs = 500): void {
    this.sample();
    this.timer = setInterval(() => this.sample(), intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  sample(): MemorySample {
    const usage = process.memoryUsage();
    this.peakRss = Math.max(this.peakRss, usage.rss);
    this.phasePeak = Math.max(this.phasePeak, usage.rss);
    const sample = {
      at: Date.now(),
      rss_mb: mb(usage.rss),
      heap_used_mb: mb(usage.heapUsed),
      retained_heap_mb: mb(Math.max(0, usage.heapUsed - youngGenerationBytes())),
    };
    this.samples.push(sample);
    if (this.samples.length > 20_000) this.samples.splice(0, 10_000);
    return sample;
  }

  /** The peak since the last call (or since start). */
  takePhasePeakMb(): number {
    const peak = mb(this.phasePeak);
    this.phasePeak = process.memoryUsage().rss;
    return peak;
  }

  /** The highest resident size seen so far, in MB. */
  get peakMb(): number {
    return mb(this.peakRss);
  }

  /** Resets the overall peak, so it covers only what follows (the service's life, not the bench's set-up). */
  resetPeak(): void {
    this.peakRss = process.memoryUsage().rss;
    this.phasePeak = this.peakRss;
  }
}

let gcFunction: (() => void) | null | undefined;

/**
 * A full garbage collection, so "after" means live memory rather than garbage not yet collected. The command
 * line (`node --import tsx bench/run.ts`) has no --expose-gc, so the flag is set at run time; null when that
 * is not possible.
 */
export function collectGarbage(): boolean {
  if (gcFunction === undefined) {
    try {
      setFlagsFromString('--expose-gc');
      gcFunction = runInNewContext('gc') as () => void;
    } catch {
      gcFunction = null;
    }
  }
  if (!gcFunction) return false;
  gcFunction();
  return true;
}
