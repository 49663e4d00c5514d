import autocannon from 'autocannon';
import { round, summarize, type LatencySummary } from './stats.js';

export interface HttpLoadRequest {
  url: string;
  method: 'GET' | 'POST';
  /** A fixed path, or a list of paths taken in turn (each used once when `once` is set). */
  path: string | string[];
  once?: boolean;
  token: string;
  body?: unknown;
  connections: number;
  seconds: number;
}

export interface HttpLoadResult extends LatencySummary {
  connections: number;
  seconds: number;
  per_s: number;
  ok: number;
  non_2xx: number;
  errors: number;
  status_codes: Record<string, number>;
}

/**
 * Closed-loop load with autocannon's programmatic API (`connections` requests in flight at once). Latency
 * percentiles come from every response's own time (autocannon's summary has no p95); the rate counts 2xx only.
 */
export async function httpLoad(request: HttpLoadRequest): Promise<HttpLoadResult> {
  const headers: Record<string, string> = { authorization: `Bearer ${request.token}` };
  let body: string | undefined;
  if (request.body !== undefined) {
    body = JSON.stringify(request.body);
    headers['content-type'] = 'application/json';
  }
  const paths = Array.isArray(request.path) ? request.path : [request.path];
  let next = 0;
  const latencies: number[] = [];
  const statusCodes: Record<string, number> = {};
  let ok = 0;
  const started = performance.now();
  const instance = autocannon({
    url: request.url,
    connections: request.connections,
    ...(request.once ? { amount: paths.length } : { duration: request.seconds }),
    timeout: 30,
    requests: [
      {
        method: request.method,
        path: paths[0]!,
        headers,
        ...(body === undefined ? {} : { body }),
        setupRequest: (req) => ({ ...req, path: paths[next++ % paths.length]! }),
      },
    ],
  });
  instance.on('response', (_client: unknown, status: number, _bytes: number, ms: number) => {
    statusCodes[status] = (statusCodes[status] ?? 0) + 1;
    if (status >= 200 && status < 300) {
      ok++;
      latencies.push(ms);
    }
  });
  const result = await instance;
  const seconds = (performance.now() - started) / 1000;
  return {
    connections: request.connections,
    seconds: round(seconds, 1)!,
    per_s: round(ok / seconds, 1)!,
    ok,
    non_2xx: result.non2xx,
    errors: result.errors + result.timeouts,
    status_codes: statusCodes,
    ...summarize(latencies),
  };
}
