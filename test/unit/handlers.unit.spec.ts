import { expect } from 'chai';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { handlerContext, taskHandlerContract } from '../contract/taskHandler.contract.js';
import { echoHandler } from '../../src/workers/handlers/echo.js';
import { failHandler } from '../../src/workers/handlers/fail.js';
import {
  abortable,
  HandlerRegistry,
  isAbortError,
  UnrecoverableError,
  type TaskHandler,
} from '../../src/workers/handlers/handler.js';
import { createHttpHandler, isPrivateAddress } from '../../src/workers/handlers/http.js';
import { createHandlerRegistry } from '../../src/workers/handlers/index.js';
import { submittedPayloadErrors } from '../../src/commands/tasks/payloadErrors.js';
import { sleepHandler } from '../../src/workers/handlers/sleep.js';
import { gatherHandler } from '../../src/workers/handlers/gather.js';
import { rejection } from '../support/fixtures.js';

const httpSettings = {
  allowedHosts: [],
  allowPrivateAddresses: false,
  maxResponseBytes: 1024,
  maxRedirects: 2,
};

taskHandlerContract('echo', () => ({ handler: echoHandler, payload: { hello: ['world', 1, null] } }));
taskHandlerContract('sleep', () => ({ handler: sleepHandler, payload: { ms: 20 } }));
taskHandlerContract('gather', () => ({ handler: gatherHandler, payload: null }));
taskHandlerContract('fail', () => ({
  handler: failHandler,
  payload: { message: 'boom' },
  outcome: 'rejects',
}));

describe('the gather handler', () => {
  it("returns how each dependency ended, in depends_on order, from the context's dependencies", async () => {
    const context = {
      ...handlerContext(),
      dependencies: async () => [
        { taskId: 'b', status: 'done' as const, result: { n: 2 }, error: null },
        {
          taskId: 'a',
          status: 'failed' as const,
          result: null,
          error: { kind: 'error' as const, message: 'x' },
        },
      ],
    };
    expect(await gatherHandler.run(null, context)).to.deep.equal({
      results: [
        { task_id: 'b', status: 'done', result: { n: 2 } },
        { task_id: 'a', status: 'failed', result: null },
      ],
    });
  });
});

let server: Server | undefined;
taskHandlerContract(
  'http',
  async () => {
    server = createServer((req, res) => {
      req.resume();
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ received: req.method }));
    });
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
    const host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
    return {
      handler: createHttpHandler({ ...httpSettings, allowedHosts: [host], allowPrivateAddresses: true }),
      payload: { url: `http://${host}/hook`, method: 'POST', body: { hello: 'world' }, timeout_ms: 5000 },
    };
  },
  async () => {
    server?.closeAllConnections();
    await new Promise((resolve) => server?.close(resolve));
  },
);

describe('echo handler', () => {
  it('returns its payload', async () => {
    const payload = { title: 'report', nested: { tags: ['a', 'ü'] }, none: null };
    expect(await echoHandler.run(payload, handlerContext())).to.deep.equal(payload);
    expect(await echoHandler.run('text', handlerContext())).to.equal('text');
  });

  it('returns null when the task has no payload', async () => {
    expect(await echoHandler.run(undefined, handlerContext())).to.equal(null);
  });
});

