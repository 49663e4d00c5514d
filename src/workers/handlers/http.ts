import { lookup } from 'node:dns/promises';
import { BlockList, isIP } from 'node:net';
import type { Config } from '../../config.js';
import { httpTaskType, type HttpMethod } from '../../domain/tasks/taskTypes.js';
import type { JsonObject, JsonValue } from '../../infra/eventStore/eventStore.js';
import {
  abortable,
  abortError,
  isAbortError,
  throwIfAborted,
  UnrecoverableError,
  type TaskHandler,
} from './handler.js';

export type HttpHandlerSettings = Config['handlers']['http'];

export interface HttpPayload {
  url: string;
  method?: HttpMethod;
  headers?: Record<string, string>;
  body?: JsonValue;
  timeout_ms?: number;
}

export interface HttpResult extends JsonObject {
  status: number;
  headers: Record<string, string>;
  /** Parsed JSON for a complete JSON response, else the text; null when the response had no body. */
  body: JsonValue;
  /** The body was longer than `maxResponseBytes` and was cut there (so it is never parsed as JSON). */
  truncated: boolean;
}

const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);

// Request headers the HTTP client manages itself: undici rejects most of them at send time and silently
// ignores `host`, so refusing them up front gives a clear error instead of a retried "fetch failed".
const CLIENT_MANAGED_HEADERS = new Set([
  'connection',
  'content-length',
  'expect',
  'host',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'upgrade',
]);

// Dropped when a redirect leaves the origin, as browsers' fetch does: credentials meant for the webhook
// must not be handed to wherever it redirects.
const CREDENTIAL_HEADERS = ['authorization', 'cookie', 'proxy-authorization'];

// Not public unicast: loopback, private, link-local, unique-local, unspecified, and the other ranges a
// webhook has no business reaching (carrier-grade NAT, benchmarking, multicast, reserved). BlockList also
// matches IPv4-mapped IPv6 addresses (::ffff:127.0.0.1) against the IPv4 rules.
const blockedAddresses = new BlockList();
for (const [network, prefix] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['224.0.0.0', 4],
  ['240.0.0.0', 4],
] as const)
  blockedAddresses.addSubnet(network, prefix, 'ipv4');
for (const [network, prefix] of [
  ['::', 96], // unspecified, loopback and the deprecated IPv4-compatible form
  ['fc00::', 7],
  ['fe80::', 10],
  ['fec0::', 10],
  ['ff00::', 8],
] as const)
  blockedAddresses.addSubnet(network, prefix, 'ipv6');

/** True for an address the http handler must not call unless `allowPrivateAddresses`; fails closed. */
export function isPrivateAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 0) return true;
  return blockedAddresses.check(address, family === 4 ? 'ipv4' : 'ipv6');
}

const effectivePort = (url: URL): string => url.port || (url.protocol === 'https:' ? '443' : '80');

/** A bare host name in the list allows every port of it; `name:port` allows that port only. */
function isHostAllowed(url: URL, allowedHosts: ReadonlySet<string>): boolean {
  return allowedHosts.has(url.hostname) || allowedHosts.has(`${url.hostname}:${effectivePort(url)}`);
}

// Messages end up in task events and logs: leave out the query string, which often carries a token.
const describeUrl = (url: URL): string => `${url.origin}${url.pathname}`;

const bareHostname = (url: URL): string => url.hostname.replace(/^\[(.*)\]$/, '$1');

function parseUrl(value: string, base?: URL): URL {
  try {
    return new URL(value, base);
  } catch {
    throw new UnrecoverableError(`not a valid URL: ${JSON.stringify(value.slice(0, 200))}`);
  }
}

