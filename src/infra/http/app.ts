import http, { STATUS_CODES } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';
import express, {
  type Express,
  type NextFunction,
  type Request,
  type RequestHandler,
  type Response,
} from 'express';
import helmet, { contentSecurityPolicy } from 'helmet';
import swaggerUi from 'swagger-ui-express';
import { Counter, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Logger } from '../logger.js';
import type { Api, JSONSchema, OpenApiInfo } from './api.js';
import { JSON_MEDIA_TYPES, notFound, problemDetails, requireJsonBody } from './problemDetails.js';
import { refuseUnstorableInput } from './inputSanity.js';

declare module 'express-serve-static-core' {
  interface Request {
    /** The X-Request-Id echoed in the response and in problem documents. */
    id: string;
    /** A child of the app logger bound to this request's id. */
    log: Logger;
  }
}

export interface ReadinessCheck {
  name: string;
  check: () => Promise<void>;
}

export interface HttpAppDeps {
  logger: Logger;
  /** body-parser syntax: '100kb', '1mb'. */
  bodyLimit: string;
  /** express's `trust proxy` as a list (see config.yml `http.trustProxy`); empty: none. */
  trustProxy?: string[];
  api: Api;
  readiness: ReadinessCheck[];
  metrics: Registry;
  info: OpenApiInfo;
  corsOrigins?: string[];
  readinessTimeoutMs?: number;
}

const REQUEST_ID = /^[A-Za-z0-9._-]{1,128}$/;

/** A Registry with the default process metrics; pass it to createHttpApp and to every other metric. */
export function createMetrics(): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  return registry;
}

function httpMetrics(registry: Registry) {
  // Reused when a second app shares the registry (tests): prom-client refuses duplicate names.
  const requests =
    (registry.getSingleMetric('http_requests_total') as Counter<'method' | 'route' | 'status'> | undefined) ??
    new Counter({
      name: 'http_requests_total',
      help: 'HTTP requests by method, matched route pattern and status',
      labelNames: ['method', 'route', 'status'] as const,
      registers: [registry],
    });
  const duration =
    (registry.getSingleMetric('http_request_duration_seconds') as
      Histogram<'method' | 'route' | 'status'> | undefined) ??
    new Histogram({
      name: 'http_request_duration_seconds',
      help: 'HTTP request duration by method, matched route pattern and status',
      labelNames: ['method', 'route', 'status'] as const,
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    });
  return { requests, duration };
}

function requestContext(logger: Logger, registry: Registry): RequestHandler {
  const { requests, duration } = httpMetrics(registry);
  return (req: Request, res: Response, next: NextFunction) => {
    const started = process.hrtime.bigint();
    const incoming = req.get('x-request-id');
    req.id = incoming !== undefined && REQUEST_ID.test(incoming) ? incoming : randomUUID();
    req.log = logger.child({ request_id: req.id });
    res.set('X-Request-Id', req.id);
    // Captured now: req.url is rewritten inside mounted routers, and the query string may carry tokens.
    const method = req.method;
    const path = req.path;

    res.on('close', () => {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      const aborted = !res.writableFinished;
      // Only patterns set by the Api (or 'unmatched'), never the raw URL: label cardinality stays bounded.
      const route = typeof res.locals.route === 'string' ? res.locals.route : 'unmatched';
      const status = aborted ? 'aborted' : String(res.statusCode);
      requests.inc({ method, route, status });
      duration.observe({ method, route, status }, seconds);
      req.log.info(
        {
          method,
          path,
          status: res.statusCode,
          duration_ms: Math.round(seconds * 1e4) / 10,
          ...(aborted ? { aborted } : {}),
        },
        'request',
      );
    });
    next();
  };
}

/**
 * Swagger UI loads its own scripts and styles and sets inline styles, so /swagger gets a CSP that allows
 * exactly that; everything else is JSON and gets a CSP that allows nothing.
 */
function securityHeaders(): RequestHandler[] {
  const apiCsp = contentSecurityPolicy({
    useDefaults: false,
    directives: {
      defaultSrc: ["'none'"],
      frameAncestors: ["'none'"],
      baseUri: ["'none'"],
      formAction: ["'none'"],
    },
  });
  const swaggerCsp = contentSecurityPolicy({
    useDefaults: false,
    directives: {
      defaultSrc: ["'self'"],
      scriptSrc: ["'self'"],
      styleSrc: ["'self'", "'unsafe-inline'"],
      imgSrc: ["'self'", 'data:'],
      fontSrc: ["'self'", 'data:'],
      connectSrc: ["'self'"],
      objectSrc: ["'none'"],
      baseUri: ["'self'"],
      formAction: ["'self'"],
      frameAncestors: ["'none'"],
    },
  });
  return [
    helmet({ contentSecurityPolicy: false }),
    (req, res, next) =>
      (req.path === '/swagger' || req.path.startsWith('/swagger/') ? swaggerCsp : apiCsp)(req, res, next),
  ];
}

