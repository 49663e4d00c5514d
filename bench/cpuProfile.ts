import { Session } from 'node:inspector/promises';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * A V8 CPU profile of this process (the service's main thread), taken through the inspector, like `--cpu-prof`
 * but only around one phase. Summarised by self time per function and per package, and written out in the
 * format Chrome DevTools opens.
 */
interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

export interface CpuProfileSummary {
  /** Where the profile was written (--cpu-prof), or null when it was only summarised. */
  file: string | null;
  sampled_ms: number;
  /** Share of the sampled time the thread was busy (not idle). */
  busy_share: number;
  by_area: Array<{ area: string; ms: number; share: number }>;
  /**
   * Busy time by the nearest module of ours up the stack (`src/projections/tasks/projection`, say): what each
   * component costs with the library and Node work it causes. Samples with no frame of ours above them (Node's
   * HTTP parsing, kafkajs's fetch loop, GC) count as `(no src) <area of the sampled frame>`.
   */
  by_component: Array<{ component: string; ms: number; share: number }>;
  /** Native frames (writev, createPublicKey's init...) carry `via`: the nearest JavaScript caller. */
  top_functions: Array<{ fn: string; where: string; via?: string; ms: number; share: number }>;
}

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** Which package or part of the code a frame belongs to. */
function areaOf(url: string, functionName: string): string {
  if (!url) {
    if (functionName === '(idle)') return '(idle)';
    if (functionName === '(garbage collector)') return '(garbage collector)';
    if (functionName === '(program)') return '(program: V8/native)';
    return '(native)';
  }
  if (url.startsWith('node:')) return 'node core';
  const file = url.startsWith('file://') ? fileURLToPath(url) : url;
  const modules = file.lastIndexOf('node_modules/');
  if (modules >= 0) {
    const parts = file.slice(modules + 'node_modules/'.length).split('/');
    return parts[0]!.startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]!;
  }
  const relative = path.relative(ROOT, file);
  if (relative.startsWith('src/')) return relative.split('/').slice(0, 3).join('/');
  return relative.startsWith('..') ? file : relative;
}

export class CpuProfiler {
  private session: Session | null = null;

  async start(): Promise<void> {
    this.session = new Session();
    this.session.connect();
    await this.session.post('Profiler.enable');
    await this.session.post('Profiler.setSamplingInterval', { interval: 200 });
    await this.session.post('Profiler.start');
  }

  async stop(file: string | null): Promise<CpuProfileSummary> {
    const session = this.session;
    if (!session) throw new Error('the profiler was not started');
    const { profile } = (await session.post('Profiler.stop')) as unknown as { profile: Profile };
    await session.post('Profiler.disable');
    session.disconnect();
    this.session = null;
    if (file) writeFileSync(file, JSON.stringify(profile));
    return summarizeProfile(profile, file);
  }
}

export function summarizeProfile(profile: Profile, file: string | null): CpuProfileSummary {
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const parentOf = new Map<number, number>();
  for (const node of profile.nodes) for (const child of node.children ?? []) parentOf.set(child, node.id);
  /** The nearest caller with source, skipping Node's internals, for frames that have none. */
  const via = (id: number): string | undefined => {
    for (let at = parentOf.get(id), hops = 0; at !== undefined && hops < 40; at = parentOf.get(at), hops++) {
      const frame = byId.get(at)!.callFrame;
      if (frame.url && !frame.url.startsWith('node:'))
        return `${frame.functionName || '(anonymous)'}@${areaOf(frame.url, frame.functionName)}`;
    }
    return undefined;
  };
  const selfUs = new Map<number, number>();
  const samples = profile.samples ?? [];
  const deltas = profile.timeDeltas ?? [];
  // Each sample's time is the delta to the next one.
  for (let i = 0; i < samples.length; i++) {
    const dt = deltas[i + 1] ?? 0;
    selfUs.set(samples[i]!, (selfUs.get(samples[i]!) ?? 0) + Math.max(0, dt));
  }
  const total = [...selfUs.values()].reduce((a, b) => a + b, 0) || 1;
  const areas = new Map<string, number>();
  const functions = new Map<string, { fn: string; where: string; via?: string; us: number }>();
  for (const [id, us] of selfUs) {
    const node = byId.get(id);
    if (!node) continue;
    const { functionName, url, lineNumber } = node.callFrame;
    const area = areaOf(url, functionName);
    areas.set(area, (areas.get(area) ?? 0) + us);
    const where = url ? `${area}:${lineNumber + 1}` : area;
    const fn = functionName || '(anonymous)';
    const caller = url && !url.startsWith('node:') ? undefined : via(id);
    const key = `${fn}@${where}<${caller ?? ''}`;
    const entry = functions.get(key) ?? { fn, where, ...(caller ? { via: caller } : {}), us: 0 };
    entry.us += us;
    functions.set(key, entry);
  }
  const components = new Map<string, number>();
  for (const [id, us] of selfUs) {
    const node = byId.get(id);
    if (!node || node.callFrame.functionName === '(idle)') continue;
    let component: string | null = null;
    for (
      let at: number | undefined = id, hops = 0;
      at !== undefined && hops < 200;
      at = parentOf.get(at), hops++
    ) {
      const frame = byId.get(at)!.callFrame;
      const area = frame.url ? areaOf(frame.url, frame.functionName) : '';
      if (area.startsWith('src/')) {
        component = path.relative(
          ROOT,
          frame.url.startsWith('file://') ? fileURLToPath(frame.url) : frame.url,
        );
        break;
      }
    }
    const key =
      component?.replace(/\.ts$/, '') ??
      `(no src) ${areaOf(node.callFrame.url, node.callFrame.functionName)}`;
    components.set(key, (components.get(key) ?? 0) + us);
  }
  const idle = areas.get('(idle)') ?? 0;
  const share = (us: number) => Math.round((us / total) * 1000) / 1000;
  return {
    file,
    sampled_ms: Math.round(total / 1000),
    busy_share: share(total - idle),
    by_area: [...areas]
      .map(([area, us]) => ({ area, ms: Math.round(us / 1000), share: share(us) }))
      .sort((a, b) => b.ms - a.ms)
      .slice(0, 20),
    by_component: [...components]
      .map(([component, us]) => ({ component, ms: Math.round(us / 1000), share: share(us) }))
      .sort((a, b) => b.ms - a.ms)
      .slice(0, 25),
    top_functions: [...functions.values()]
      .filter((f) => f.fn !== '(idle)')
      .map((f) => ({
        fn: f.fn,
        where: f.where,
        ...(f.via ? { via: f.via } : {}),
        ms: Math.round(f.us / 1000),
        share: share(f.us),
      }))
      .sort((a, b) => b.ms - a.ms)
      .slice(0, 20),
  };
}
