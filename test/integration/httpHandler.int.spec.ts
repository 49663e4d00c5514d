import { expect } from 'chai';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { handlerContext } from '../contract/taskHandler.contract.js';
import { isAbortError, UnrecoverableError } from '../../src/workers/handlers/handler.js';
import {
  createHttpHandler,
  type HttpHandlerSettings,
  type HttpPayload,
  type HttpResult,
} from '../../src/workers/handlers/http.js';
import { rejection } from '../support/fixtures.js';

interface Received {
  method: string;
  path: string;
  headers: IncomingMessage['headers'];
  body: string;
}

/** A webhook receiver on 127.0.0.1 that records what reached it; routes are picked by path. */
class TestServer {
  readonly received: Received[] = [];
  private readonly server: Server;
  private readonly waiters: Array<() => void> = [];
  port = 0;

  constructor(private readonly route: (req: IncomingMessage, res: ServerResponse, url: URL) => void) {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (chunk: Buffer) => chunks.push(chunk));
      req.on('end', () => {
        const url = new URL(req.url ?? '/', `http://${req.headers.host}`);
        this.received.push({
          method: req.method ?? '',
          path: url.pathname + url.search,
          headers: req.headers,
          body: Buffer.concat(chunks).toString('utf8'),
        });
        this.waiters.splice(0).forEach((wake) => wake());
        this.route(req, res, url);
      });
    });
  }

  get host(): string {
    return `127.0.0.1:${this.port}`;
  }

  url(path: string): string {
    return `http://${this.host}${path}`;
  }

  async start(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as AddressInfo).port;
  }

  /** Resolves once a request (the next one, or any after `count` seen) has arrived. */
  nextRequest(count = this.received.length): Promise<void> {
    if (this.received.length > count) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

const MAX_RESPONSE_BYTES = 1024;
const MAX_REDIRECTS = 3;

function route(req: IncomingMessage, res: ServerResponse, url: URL): void {
  const [, first, second] = url.pathname.split('/');
  switch (first) {
    case 'echo':
      res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'x-custom': 'Yes' });
      res.end(JSON.stringify({ ok: true, method: req.method }));
      return;
    case 'text':
      res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
      res.end('hello, world');
      return;
    case 'cookies':
      res.setHeader('set-cookie', ['a=1', 'b=2']);
      res.setHeader('X-Mixed-Case', 'kept');
      res.end();
      return;
    case 'status': {
      const status = Number(second);
      res.writeHead(status, { 'content-type': 'application/problem+json' });
      res.end(JSON.stringify({ title: `status ${status}`, status }));
      return;
    }
    case 'redirect':
      res.writeHead(Number(url.searchParams.get('status') ?? 302), {
        location: url.searchParams.get('to') ?? '/',
      });
      res.end('moved');
      return;
    case 'loop':
      res.writeHead(302, { location: '/loop' });
      res.end();
      return;
    case 'big':
      res.writeHead(200, { 'content-type': 'application/json' });
      // Far more than the cap, in chunks: the handler must stop reading, not buffer it all.
      for (let i = 0; i < 64; i++) res.write(`"${'x'.repeat(1022)}"\n`);
      res.end();
      return;
    case 'slow':
      // Headers and a first chunk, then nothing: the body never completes.
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first chunk\n');
      return;
    default:
      res.writeHead(404).end();
  }
}