function cors(origins: string[]): RequestHandler {
  const allowed = new Set(origins);
  return (req: Request, res: Response, next: NextFunction) => {
    const origin = req.get('origin');
    if (origin === undefined || !allowed.has(origin)) return next();
    res.vary('Origin');
    res.set('Access-Control-Allow-Origin', origin);
    res.set('Access-Control-Expose-Headers', 'X-Request-Id, Retry-After, Location');
    if (req.method === 'OPTIONS' && req.get('access-control-request-method') !== undefined) {
      res.set('Access-Control-Allow-Methods', 'GET, POST, PUT, PATCH, DELETE');
      res.set(
        'Access-Control-Allow-Headers',
        'Authorization, Content-Type, Idempotency-Key, X-Request-Id, X-Min-Position',
      );
      res.set('Access-Control-Max-Age', '600');
      res.status(204).end();
      return;
    }
    next();
  };
}

function swaggerUiRouter(title: string): express.Router {
  const router = express.Router();
  // Relative, so the UI still finds the document when the service sits behind a path prefix.
  const options = {
    customSiteTitle: `${title} API`,
    swaggerUrl: '../openapi.json',
    swaggerOptions: { validatorUrl: null },
  };
  // setup() renders the page; serveFiles() serves this instance's init script and the static assets.
  const page = swaggerUi.setup(undefined, options);
  router.use((_req, res, next) => {
    res.locals.route = '/swagger';
    next();
  });
  // Before the static assets: swagger-ui-dist ships its own index.html, a Petstore demo.
  router.get(['/', '/index.html'], (req, res, next) => {
    const [pathname = '', query] = req.originalUrl.split('?', 2);
    // Assets are referenced relative to the page (./swagger-ui.css), which resolves wrongly from /swagger.
    if (!pathname.endsWith('/') && !pathname.endsWith('/index.html')) {
      res.redirect(301, `swagger/${query === undefined ? '' : `?${query}`}`);
      return;
    }
    page(req, res, next);
  });
  // Only the UI's own assets: anything else (swagger-ui-dist's package.json, say) falls through to our 404
  // problem document instead of the static server's plain-text one.
  router.use((req, _res, next) => (/^\/[\w.-]+\.(js|css|png|map)$/.test(req.path) ? next() : next('router')));
  router.use(swaggerUi.serveFiles(undefined, options));
  return router;
}

const short = (error: unknown): string => {
  const message = error instanceof Error ? error.message : String(error);
  return message.length > 200 ? `${message.slice(0, 197)}...` : message;
};

async function runCheck(
  check: ReadinessCheck,
  timeoutMs: number,
): Promise<{ status: 'up' } | { status: 'down'; error: string }> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    await Promise.race([Promise.resolve().then(check.check), timeout]);
    return { status: 'up' };
  } catch (error) {
    return { status: 'down', error: short(error) };
  } finally {
    clearTimeout(timer);
  }
}

const checkSchema: JSONSchema = {
  type: 'object',
  required: ['status'],
  properties: { status: { enum: ['up', 'down'] }, error: { type: 'string' } },
};

function registerOperationalRoutes(deps: HttpAppDeps): void {
  const { api, metrics, readiness, info } = deps;
  const timeoutMs = deps.readinessTimeoutMs ?? 2000;

  api.route(
    {
      method: 'get',
      path: '/health',
      operationId: 'health',
      summary: 'Liveness: the process is up and serving HTTP',
      tags: ['operations'],
      responses: {
        200: {
          description: 'Alive',
          schema: { type: 'object', required: ['status'], properties: { status: { const: 'ok' } } },
          example: { status: 'ok' },
        },
      },
    },
    (_req, res) => {
      res.set('Cache-Control', 'no-store').json({ status: 'ok' });
    },
  );

  api.route(
    {
      method: 'get',
      path: '/ready',
      operationId: 'ready',
      summary: 'Readiness: every dependency answers',
      tags: ['operations'],
      responses: {
        200: {
          description: 'Every dependency is up',
          schema: {
            type: 'object',
            required: ['status', 'checks'],
            properties: {
              status: { const: 'ready' },
              checks: { type: 'object', additionalProperties: checkSchema },
            },
          },
          example: { status: 'ready', checks: { postgres: { status: 'up' } } },
        },
        503: {
          description: 'At least one dependency is down',
          contentType: 'application/json',
          schema: {
            type: 'object',
            required: ['status', 'checks'],
            properties: {
              status: { const: 'not_ready' },
              checks: { type: 'object', additionalProperties: checkSchema },
            },
          },
          example: {
            status: 'not_ready',
            checks: { postgres: { status: 'down', error: 'timed out after 2000 ms' } },
          },
        },
      },
    },
    async (req, res) => {
      const results = await Promise.all(
        readiness.map(async (c) => [c.name, await runCheck(c, timeoutMs)] as const),
      );
      const checks = Object.fromEntries(results);
      const down = results.filter(([, r]) => r.status === 'down');
      if (down.length > 0) req.log.warn({ checks }, 'not ready');
      res
        .status(down.length === 0 ? 200 : 503)
        .set('Cache-Control', 'no-store')
        .json({ status: down.length === 0 ? 'ready' : 'not_ready', checks });
    },
  );

  api.route(
    {
      method: 'get',
      path: '/metrics',
      operationId: 'metrics',
      summary: 'Prometheus metrics in the text exposition format',
      tags: ['operations'],
      responses: { 200: { description: 'Metrics', contentType: 'text/plain', schema: { type: 'string' } } },
    },
    async (_req, res) => {
      const body = await metrics.metrics();
      res.set('Cache-Control', 'no-store').type(metrics.contentType).send(body);
    },
  );

  api.route(
    {
      method: 'get',
      path: '/openapi.json',
      operationId: 'openApiDocument',
      summary: 'This OpenAPI 3.1 document',
      tags: ['operations'],
      responses: { 200: { description: 'The OpenAPI document', schema: { type: 'object' } } },
    },
    (_req, res) => {
      res.json(api.openApiDocument(info));
    },
  );
}