async function checkDestination(
  url: URL,
  settings: HttpHandlerSettings,
  allowedHosts: ReadonlySet<string>,
  signal: AbortSignal,
): Promise<void> {
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw new UnrecoverableError(`${url.protocol} URLs are not supported: only http and https`);
  if (url.username || url.password)
    throw new UnrecoverableError('credentials in the URL are not supported: send an authorization header');
  if (!isHostAllowed(url, allowedHosts))
    throw new UnrecoverableError(
      `host ${url.host} is not in handlers.http.allowedHosts${allowedHosts.size === 0 ? ' (the list is empty)' : ''}`,
    );
  if (settings.allowPrivateAddresses) return;
  // DNS-rebinding caveat: fetch resolves the name again when it connects, so a name whose answers change
  // between the two lookups can still reach a private address. Closing that needs the connection pinned to
  // the checked address (a custom undici dispatcher whose `connect.lookup` checks each address), which the
  // global fetch does not offer without adding undici as a dependency.
  const hostname = bareHostname(url);
  let addresses: Array<{ address: string }>;
  try {
    addresses = await abortable(signal, lookup(hostname, { all: true, verbatim: true }));
  } catch (error) {
    if (isAbortError(error)) throw error;
    // Retryable: resolution failures are often transient (a resolver timeout, a record not yet published).
    throw new Error(`cannot resolve ${hostname}: ${(error as Error).message}`, { cause: error });
  }
  const blocked = addresses.find(({ address }) => isPrivateAddress(address));
  if (blocked)
    throw new UnrecoverableError(
      `${hostname} resolves to ${blocked.address}, a loopback, private or otherwise non-public address, ` +
        'which the http handler may not call (handlers.http.allowPrivateAddresses is false)',
    );
}

function requestHeaders(payload: HttpPayload): Headers {
  const headers = new Headers();
  for (const [name, value] of Object.entries(payload.headers ?? {})) {
    if (CLIENT_MANAGED_HEADERS.has(name.toLowerCase()))
      throw new UnrecoverableError(`header ${name} cannot be set: the HTTP client manages it`);
    try {
      headers.append(name, value);
    } catch (error) {
      throw new UnrecoverableError(`invalid header ${JSON.stringify(name)}: ${(error as Error).message}`);
    }
  }
  if (!headers.has('user-agent')) headers.set('user-agent', 'task-manager');
  if (payload.body !== undefined && !headers.has('content-type'))
    headers.set('content-type', 'application/json');
  return headers;
}

/** Reads at most `maxBytes` of the body, then cancels the stream so the rest is never downloaded. */
async function readCapped(
  response: Response,
  maxBytes: number,
): Promise<{ bytes: Uint8Array; truncated: boolean }> {
  if (!response.body) return { bytes: new Uint8Array(), truncated: false };
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  let truncated = false;
  let done = false;
  try {
    while (!done && !truncated) {
      const next = await reader.read();
      done = next.done;
      if (!next.value) continue;
      if (size + next.value.byteLength > maxBytes) {
        chunks.push(next.value.subarray(0, maxBytes - size));
        size = maxBytes;
        truncated = true;
      } else {
        chunks.push(next.value);
        size += next.value.byteLength;
      }
    }
  } finally {
    if (!done) await reader.cancel().catch(() => {});
  }
  return { bytes: Buffer.concat(chunks, size), truncated };
}

function decodeText(bytes: Uint8Array, contentType: string): string {
  const charset = /;\s*charset="?([^";\s]+)/i.exec(contentType)?.[1];
  try {
    return new TextDecoder(charset ?? 'utf-8').decode(bytes);
  } catch {
    return new TextDecoder('utf-8').decode(bytes);
  }
}

const isJsonMediaType = (contentType: string): boolean =>
  /^application\/(?:[\w.+-]+\+)?json\s*(?:;|$)/i.test(contentType.trim());

function parseBody(bytes: Uint8Array, truncated: boolean, contentType: string): JsonValue {
  if (bytes.byteLength === 0) return null;
  const text = decodeText(bytes, contentType);
  // A truncated or malformed JSON body is returned as text rather than failing the task: the response
  // arrived, and the text is what someone debugging it wants to see.
  if (!truncated && isJsonMediaType(contentType)) {
    try {
      return JSON.parse(text) as JsonValue;
    } catch {
      return text;
    }
  }
  return text;
}

function responseHeaders(response: Response): Record<string, string> {
  // Repeated headers (set-cookie is iterated once per value) are joined as one line, as HTTP allows.
  const joined = new Map<string, string>();
  response.headers.forEach((value, name) => {
    const previous = joined.get(name);
    joined.set(name, previous === undefined ? value : `${previous}, ${value}`);
  });
  // fromEntries, not assignment, so a header named __proto__ stays an ordinary field.
  return Object.fromEntries(joined);
}

const snippet = (body: JsonValue): string => {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  return text.length > 200 ? `${text.slice(0, 200)}...` : text;
};