describe('http handler against a local server', function () {
  const server = new TestServer(route);
  const other = new TestServer(route);
  let settings: HttpHandlerSettings;

  before(async () => {
    await Promise.all([server.start(), other.start()]);
    settings = {
      allowedHosts: [server.host, other.host],
      allowPrivateAddresses: true,
      maxResponseBytes: MAX_RESPONSE_BYTES,
      maxRedirects: MAX_REDIRECTS,
    };
  });
  after(async () => {
    await Promise.all([server.stop(), other.stop()]);
  });
  beforeEach(() => {
    server.received.length = 0;
    other.received.length = 0;
  });

  const run = (payload: HttpPayload, overrides: Partial<HttpHandlerSettings> = {}, signal?: AbortSignal) =>
    createHttpHandler({ ...settings, ...overrides }).run(
      payload,
      handlerContext(signal),
    ) as Promise<HttpResult>;

  it('sends the method, headers and JSON body to the server', async () => {
    await run({
      url: server.url('/echo?token=secret'),
      method: 'PUT',
      headers: { 'X-Api-Key': 'k-123', Authorization: 'Bearer abc' },
      body: { event: 'done', items: [1, 2] },
    });
    expect(server.received).to.have.length(1);
    const [request] = server.received;
    expect(request!.method).to.equal('PUT');
    expect(request!.path).to.equal('/echo?token=secret');
    expect(request!.headers['x-api-key']).to.equal('k-123');
    expect(request!.headers.authorization).to.equal('Bearer abc');
    expect(request!.headers['content-type']).to.equal('application/json');
    expect(JSON.parse(request!.body)).to.deep.equal({ event: 'done', items: [1, 2] });
  });

  it('defaults to POST and keeps a content-type the payload sets', async () => {
    await run({
      url: server.url('/echo'),
      headers: { 'content-type': 'application/cloudevents+json' },
      body: null,
    });
    expect(server.received[0]!.method).to.equal('POST');
    expect(server.received[0]!.headers['content-type']).to.equal('application/cloudevents+json');
    expect(server.received[0]!.body).to.equal('null');
  });

  it('returns the status, lower-case headers and a parsed JSON body', async () => {
    const result = await run({ url: server.url('/echo'), method: 'GET' });
    expect(result.status).to.equal(200);
    expect(result.headers['x-custom']).to.equal('Yes');
    expect(result.headers['content-type']).to.equal('application/json; charset=utf-8');
    expect(result.body).to.deep.equal({ ok: true, method: 'GET' });
    expect(result.truncated).to.equal(false);
    expect(Object.keys(result.headers).every((name) => name === name.toLowerCase())).to.equal(true);
  });

  it('returns a text body as text, and joins repeated headers', async () => {
    expect((await run({ url: server.url('/text'), method: 'GET' })).body).to.equal('hello, world');
    const result = await run({ url: server.url('/cookies'), method: 'GET' });
    expect(result.headers['set-cookie']).to.equal('a=1, b=2');
    expect(result.headers['x-mixed-case']).to.equal('kept');
    expect(result.body).to.equal(null);
  });

  it('returns a null body for HEAD', async () => {
    const result = await run({ url: server.url('/echo'), method: 'HEAD' });
    expect(result).to.include({ status: 200, body: null });
    expect(server.received[0]!.method).to.equal('HEAD');
  });

  it('fails with a retryable error on 5xx and 429', async () => {
    for (const status of [500, 503, 429]) {
      const error = await rejection(run({ url: server.url(`/status/${status}`) }));
      expect(error).to.be.instanceOf(Error).and.not.be.instanceOf(UnrecoverableError);
      expect(error.message).to.contain(`answered ${status}`);
    }
  });

  it('fails with UnrecoverableError on 404 and other 4xx', async () => {
    for (const status of [400, 404, 410]) {
      const error = await rejection(run({ url: server.url(`/status/${status}`) }));
      expect(error).to.be.instanceOf(UnrecoverableError);
      expect(error.message).to.contain(`answered ${status}`).and.contain(`status ${status}`);
    }
  });

  it('refuses a host that is not in allowedHosts without calling it', async () => {
    const error = await rejection(run({ url: server.url('/echo') }, { allowedHosts: [other.host] }));
    expect(error).to.be.instanceOf(UnrecoverableError);
    expect(error.message).to.contain(`host ${server.host} is not in handlers.http.allowedHosts`);
    expect(server.received).to.have.length(0);
  });

  it('allows every port of a host listed without one', async () => {
    const result = await run({ url: server.url('/echo'), method: 'GET' }, { allowedHosts: ['127.0.0.1'] });
    expect(result.status).to.equal(200);
  });

  it('refuses 127.0.0.1 when private addresses are not allowed, even if the host is allowed by name', async () => {
    const error = await rejection(run({ url: server.url('/echo') }, { allowPrivateAddresses: false }));
    expect(error).to.be.instanceOf(UnrecoverableError);
    expect(error.message).to.contain('127.0.0.1').and.contain('allowPrivateAddresses');
    expect(server.received).to.have.length(0);
  });

  it('matches allowed host names case-insensitively, then checks what the name resolves to', async () => {
    // localhost resolves to loopback, so this never connects: the message shows the host check passed.
    const error = await rejection(
      run(
        { url: `http://LOCALHOST:${server.port}/echo` },
        { allowedHosts: ['LocalHost'], allowPrivateAddresses: false },
      ),
    );
    expect(error).to.be.instanceOf(UnrecoverableError);
    expect(error.message).to.match(/^localhost resolves to .*allowPrivateAddresses/);
  });

  it('refuses a redirect to a host that is not allowed', async () => {
    const target = `http://localhost:${server.port}/echo`;
    const error = await rejection(run({ url: server.url(`/redirect?to=${encodeURIComponent(target)}`) }));
    expect(error).to.be.instanceOf(UnrecoverableError);
    expect(error.message).to.contain(`host localhost:${server.port} is not in handlers.http.allowedHosts`);
    expect(server.received.map((r) => r.path)).to.deep.equal([`/redirect?to=${encodeURIComponent(target)}`]);
  });

  it('follows a redirect to an allowed path, turning a POST into a GET on 302', async () => {
    const result = await run({ url: server.url('/redirect?to=/echo'), body: { a: 1 } });
    expect(result.body).to.deep.equal({ ok: true, method: 'GET' });
    expect(server.received.map((r) => [r.method, r.path, r.body])).to.deep.equal([
      ['POST', '/redirect?to=/echo', '{"a":1}'],
      ['GET', '/echo', ''],
    ]);
  });

  it('repeats the method and body on 307, and drops credentials when the redirect leaves the origin', async () => {
    const to = encodeURIComponent(other.url('/echo'));
    const result = await run({
      url: server.url(`/redirect?status=307&to=${to}`),
      method: 'PATCH',
      headers: { authorization: 'Bearer abc', 'x-trace': 't1' },
      body: { a: 1 },
    });
    expect(result.body).to.deep.equal({ ok: true, method: 'PATCH' });
    const [request] = other.received;
    expect(request!.method).to.equal('PATCH');
    expect(request!.body).to.equal('{"a":1}');
    expect(request!.headers['x-trace']).to.equal('t1');
    expect(request!.headers.authorization).to.equal(undefined);
  });

  it('gives up after maxRedirects redirects', async () => {
    const error = await rejection(run({ url: server.url('/loop'), method: 'GET' }));
    expect(error).to.be.instanceOf(Error);
    expect(error.message).to.contain(`more than ${MAX_REDIRECTS} redirects`);
    expect(server.received).to.have.length(MAX_REDIRECTS + 1);
  });

  it('cuts a response longer than maxResponseBytes and flags it truncated', async () => {
    const result = await run({ url: server.url('/big'), method: 'GET' });
    expect(result.truncated).to.equal(true);
    expect(result.body).to.be.a('string');
    expect(Buffer.byteLength(result.body as string)).to.equal(MAX_RESPONSE_BYTES);
  });

  it('rejects with an abort error when the signal aborts during a slow response', async function () {
    this.timeout(3000);
    const controller = new AbortController();
    const running = run({ url: server.url('/slow'), method: 'GET' }, {}, controller.signal);
    await server.nextRequest(0);
    controller.abort();
    const error = await rejection(running);
    expect(isAbortError(error), String(error)).to.equal(true);
  });

  it('fails with a retryable error when the payload timeout_ms passes', async function () {
    this.timeout(3000);
    const error = await rejection(run({ url: server.url('/slow'), method: 'GET', timeout_ms: 200 }));
    expect(error).to.be.instanceOf(Error).and.not.be.instanceOf(UnrecoverableError);
    expect(isAbortError(error)).to.equal(false);
    expect(error.message).to.contain('timed out after 200 ms');
  });

  it('fails with a retryable error when nothing listens', async () => {
    const closed = new TestServer(route);
    await closed.start();
    const host = closed.host;
    await closed.stop();
    const error = await rejection(run({ url: `http://${host}/echo` }, { allowedHosts: [host] }));
    expect(error).to.be.instanceOf(Error).and.not.be.instanceOf(UnrecoverableError);
    expect(error.message).to.contain('failed');
  });

  it('refuses headers the HTTP client manages', async () => {
    const error = await rejection(run({ url: server.url('/echo'), headers: { Host: 'elsewhere.example' } }));
    expect(error).to.be.instanceOf(UnrecoverableError);
    expect(server.received).to.have.length(0);
  });
});