/**
 * Registers /health, /ready, /metrics and /openapi.json on `deps.api` (so an Api can serve one app only)
 * and mounts its router behind the framework middleware.
 */
export function createHttpApp(deps: HttpAppDeps): Express {
  const app = express();
  app.disable('x-powered-by');
  // Off unless proxies are named: then req.ip is the address their X-Forwarded-For gives, and only theirs.
  app.set('trust proxy', deps.trustProxy && deps.trustProxy.length > 0 ? deps.trustProxy : false);

  app.use(requestContext(deps.logger, deps.metrics));
  app.use(securityHeaders());
  if (deps.corsOrigins !== undefined && deps.corsOrigins.length > 0) app.use(cors(deps.corsOrigins));
  app.use(requireJsonBody());
  // Before the app-wide parser, which then finds the body already parsed and leaves it.
  for (const { path, limit } of deps.api.largeBodyPaths())
    app.use(path, express.json({ limit, type: JSON_MEDIA_TYPES, strict: true }));
  app.use(express.json({ limit: deps.bodyLimit, type: JSON_MEDIA_TYPES, strict: true }));
  app.use(refuseUnstorableInput());

  app.use('/swagger', swaggerUiRouter(deps.info.title));
  registerOperationalRoutes(deps);
  app.use(deps.api.router);

  app.use(notFound());
  app.use(problemDetails({ logger: deps.logger }));
  return app;
}

export interface RunningServer {
  server: http.Server;
  url: string;
  /** Stops accepting connections, lets in-flight requests finish for up to graceMs, then cuts the rest. */
  close(graceMs: number): Promise<void>;
}

export function listen(app: Express, port: number, host: string): Promise<RunningServer> {
  return new Promise((resolve, reject) => {
    const server = http.createServer(app);
    // Requests Node's parser refuses (an overlong header, a malformed request line) never reach express: answer
    // them with a problem document too, rather than an empty response.
    server.on('clientError', (error: NodeJS.ErrnoException, socket) => {
      if (!socket.writable) return socket.destroy();
      const status = error.code === 'HPE_HEADER_OVERFLOW' ? 431 : 400;
      const body = JSON.stringify({
        type: 'about:blank',
        title: STATUS_CODES[status],
        status,
        detail: 'The request could not be parsed',
      });
      socket.end(
        `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/problem+json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
      );
    });
    // An `Expect` header we cannot meet: answered like any other client error, with a problem document.
    server.on('checkExpectation', (req: http.IncomingMessage, res: http.ServerResponse) => {
      const body = JSON.stringify({
        type: 'about:blank',
        title: STATUS_CODES[417],
        status: 417,
        detail: 'Only "Expect: 100-continue" is supported',
      });
      res
        .writeHead(417, {
          'Content-Type': 'application/problem+json',
          'Content-Length': Buffer.byteLength(body),
          Connection: 'close',
        })
        .end(body);
    });
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      const address = server.address() as AddressInfo;
      const reachable =
        address.address === '0.0.0.0' || address.address === '::'
          ? 'localhost'
          : address.family === 'IPv6'
            ? `[${address.address}]`
            : address.address;
      let closing: Promise<void> | undefined;
      resolve({
        server,
        url: `http://${reachable}:${address.port}`,
        close: (graceMs) => (closing ??= closeGracefully(server, graceMs)),
      });
    });
  });
}

function closeGracefully(server: http.Server, graceMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const deadline = setTimeout(() => server.closeAllConnections(), graceMs);
    // A keep-alive connection whose request finishes after close() turns idle, and close() does not come back
    // for it: sweep idle connections until the server is gone.
    const sweeper = setInterval(() => server.closeIdleConnections(), 50);
    server.close((error) => {
      clearTimeout(deadline);
      clearInterval(sweeper);
      if (error) reject(error);
      else resolve();
    });
    server.closeIdleConnections();
  });
}