/**
 * Calls a webhook. Every hop, the first and each redirect, must name a host in `allowedHosts` and, unless
 * `allowPrivateAddresses`, resolve only to public addresses: otherwise UnrecoverableError, since retrying
 * the same URL meets the same rule.
 *
 * Outcomes: 1xx-3xx (a 3xx without Location included) and 2xx resolve with the response. 5xx, 408, 429,
 * network and DNS errors and the payload's `timeout_ms` are plain errors, retried with back-off: the
 * server or the path to it may recover. Any other 4xx is an UnrecoverableError: the same request would
 * be refused again. Too many redirects is unrecoverable too: the same chain would be followed again.
 */
export function createHttpHandler(settings: HttpHandlerSettings): TaskHandler<HttpPayload> {
  const allowedHosts: ReadonlySet<string> = new Set(settings.allowedHosts.map((host) => host.toLowerCase()));

  return {
    ...httpTaskType,

    async run(payload, { signal: taskSignal, logger }) {
      throwIfAborted(taskSignal);
      let method: HttpMethod = payload.method ?? 'POST';
      let body = payload.body === undefined ? undefined : JSON.stringify(payload.body);
      if (body !== undefined && (method === 'GET' || method === 'HEAD'))
        throw new UnrecoverableError(`a ${method} request cannot have a body`);
      const headers = requestHeaders(payload);
      let url = parseUrl(payload.url);
      const timeoutSignal =
        payload.timeout_ms === undefined ? undefined : AbortSignal.timeout(payload.timeout_ms);
      const signal = timeoutSignal ? AbortSignal.any([taskSignal, timeoutSignal]) : taskSignal;

      try {
        for (let redirects = 0; ; redirects++) {
          await checkDestination(url, settings, allowedHosts, signal);
          logger.debug({ method, url: describeUrl(url), redirects }, 'http handler: sending request');
          let response: Response;
          try {
            response = await fetch(url, { method, headers, body, redirect: 'manual', signal });
          } catch (error) {
            if (isAbortError(error) || signal.aborted) throw error;
            const cause =
              (error as Error).cause instanceof Error ? ((error as Error).cause as Error).message : '';
            throw new Error(
              `${method} ${describeUrl(url)} failed: ${(error as Error).message}${cause ? ` (${cause})` : ''}`,
              {
                cause: error,
              },
            );
          }

          const location = REDIRECT_STATUSES.has(response.status) ? response.headers.get('location') : null;
          if (location === null) return await toResult(response, method, url);
          await response.body?.cancel().catch(() => {});
          if (redirects >= settings.maxRedirects)
            throw new UnrecoverableError(
              `${method} ${describeUrl(url)}: more than ${settings.maxRedirects} redirects (handlers.http.maxRedirects)`,
            );
          const next = parseUrl(location, url);
          // What fetch does with redirect: 'follow': 303 turns anything but HEAD into a GET, and 301/302 turn
          // a POST into a GET; 307 and 308 repeat the request as it was.
          if (
            (response.status === 303 && method !== 'HEAD') ||
            ((response.status === 301 || response.status === 302) && method === 'POST')
          ) {
            method = 'GET';
            body = undefined;
            headers.delete('content-type');
          }
          if (next.origin !== url.origin) for (const name of CREDENTIAL_HEADERS) headers.delete(name);
          url = next;
        }
      } catch (error) {
        if (taskSignal.aborted) throw abortError(taskSignal);
        if (timeoutSignal?.aborted)
          throw new Error(
            `${method} ${describeUrl(url)} timed out after ${payload.timeout_ms} ms (payload timeout_ms)`,
            {
              cause: error,
            },
          );
        throw error;
      }
    },
  };

  async function toResult(response: Response, method: HttpMethod, url: URL): Promise<HttpResult> {
    let read: { bytes: Uint8Array; truncated: boolean };
    try {
      read = await readCapped(response, settings.maxResponseBytes);
    } catch (error) {
      if (isAbortError(error)) throw error;
      throw new Error(
        `${method} ${describeUrl(url)}: reading the response failed: ${(error as Error).message}`,
        {
          cause: error,
        },
      );
    }
    const result: HttpResult = {
      status: response.status,
      headers: responseHeaders(response),
      body: parseBody(read.bytes, read.truncated, response.headers.get('content-type') ?? ''),
      truncated: read.truncated,
    };
    const { status } = response;
    if (status >= 500 || status === 429 || status === 408)
      throw new Error(`${method} ${describeUrl(url)} answered ${status}: ${snippet(result.body)}`);
    if (status >= 400)
      throw new UnrecoverableError(
        `${method} ${describeUrl(url)} answered ${status}: ${snippet(result.body)}`,
      );
    return result;
  }
}
