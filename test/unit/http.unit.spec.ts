import { expect } from 'chai';
import { pino } from 'pino';
import { Api, type JSONSchema } from '../../src/infra/http/api.js';
import {
  createHttpApp,
  createMetrics,
  listen,
  type HttpAppDeps,
  type RunningServer,
} from '../../src/infra/http/app.js';
import { ServiceUnavailableError, UnauthorizedError } from '../../src/errors.js';
import { sleep } from '../support/wait.js';

const info = { title: 'task-manager', version: '0.0.0-test' };

const demoBody: JSONSchema = {
  type: 'object',
  required: ['title'],
  additionalProperties: false,
  properties: {
    title: { type: 'string', minLength: 1 },
    priority: { type: 'integer', minimum: 0, maximum: 10 },
  },
  examples: [{ title: 'write the report', priority: 3 }],
};

interface Harness {
  running: RunningServer;
  url: string;
  logs: Array<Record<string, unknown>>;
  api: Api;
}

/** A real app around a tiny Api; `logs` collects what the service logged, parsed. */
async function start(options: { corsOrigins?: string[]; ready?: () => boolean } = {}): Promise<Harness> {
  const logs: Array<Record<string, unknown>> = [];
  const logger = pino(
    { level: 'info' },
    { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) },
  );
  const api = new Api({
    authenticate: (req) => {
      if (req.get('authorization') !== 'Bearer good')
        throw new UnauthorizedError('A valid access token is required');
    },
  });
  api.route<{ title: string; priority?: number }, { dry_run: boolean }, { id: string }>(
    {
      method: 'post',
      path: '/demo/:id',
      operationId: 'createDemo',
      summary: 'Create a demo thing',
      tags: ['demo'],
      params: {
        type: 'object',
        required: ['id'],
        properties: { id: { type: 'string', pattern: '^[a-z0-9-]+$' } },
      },
      query: {
        type: 'object',
        additionalProperties: false,
        properties: { dry_run: { type: 'boolean', default: false } },
      },
      body: demoBody,
      responses: { 201: { description: 'Created', schema: { type: 'object' } } },
    },
    (req, res) => {
      res.status(201).json({ id: req.params.id, ...req.body, dry_run: req.query.dry_run });
    },
  );
  api.route(
    {
      method: 'get',
      path: '/private',
      operationId: 'private',
      summary: 'Needs a token',
      tags: ['demo'],
      auth: 'bearer',
      query: { type: 'object', properties: { limit: { type: 'integer' } } },
      responses: { 200: { description: 'OK' } },
    },
    (_req, res) => {
      res.json({ secret: 'visible to the token holder' });
    },
  );
  api.route(
    {
      method: 'get',
      path: '/boom',
      operationId: 'boom',
      summary: 'Fails',
      tags: ['demo'],
      responses: { 200: { description: 'never' } },
    },
    async () => {
      await Promise.resolve();
      throw new Error('internal detail password=hunter2', { cause: new Error('root cause in the driver') });
    },
  );
  api.route(
    {
      method: 'get',
      path: '/maintenance',
      operationId: 'maintenance',
      summary: 'Unavailable',
      tags: ['demo'],
      responses: { 200: { description: 'never' } },
    },
    () => {
      throw new ServiceUnavailableError(7, 'Down for maintenance');
    },
  );
  api.route(
    {
      method: 'get',
      path: '/db',
      operationId: 'db',
      summary: 'Database gone',
      tags: ['demo'],
      responses: { 200: { description: 'never' } },
    },
    () => {
      throw Object.assign(new Error('connect ECONNREFUSED 10.1.2.3:5432'), { code: 'ECONNREFUSED' });
    },
  );

  const app = createHttpApp({
    logger,
    bodyLimit: '1kb',
    api,
    readiness: [
      { name: 'always', check: async () => {} },
      {
        name: 'postgres',
        check: async () => {
          if (options.ready && !options.ready()) throw new Error('connection refused');
        },
      },
    ],
    metrics: createMetrics(),
    info,
    corsOrigins: options.corsOrigins,
  });
  const running = await listen(app, 0, '127.0.0.1');
  return { running, url: running.url, logs, api };
}