describe('sleep handler', () => {
  it('does not finish before ms have passed, and returns slept_ms', async () => {
    const started = performance.now();
    const result = await sleepHandler.run({ ms: 150 }, handlerContext());
    expect(performance.now() - started).to.be.at.least(150);
    expect(result).to.deep.equal({ slept_ms: 150 });
  });

  it('reports progress about every second and 1 at the end', async function () {
    this.timeout(10_000);
    const context = handlerContext();
    await sleepHandler.run({ ms: 1200 }, context);
    const fractions = context.reports.map((report) => report.fraction);
    expect(fractions.length).to.be.at.least(2);
    expect(fractions[0]).to.be.above(0).and.below(1);
    expect(fractions.at(-1)).to.equal(1);
    expect([...fractions].sort((a, b) => a - b)).to.deep.equal(fractions);
    expect(context.reports.at(-1)!.message).to.equal('slept 1200 ms');
  });

  it('returns at once for ms 0', async () => {
    expect(await sleepHandler.run({ ms: 0 }, handlerContext())).to.deep.equal({ slept_ms: 0 });
  });

  it('rejects with an AbortError as soon as its signal aborts mid-sleep, keeping the reason as cause', async function () {
    // The test's own timeout is the promptness check: without the abort, the sleep would last an hour.
    this.timeout(2000);
    const controller = new AbortController();
    const reason = new Error('task canceled');
    const running = sleepHandler.run({ ms: 3_600_000 }, handlerContext(controller.signal));
    setTimeout(() => controller.abort(reason), 50);
    const error = await rejection(running);
    expect(error.name).to.equal('AbortError');
    expect(error.cause).to.equal(reason);
  });
});

describe('fail handler', () => {
  it('throws a retryable error with the message', async () => {
    const error = await rejection(failHandler.run({ message: 'boom' }, handlerContext()));
    expect(error).to.be.instanceOf(Error).and.not.instanceOf(UnrecoverableError);
    expect(error.message).to.equal('boom');
  });

  it('uses a default message, also without a payload', async () => {
    expect((await rejection(failHandler.run({}, handlerContext()))).message).to.equal('failed on purpose');
    expect((await rejection(failHandler.run(undefined, handlerContext()))).message).to.equal(
      'failed on purpose',
    );
  });

  it('throws UnrecoverableError when asked to', async () => {
    const error = await rejection(
      failHandler.run({ message: 'no hope', unrecoverable: true }, handlerContext()),
    );
    expect(error).to.be.instanceOf(UnrecoverableError);
    expect(error.message).to.equal('no hope');
    const retryable = await rejection(failHandler.run({ unrecoverable: false }, handlerContext()));
    expect(retryable).to.not.be.instanceOf(UnrecoverableError);
  });
});

describe('handler registry', () => {
  const registry = createHandlerRegistry({ http: httpSettings });
  // A submission is checked against the catalogue of the types the registry runs.
  const validatePayload = (type: string, payload: unknown) =>
    submittedPayloadErrors(registry.catalogue, type, payload);

  it('registers the built-in handlers by type', () => {
    expect(registry.types()).to.deep.equal(['echo', 'fail', 'gather', 'http', 'sleep']);
    expect(registry.get('sleep')).to.equal(sleepHandler);
    expect(registry.get('http')?.type).to.equal('http');
  });

  it('has no handler for an unknown type, and says so with a path', () => {
    expect(registry.get('teleport')).to.equal(undefined);
    const [error, ...rest] = validatePayload('teleport', {});
    expect(rest).to.deep.equal([]);
    expect(error!.path).to.equal('/body/type');
    expect(error!.message).to.contain('echo, fail, gather, http, sleep');
  });

  it('accepts valid payloads, an absent one where the handler allows it', () => {
    expect(validatePayload('sleep', { ms: 0 })).to.deep.equal([]);
    expect(validatePayload('echo', undefined)).to.deep.equal([]);
    expect(validatePayload('fail', undefined)).to.deep.equal([]);
    expect(validatePayload('http', { url: 'https://hooks.example.com/x', body: [1] })).to.deep.equal([]);
  });

  it('points at the offending field', () => {
    expect(validatePayload('sleep', { ms: -1 })).to.deep.equal([
      { path: '/body/payload/ms', message: 'must be >= 0' },
    ]);
    expect(validatePayload('sleep', { ms: 'soon' })).to.deep.equal([
      { path: '/body/payload/ms', message: 'must be integer' },
    ]);
    expect(validatePayload('sleep', { ms: 3_600_001 }).map((e) => e.path)).to.deep.equal([
      '/body/payload/ms',
    ]);
    expect(validatePayload('sleep', {})).to.deep.equal([
      { path: '/body/payload/ms', message: 'is required' },
    ]);
    expect(validatePayload('sleep', undefined).map((e) => e.path)).to.deep.equal(['/body/payload']);
    expect(validatePayload('fail', { mesage: 'typo' })).to.deep.equal([
      { path: '/body/payload/mesage', message: 'is not an allowed field' },
    ]);
  });

  it('checks http payloads: scheme, method, and no body with GET or HEAD', () => {
    expect(validatePayload('http', { url: 'ftp://files.example.com/x' }).map((e) => e.path)).to.deep.equal([
      '/body/payload/url',
    ]);
    expect(
      validatePayload('http', { url: 'https://a.example/', method: 'TRACE' }).map((e) => e.path),
    ).to.deep.equal(['/body/payload/method']);
    expect(validatePayload('http', { url: 'https://a.example/', method: 'GET', body: {} })).to.deep.equal([
      { path: '/body/payload/body', message: 'is not allowed here' },
    ]);
    expect(
      validatePayload('http', { url: 'https://a.example/', headers: { 'bad name': 'x' } }).map((e) => e.path),
    ).to.deep.equal(['/body/payload/headers/bad name']);
  });

  it('refuses two handlers of one type, and a schema strict mode rejects, when it is built', () => {
    expect(() => new HandlerRegistry([echoHandler, echoHandler])).to.throw(
      /two task handlers for type "echo"/,
    );
    const sloppy: TaskHandler = {
      ...echoHandler,
      type: 'sloppy',
      payloadSchema: { type: 'object', propertes: {} },
    };
    expect(() => new HandlerRegistry([sloppy])).to.throw(/task handler "sloppy": invalid payload schema/);
  });
});

describe('abort helpers', () => {
  it('abortable settles like the promise while the signal is live', async () => {
    expect(await abortable(new AbortController().signal, Promise.resolve(7))).to.equal(7);
    const error = await rejection(abortable(new AbortController().signal, Promise.reject(new Error('own'))));
    expect(error.message).to.equal('own');
  });

  it('abortable rejects with an AbortError when the signal aborts first', async () => {
    const controller = new AbortController();
    const never = new Promise<never>(() => {});
    setTimeout(() => controller.abort(), 10);
    expect(isAbortError(await rejection(abortable(controller.signal, never)))).to.equal(true);
  });

  it('isAbortError recognises the platform AbortError and nothing else', () => {
    expect(isAbortError(new DOMException('stop', 'AbortError'))).to.equal(true);
    expect(isAbortError(new Error('stop'))).to.equal(false);
    expect(isAbortError(new DOMException('late', 'TimeoutError'))).to.equal(false);
    expect(isAbortError('AbortError')).to.equal(false);
  });
});

describe('http handler address rules', () => {
  const privateAddresses = [
    '127.0.0.1',
    '127.8.9.10',
    '10.1.2.3',
    '172.16.0.1',
    '172.31.255.255',
    '192.168.1.1',
    '169.254.169.254',
    '100.64.0.1',
    '0.0.0.0',
    '224.0.0.1',
    '255.255.255.255',
    '::',
    '::1',
    'fe80::1',
    'fd12:3456::1',
    'fc00::1',
    'ff02::1',
    '::ffff:127.0.0.1',
    '::ffff:7f00:1',
    '::ffff:10.0.0.1',
    '::ffff:169.254.169.254',
    'not-an-address',
  ];
  const publicAddresses = [
    '8.8.8.8',
    '1.1.1.1',
    '172.32.0.1',
    '192.169.0.1',
    '2606:4700:4700::1111',
    '::ffff:8.8.8.8',
  ];

  for (const address of privateAddresses)
    it(`treats ${address} as not public`, () => expect(isPrivateAddress(address)).to.equal(true));
  for (const address of publicAddresses)
    it(`treats ${address} as public`, () => expect(isPrivateAddress(address)).to.equal(false));
});