/** An app around `api` alone (silent, no readiness checks unless given), listening on a free port. */
const listenQuietly = (api: Api, deps: Partial<HttpAppDeps> = {}): Promise<RunningServer> =>
  listen(
    createHttpApp({
      logger: pino({ level: 'silent' }),
      bodyLimit: '1kb',
      api,
      readiness: [],
      metrics: createMetrics(),
      info,
      ...deps,
    }),
    0,
    '127.0.0.1',
  );

async function problemOf(response: Response): Promise<Record<string, unknown>> {
  expect(response.headers.get('content-type')).to.match(/^application\/problem\+json/);
  const body = (await response.json()) as Record<string, unknown>;
  expect(body.status).to.equal(response.status);
  expect(body.type).to.be.a('string');
  expect(body.title).to.be.a('string');
  expect(body.request_id).to.equal(response.headers.get('x-request-id'));
  return body;
}

const postJson = (url: string, body: string, headers: Record<string, string> = {}) =>
  fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body });

describe('HTTP shell', () => {
  let h: Harness;
  let databaseUp = true;

  before(async () => {
    h = await start({ ready: () => databaseUp });
  });
  after(async () => {
    await h?.running.close(1000);
  });

  describe('problem details', () => {
    it('answers an unknown route with a 404 problem naming the path', async () => {
      const response = await fetch(`${h.url}/nowhere?token=abc`);
      expect(response.status).to.equal(404);
      const body = await problemOf(response);
      expect(body).to.include({
        type: 'https://task-manager.dev/problems/not-found',
        title: 'Not Found',
        instance: '/nowhere',
      });
    });

    it('answers a known path with the wrong method with 405 and Allow', async () => {
      const response = await fetch(`${h.url}/health`, { method: 'DELETE' });
      expect(response.status).to.equal(405);
      expect(response.headers.get('allow')).to.equal('GET, HEAD');
      await problemOf(response);
    });

    it('rejects malformed JSON with 400', async () => {
      const response = await postJson(`${h.url}/demo/a1`, '{"title": ');
      expect(response.status).to.equal(400);
      const body = await problemOf(response);
      expect(body.type).to.equal('https://task-manager.dev/problems/malformed-json');
    });

    it('rejects a body that is not JSON with 415', async () => {
      const response = await fetch(`${h.url}/demo/a1`, {
        method: 'POST',
        headers: { 'content-type': 'text/plain' },
        body: 'title=x',
      });
      expect(response.status).to.equal(415);
      await problemOf(response);
    });

    it('rejects a body without a content type with 415', async () => {
      const response = await fetch(`${h.url}/demo/a1`, { method: 'POST', body: new Uint8Array([123, 125]) });
      expect(response.status).to.equal(415);
      await problemOf(response);
    });

    it('rejects a body over the limit with 413', async () => {
      const response = await postJson(`${h.url}/demo/a1`, JSON.stringify({ title: 'x'.repeat(2048) }));
      expect(response.status).to.equal(413);
      await problemOf(response);
    });

    it('lists every schema violation with its path', async () => {
      const response = await postJson(`${h.url}/demo/a1`, JSON.stringify({ priority: 'high' }));
      expect(response.status).to.equal(400);
      const body = await problemOf(response);
      expect(body.type).to.equal('https://task-manager.dev/problems/validation');
      expect(body.errors).to.have.deep.members([
        { path: '/body/title', message: 'is required' },
        { path: '/body/priority', message: 'must be integer' },
      ]);
    });

    it('rejects an unknown body field', async () => {
      const response = await postJson(
        `${h.url}/demo/a1`,
        JSON.stringify({ title: 'ok', owner: 'someone else' }),
      );
      expect(response.status).to.equal(400);
      const body = await problemOf(response);
      expect(body.errors).to.deep.equal([{ path: '/body/owner', message: 'is not an allowed field' }]);
    });

    it('asks for a body when a route needs one and none was sent', async () => {
      const response = await fetch(`${h.url}/demo/a1`, { method: 'POST' });
      expect(response.status).to.equal(400);
      const body = await problemOf(response);
      expect(body.errors).to.deep.equal([{ path: '/body', message: 'is required: send a JSON body' }]);
    });

    it('validates path parameters and query strings too', async () => {
      const response = await postJson(`${h.url}/demo/NOT_OK?dry_run=maybe`, JSON.stringify({ title: 'ok' }));
      expect(response.status).to.equal(400);
      const body = await problemOf(response);
      expect((body.errors as Array<{ path: string }>).map((e) => e.path)).to.have.members([
        '/params/id',
        '/query/dry_run',
      ]);
    });

    it('hands the handler a valid body and a coerced query with defaults', async () => {
      const coerced = await postJson(
        `${h.url}/demo/a1?dry_run=true`,
        JSON.stringify({ title: 'ok', priority: 2 }),
      );
      expect(coerced.status).to.equal(201);
      expect(await coerced.json()).to.deep.equal({ id: 'a1', title: 'ok', priority: 2, dry_run: true });
      const defaulted = await postJson(`${h.url}/demo/a1`, JSON.stringify({ title: 'ok' }));
      expect(await defaulted.json()).to.deep.equal({ id: 'a1', title: 'ok', dry_run: false });
    });

    it('authenticates before validating, and answers 401 with a challenge', async () => {
      const anonymous = await fetch(`${h.url}/private?limit=not-a-number`);
      expect(anonymous.status).to.equal(401);
      expect(anonymous.headers.get('www-authenticate')).to.equal('Bearer');
      expect((await problemOf(anonymous)).detail).to.equal('A valid access token is required');
      const allowed = await fetch(`${h.url}/private?limit=5`, { headers: { authorization: 'Bearer good' } });
      expect(allowed.status).to.equal(200);
    });

    it('answers an unexpected error with a bare 500 and logs it with its cause', async () => {
      const response = await fetch(`${h.url}/boom`);
      expect(response.status).to.equal(500);
      const text = await response.text();
      expect(text).not.to.match(/hunter2|root cause|stack|at .*\.ts/);
      const body = JSON.parse(text) as Record<string, unknown>;
      expect(body).to.deep.equal({
        type: 'https://task-manager.dev/problems/internal',
        title: 'Internal Server Error',
        status: 500,
        instance: '/boom',
        request_id: response.headers.get('x-request-id'),
      });
      const logged = h.logs.find((l) => l.msg === 'unhandled error' && l.request_id === body.request_id);
      expect(JSON.stringify(logged)).to.include('hunter2').and.to.include('root cause in the driver');
    });

    it('answers a ServiceUnavailableError with 503 and Retry-After', async () => {
      const response = await fetch(`${h.url}/maintenance`);
      expect(response.status).to.equal(503);
      expect(response.headers.get('retry-after')).to.equal('7');
      expect((await problemOf(response)).detail).to.equal('Down for maintenance');
    });

    it('answers a lost database connection with 503 and Retry-After, without naming the host', async () => {
      const response = await fetch(`${h.url}/db`);
      expect(response.status).to.equal(503);
      expect(response.headers.get('retry-after')).to.match(/^\d+$/);
      expect(JSON.stringify(await problemOf(response))).not.to.include('10.1.2.3');
    });
  });

  describe('request context and headers', () => {
    it('echoes a sane X-Request-Id and replaces an unsafe one', async () => {
      const echoed = await fetch(`${h.url}/health`, { headers: { 'x-request-id': 'abc-123.DEF_4' } });
      expect(echoed.headers.get('x-request-id')).to.equal('abc-123.DEF_4');
      const unsafe = await fetch(`${h.url}/health`, { headers: { 'x-request-id': 'a b<script>' } });
      expect(unsafe.headers.get('x-request-id')).to.match(/^[0-9a-f-]{36}$/);
      const tooLong = await fetch(`${h.url}/health`, { headers: { 'x-request-id': 'a'.repeat(129) } });
      expect(tooLong.headers.get('x-request-id')).to.match(/^[0-9a-f-]{36}$/);
    });

    it('generates a request id when none is sent', async () => {
      const first = await fetch(`${h.url}/health`);
      const second = await fetch(`${h.url}/health`);
      expect(first.headers.get('x-request-id')).to.match(/^[0-9a-f-]{36}$/);
      expect(first.headers.get('x-request-id')).not.to.equal(second.headers.get('x-request-id'));
    });

    it('logs one line per request without the query string', async () => {
      const response = await fetch(`${h.url}/health?access_token=s3cret`, {
        headers: { 'x-request-id': 'log-line-test' },
      });
      await response.text();
      await sleep(20);
      const lines = h.logs.filter((l) => l.request_id === 'log-line-test');
      expect(lines).to.have.length(1);
      expect(lines[0]).to.include({ msg: 'request', method: 'GET', path: '/health', status: 200 });
      expect(lines[0]!.duration_ms).to.be.a('number');
      expect(JSON.stringify(lines)).not.to.include('s3cret');
    });

    it('sends security headers and no X-Powered-By', async () => {
      const response = await fetch(`${h.url}/health`);
      expect(response.headers.get('x-powered-by')).to.equal(null);
      expect(response.headers.get('x-content-type-options')).to.equal('nosniff');
      expect(response.headers.get('x-frame-options')).to.equal('SAMEORIGIN');
      expect(response.headers.get('strict-transport-security')).to.include('max-age=');
      expect(response.headers.get('referrer-policy')).to.equal('no-referrer');
      expect(response.headers.get('content-security-policy')).to.include("default-src 'none'");
    });

    it('sends no CORS headers unless origins are configured', async () => {
      const response = await fetch(`${h.url}/health`, { headers: { origin: 'https://evil.example' } });
      expect(response.headers.get('access-control-allow-origin')).to.equal(null);
    });

    it('allows exactly the configured CORS origins', async () => {
      const withCors = await start({ corsOrigins: ['https://app.example'] });
      try {
        const allowed = await fetch(`${withCors.url}/health`, { headers: { origin: 'https://app.example' } });
        expect(allowed.headers.get('access-control-allow-origin')).to.equal('https://app.example');
        const preflight = await fetch(`${withCors.url}/demo/a1`, {
          method: 'OPTIONS',
          headers: { origin: 'https://app.example', 'access-control-request-method': 'POST' },
        });
        expect(preflight.status).to.equal(204);
        expect(preflight.headers.get('access-control-allow-headers')).to.include('Authorization');
        const other = await fetch(`${withCors.url}/health`, { headers: { origin: 'https://evil.example' } });
        expect(other.headers.get('access-control-allow-origin')).to.equal(null);
      } finally {
        await withCors.running.close(1000);
      }
    });
  });

  describe('operational endpoints', () => {
    it('answers /health without checking dependencies', async () => {
      databaseUp = false;
      try {
        const response = await fetch(`${h.url}/health`);
        expect(response.status).to.equal(200);
        expect(await response.json()).to.deep.equal({ status: 'ok' });
      } finally {
        databaseUp = true;
      }
    });

    it('answers /ready with 200 when every check passes', async () => {
      const response = await fetch(`${h.url}/ready`);
      expect(response.status).to.equal(200);
      expect(await response.json()).to.deep.equal({
        status: 'ready',
        checks: { always: { status: 'up' }, postgres: { status: 'up' } },
      });
    });

    it('answers /ready with 503 naming the failing check', async () => {
      databaseUp = false;
      try {
        const response = await fetch(`${h.url}/ready`);
        expect(response.status).to.equal(503);
        expect(await response.json()).to.deep.equal({
          status: 'not_ready',
          checks: { always: { status: 'up' }, postgres: { status: 'down', error: 'connection refused' } },
        });
      } finally {
        databaseUp = true;
      }
    });

    it('reports a check that hangs as down after its timeout', async () => {
      const api = new Api();
      const running = await listenQuietly(api, {
        readiness: [{ name: 'stuck', check: () => new Promise<void>(() => {}) }],
        readinessTimeoutMs: 100,
      });
      try {
        const started = Date.now();
        const response = await fetch(`${running.url}/ready`);
        expect(response.status).to.equal(503);
        expect(await response.json()).to.deep.equal({
          status: 'not_ready',
          checks: { stuck: { status: 'down', error: 'timed out after 100 ms' } },
        });
        expect(Date.now() - started).to.be.below(1000);
      } finally {
        await running.close(1000);
      }
    });

    it('exposes request metrics by route pattern and process metrics on /metrics', async () => {
      await postJson(`${h.url}/demo/metric-probe`, JSON.stringify({ title: 'ok' }));
      await fetch(`${h.url}/not-a-route-xyz`);
      const response = await fetch(`${h.url}/metrics`);
      expect(response.status).to.equal(200);
      expect(response.headers.get('content-type')).to.include('text/plain');
      const text = await response.text();
      expect(text).to.match(/http_requests_total\{method="POST",route="\/demo\/:id",status="201"\} \d+/);
      expect(text).to.include('http_request_duration_seconds_bucket');
      expect(text).to.include('process_cpu_user_seconds_total');
      expect(text).not.to.include('metric-probe');
      expect(text).not.to.include('not-a-route-xyz');
    });
  });

  describe('OpenAPI document', () => {
    it('is OpenAPI 3.1 and documents the demo route with the schema the validator uses', async () => {
      const response = await fetch(`${h.url}/openapi.json`);
      expect(response.status).to.equal(200);
      const doc = (await response.json()) as Record<string, any>;
      expect(doc.openapi).to.equal('3.1.0');
      expect(doc.info).to.deep.equal(info);
      const post = doc.paths['/demo/{id}'].post;
      expect(post.requestBody.required).to.equal(true);
      expect(post.requestBody.content['application/json'].schema).to.deep.equal(demoBody);
      expect(post.requestBody.content['application/json'].example).to.deep.equal({
        title: 'write the report',
        priority: 3,
      });
      expect(post.parameters).to.deep.include({
        name: 'id',
        in: 'path',
        required: true,
        schema: { type: 'string', pattern: '^[a-z0-9-]+$' },
      });
      expect(post.parameters).to.deep.include({
        name: 'dry_run',
        in: 'query',
        required: false,
        schema: { type: 'boolean', default: false },
      });
      expect(post.responses['400'].content['application/problem+json'].schema).to.deep.equal({
        $ref: '#/components/schemas/Problem',
      });
      expect(doc.components.schemas.Problem.required).to.deep.equal(['type', 'title', 'status']);
      expect(Object.keys(doc.paths)).to.include.members(['/health', '/ready', '/metrics', '/openapi.json']);
    });

    it('hands the very schema object the validator compiled to the document', () => {
      const doc = h.api.openApiDocument(info);
      const content = (
        doc.paths['/demo/{id}']!.post!.requestBody as { content: Record<string, { schema: unknown }> }
      ).content;
      expect(content['application/json']!.schema).to.equal(demoBody);
    });

    it('marks bearer-protected operations with the bearerAuth scheme', async () => {
      const doc = (await (await fetch(`${h.url}/openapi.json`)).json()) as Record<string, any>;
      expect(doc.components.securitySchemes.bearerAuth).to.deep.equal({
        type: 'http',
        scheme: 'bearer',
        bearerFormat: 'JWT',
      });
      expect(doc.paths['/private'].get.security).to.deep.equal([{ bearerAuth: [] }]);
      expect(doc.paths['/private'].get.responses).to.have.property('401');
      expect(doc.paths['/health'].get).not.to.have.property('security');
    });
  });

  describe('Swagger UI', () => {
    it('redirects /swagger to /swagger/ so relative asset URLs resolve', async () => {
      const response = await fetch(`${h.url}/swagger`, { redirect: 'manual' });
      expect(response.status).to.equal(301);
      expect(new URL(response.headers.get('location')!, `${h.url}/swagger`).pathname).to.equal('/swagger/');
    });

    it('serves our UI, not the Petstore page bundled with swagger-ui-dist, at /swagger/index.html', async () => {
      const page = await fetch(`${h.url}/swagger/index.html`);
      expect(page.status).to.equal(200);
      const html = await page.text();
      expect(html).to.include('swagger-ui-init.js').and.to.include('<title>task-manager API</title>');
      const init = await (await fetch(`${h.url}/swagger/swagger-ui-init.js`)).text();
      expect(init).to.include('../openapi.json').and.not.to.include('petstore');
      expect(page.headers.get('content-security-policy')).to.include("script-src 'self'");
    });
  });

  describe('graceful close', () => {
    it('lets an in-flight request finish, then closes', async () => {
      const api = new Api();
      let release: () => void = () => {};
      const released = new Promise<void>((resolve) => (release = resolve));
      api.route(
        {
          method: 'get',
          path: '/slow',
          operationId: 'slow',
          summary: 'Slow',
          tags: [],
          responses: { 200: { description: 'OK' } },
        },
        async (_req, res) => {
          await released;
          res.json({ finished: true });
        },
      );
      const running = await listenQuietly(api);
      const inFlight = fetch(`${running.url}/slow`);
      await sleep(50);
      const closed = running.close(5000);
      const started = Date.now();
      setTimeout(release, 100);
      const response = await inFlight;
      expect(await response.json()).to.deep.equal({ finished: true });
      await closed;
      expect(Date.now() - started).to.be.below(2000);
      expect(running.server.listening).to.equal(false);
    });

    it('cuts requests still running after the grace period', async () => {
      const api = new Api();
      api.route(
        {
          method: 'get',
          path: '/hang',
          operationId: 'hang',
          summary: 'Hangs',
          tags: [],
          responses: { 200: { description: 'never' } },
        },
        () => new Promise<void>(() => {}),
      );
      const running = await listenQuietly(api);
      const inFlight = fetch(`${running.url}/hang`).then(
        () => 'answered',
        () => 'cut',
      );
      await sleep(50);
      const started = Date.now();
      await running.close(200);
      expect(Date.now() - started).to.be.within(150, 2000);
      expect(await inFlight).to.equal('cut');
    });
  });

  describe('route registration', () => {
    const op = {
      method: 'get' as const,
      path: '/x/:id',
      operationId: 'x',
      summary: 'X',
      tags: [],
      responses: { 200: { description: 'OK' } },
    };

    it('refuses a bearer route when there is no authenticate hook', () => {
      expect(() => new Api().route({ ...op, auth: 'bearer' }, () => {})).to.throw(/authenticate hook/);
    });

    it('refuses a body example that its own schema rejects', () => {
      const body = { type: 'object', properties: { n: { type: 'integer' } }, examples: [{ n: 'one' }] };
      expect(() => new Api().route({ ...op, method: 'post', body }, () => {})).to.throw(/example 0 fails/);
    });

    it('refuses params that do not match the path', () => {
      const params = { type: 'object', properties: { key: { type: 'string' } } };
      expect(() => new Api().route({ ...op, params }, () => {})).to.throw(/params schema declares \[key\]/);
    });

    it('refuses a schema ajv strict mode rejects, at registration', () => {
      const query = { type: 'object', properties: { limit: { type: 'integer', minimumm: 1 } } };
      expect(() => new Api().route({ ...op, query }, () => {})).to.throw(/invalid schema/);
    });

    it('resolves named schemas the same way in the validator and the document', async () => {
      const api = new Api();
      const email = api.addSchema('Email', { type: 'string', format: 'email' });
      api.route(
        {
          ...op,
          method: 'post',
          path: '/people',
          operationId: 'people',
          body: { type: 'object', required: ['email'], properties: { email } },
        },
        (req, res) => {
          res.json(req.body);
        },
      );
      const running = await listenQuietly(api);
      try {
        const bad = await postJson(`${running.url}/people`, JSON.stringify({ email: 'not-an-email' }));
        expect(bad.status).to.equal(400);
        expect((await problemOf(bad)).errors).to.deep.equal([
          { path: '/body/email', message: 'must match format "email"' },
        ]);
        const doc = (await (await fetch(`${running.url}/openapi.json`)).json()) as Record<string, any>;
        expect(doc.components.schemas.Email).to.deep.equal({ type: 'string', format: 'email' });
        expect(
          doc.paths['/people'].post.requestBody.content['application/json'].schema.properties.email,
        ).to.deep.equal({
          $ref: '#/components/schemas/Email',
        });
      } finally {
        await running.close(1000);
      }
    });
  });
});
