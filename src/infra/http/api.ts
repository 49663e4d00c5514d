/**
 * src/infra/http: the HTTP shell: the route registry (this file: ajv validation and OpenAPI from one schema), the
 * express app, authentication, RFC 9457 problems.
 */
import express, { type Request, type Response, type Router } from 'express';
import type { ParamsDictionary, Query } from 'express-serve-static-core';
import { Ajv2020, type ErrorObject, type ValidateFunction } from 'ajv/dist/2020.js';
import { MethodNotAllowedError, ValidationError, type FieldError } from '../../errors.js';
import { PROBLEM_CONTENT_TYPE } from './problemDetails.js';
import {
  createAjv as createValidator,
  toFieldErrors as fieldErrors,
  type JSONSchema,
} from '../jsonSchema.js';

/**
 * The one place a route is declared. The same schema objects drive request validation (ajv) and the
 * OpenAPI document, so Swagger cannot drift from what the server accepts.
 */

/** Re-exported because every route file declares its schemas next to its Api operations. */
export type { JSONSchema };

export type HttpMethod = 'get' | 'post' | 'patch' | 'put' | 'delete';

export interface ApiResponse {
  description: string;
  /** Defaults to the shared Problem schema for 4xx/5xx. */
  schema?: JSONSchema;
  example?: unknown;
  /** Defaults to `application/json`, or `application/problem+json` for 4xx/5xx. */
  contentType?: string;
  headers?: Record<string, { description: string; schema: JSONSchema }>;
}

export interface ApiOperation {
  method: HttpMethod;
  /** Express style: literal segments and `:name` parameters only, so it maps one to one onto OpenAPI. */
  path: string;
  operationId: string;
  summary: string;
  description?: string;
  tags: string[];
  /** Runs the Api's `authenticate` hook before validation, and documents the `bearerAuth` requirement. */
  auth?: 'bearer';
  deprecated?: boolean;
  /** A JSON request body; `examples[0]` pre-fills Swagger UI. Every example must pass the schema. */
  body?: JSONSchema;
  /** A larger body limit than the app's (body-parser syntax: '4mb'), for this path only. */
  bodyLimit?: string;
  /** An object schema; query-string values are coerced to the declared types. */
  query?: JSONSchema;
  /** An object schema whose properties are exactly the `:name` parameters of `path`; values are coerced. */
  params?: JSONSchema;
  /**
   * An object schema of request headers (lower-case names). Validated with coercion but not rewritten:
   * handlers still read `req.get(name)`.
   */
  headers?: JSONSchema;
  responses: Record<number, ApiResponse>;
}

// The defaults are Express's own, so a handler's `req` can be passed on to helpers that take a plain Request.
export type ApiHandler<TBody = unknown, TQuery = Query, TParams = ParamsDictionary> = (
  req: Request<TParams, unknown, TBody, TQuery>,
  res: Response,
) => Promise<void> | void;

export interface ApiOptions {
  /**
   * Called before validation for operations with `auth: 'bearer'`; throws UnauthorizedError / ForbiddenError.
   * Registering such an operation without this hook throws, so a route cannot be documented as protected
   * and served unprotected.
   */
  authenticate?: (req: Request) => Promise<void> | void;
}

export interface OpenApiInfo {
  title: string;
  version: string;
  description?: string;
}

export interface OpenApiDocument {
  openapi: '3.1.0';
  info: OpenApiInfo;
  tags: Array<{ name: string }>;
  paths: Record<string, Partial<Record<HttpMethod, Record<string, unknown>>>>;
  components: {
    schemas: Record<string, JSONSchema>;
    securitySchemes: Record<string, Record<string, unknown>>;
  };
}

export const schemaRef = (name: string): JSONSchema => ({ $ref: `#/components/schemas/${name}` });

/** The path parameters of a route on one resource, `/<things>/{id}`, whose ids are UUIDs. */
export const uuidIdParams: JSONSchema = {
  type: 'object',
  required: ['id'],
  properties: { id: { type: 'string', format: 'uuid' } },
};

const problemSchema: JSONSchema = {
  type: 'object',
  description: 'RFC 9457 problem details',
  required: ['type', 'title', 'status'],
  properties: {
    type: { type: 'string', format: 'uri' },
    title: { type: 'string' },
    status: { type: 'integer' },
    detail: { type: 'string' },
    instance: { type: 'string', description: 'The request path' },
    request_id: {
      type: 'string',
      description: 'Echoed in the X-Request-Id header; quote it when reporting a problem',
    },
    errors: {
      type: 'array',
      description: 'Present on validation problems: one entry per invalid value',
      items: {
        type: 'object',
        required: ['path', 'message'],
        properties: {
          path: {
            type: 'string',
            description: 'JSON Pointer into the request, e.g. /body/title or /query/limit',
          },
          message: { type: 'string' },
        },
      },
    },
  },
  examples: [
    {
      type: 'https://task-manager.dev/problems/validation',
      title: 'Invalid request',
      status: 400,
      detail: '/body/title is required',
      instance: '/tasks',
      request_id: '3f0c8a0e-5b7e-4b8c-9d0a-1f2e3d4c5b6a',
      errors: [{ path: '/body/title', message: 'is required' }],
    },
  ],
};

const PARAM_PATTERN = /:([A-Za-z_][A-Za-z0-9_]*)/g;

type Source = 'body' | 'query' | 'params' | 'headers';

interface Validators {
  body?: ValidateFunction;
  query?: ValidateFunction;
  params?: ValidateFunction;
  headers?: ValidateFunction;
}

function createAjv(coerce: boolean): Ajv2020 {
  const ajv = createValidator({ coerce, useDefaults: true });
  // Route schemas are compiled inside a wrapper that carries `components`, so `#/components/schemas/X`
  // resolves in ajv exactly as it does in the OpenAPI document.
  ajv.addKeyword({ keyword: 'components' });
  return ajv;
}

const toFieldErrors = (source: Source, errors: ErrorObject[] | null | undefined): FieldError[] =>
  fieldErrors(`/${source}`, errors);

const pathParamNames = (path: string): string[] => [...path.matchAll(PARAM_PATTERN)].map((m) => m[1]!);

const toOpenApiPath = (path: string): string => path.replace(PARAM_PATTERN, '{$1}');

function objectProperties(
  op: ApiOperation,
  source: 'query' | 'params' | 'headers',
): Record<string, JSONSchema> {
  const schema = op[source];
  if (schema === undefined) return {};
  const properties = schema.properties;
  if (schema.type !== 'object' || typeof properties !== 'object' || properties === null)
    throw new Error(
      `${op.operationId}: ${source} must be an object schema with properties, to be listed as OpenAPI parameters`,
    );
  return properties as Record<string, JSONSchema>;
}

const requiredNames = (schema: JSONSchema | undefined): string[] =>
  Array.isArray(schema?.required) ? (schema.required as string[]) : [];

export class Api {
  private readonly bodyAjv = createAjv(false);
  private readonly paramAjv = createAjv(true);
  // Shared by reference with every compiled wrapper and with the OpenAPI document.
  private readonly schemas: Record<string, JSONSchema> = {};
  private readonly operations: ApiOperation[] = [];
  private readonly methodsByPath = new Map<string, Set<HttpMethod>>();
  private readonly routes = express.Router();
  private readonly methodFallback = express.Router();
  private readonly outer = express.Router();
  private readonly authenticate: ApiOptions['authenticate'];

  constructor(options: ApiOptions = {}) {
    this.authenticate = options.authenticate;
    this.addSchema('Problem', problemSchema);
    this.outer.use(this.routes);
    // After every route, so it only sees requests whose path is known but whose method is not.
    this.outer.use(this.methodFallback);
  }

  /**
   * Adds a named schema under `components.schemas`; returns `{ $ref: '#/components/schemas/<name>' }`.
   * Call it before registering the routes that reference it: routes are compiled when registered.
   */
  addSchema(name: string, schema: JSONSchema): JSONSchema {
    if (!/^[A-Za-z0-9._-]+$/.test(name))
      throw new Error(`schema name ${name} is not a valid OpenAPI component name`);
    if (this.schemas[name] !== undefined) throw new Error(`schema ${name} is already registered`);
    this.schemas[name] = schema;
    return schemaRef(name);
  }

  /** The paths whose operations allow a larger body than the app's, for the JSON parser in front of them. */
  largeBodyPaths(): Array<{ path: string; limit: string }> {
    return this.operations.flatMap((op) => (op.bodyLimit ? [{ path: op.path, limit: op.bodyLimit }] : []));
  }

  /**
   * A validator of a named component (`addSchema`) by the same rules as request bodies, for what a route checks
   * itself: the items of a batch, each answered on its own.
   */
  compileComponent(name: string): ValidateFunction {
    if (this.schemas[name] === undefined) throw new Error(`schema ${name} is not registered`);
    return this.compile(this.bodyAjv, schemaRef(name), `component ${name}`);
  }

  route<TBody = unknown, TQuery = Query, TParams = ParamsDictionary>(
    op: ApiOperation,
    handler: ApiHandler<TBody, TQuery, TParams>,
  ): void {
    this.check(op);
    const validators = this.compileAll(op);
    const authenticate = op.auth === 'bearer' ? this.authenticate : undefined;

    const run = async (req: Request, res: Response): Promise<void> => {
      // The matched pattern, not the raw URL, labels metrics so their cardinality stays bounded.
      res.locals.route = op.path;
      if (authenticate) await authenticate(req);

      const errors: FieldError[] = [];
      if (validators.params) {
        const params = { ...req.params };
        if (validators.params(params)) req.params = params;
        else errors.push(...toFieldErrors('params', validators.params.errors));
      }
      if (validators.query) {
        const query: Record<string, unknown> = { ...req.query };
        if (validators.query(query)) {
          // Express 5 re-parses `req.query` on every read (a getter), so the coerced copy shadows it.
          Object.defineProperty(req, 'query', {
            value: query,
            configurable: true,
            enumerable: true,
            writable: true,
          });
        } else errors.push(...toFieldErrors('query', validators.query.errors));
      }
      if (validators.headers) {
        const headers: Record<string, unknown> = {};
        for (const name of Object.keys(objectProperties(op, 'headers'))) {
          const value = req.get(name);
          if (value !== undefined) headers[name.toLowerCase()] = value;
        }
        if (!validators.headers(headers)) errors.push(...toFieldErrors('headers', validators.headers.errors));
      }
      if (validators.body) {
        if (req.body === undefined) errors.push({ path: '/body', message: 'is required: send a JSON body' });
        else if (!validators.body(req.body)) errors.push(...toFieldErrors('body', validators.body.errors));
      }
      if (errors.length > 0) throw new ValidationError(errors);

      await handler(req as unknown as Request<TParams, unknown, TBody, TQuery>, res);
    };
    this.routes[op.method](op.path, run);

    let methods = this.methodsByPath.get(op.path);
    if (!methods) {
      methods = new Set();
      this.methodsByPath.set(op.path, methods);
      const known = methods;
      this.methodFallback.all(op.path, (_req: Request, res: Response) => {
        res.locals.route = op.path;
        const allowed = [...known].map((m) => m.toUpperCase());
        if (known.has('get')) allowed.push('HEAD');
        throw new MethodNotAllowedError(allowed.sort());
      });
    }
    methods.add(op.method);
    this.operations.push(op);
  }

  /** Mount once, after framework routes and before the 404 and problem-details handlers. */
  get router(): Router {
    return this.outer;
  }

  get registeredOperations(): readonly ApiOperation[] {
    return this.operations;
  }

  openApiDocument(info: OpenApiInfo): OpenApiDocument {
    const paths: OpenApiDocument['paths'] = {};
    const tags: string[] = [];
    for (const op of this.operations) {
      const entry = (paths[toOpenApiPath(op.path)] ??= {});
      entry[op.method] = this.operationObject(op);
      for (const tag of op.tags) if (!tags.includes(tag)) tags.push(tag);
    }
    return {
      openapi: '3.1.0',
      info,
      tags: tags.map((name) => ({ name })),
      paths,
      components: {
        schemas: this.schemas,
        securitySchemes: { bearerAuth: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' } },
      },
    };
  }

  private check(op: ApiOperation): void {
    if (!op.path.startsWith('/') || /[*?(){}]/.test(op.path))
      throw new Error(
        `${op.operationId}: path ${op.path} must be literal segments and :name parameters only`,
      );
    if (this.operations.some((o) => o.operationId === op.operationId))
      throw new Error(`operationId ${op.operationId} is already registered`);
    if (this.operations.some((o) => o.method === op.method && o.path === op.path))
      throw new Error(`${op.method.toUpperCase()} ${op.path} is already registered`);
    if (op.auth === 'bearer' && !this.authenticate)
      throw new Error(
        `${op.operationId} requires bearer auth but the Api was built without an authenticate hook`,
      );

    const inPath = pathParamNames(op.path).sort();
    if (op.params !== undefined) {
      const declared = Object.keys(objectProperties(op, 'params')).sort();
      if (declared.join() !== inPath.join())
        throw new Error(
          `${op.operationId}: params schema declares [${declared}] but the path has [${inPath}]`,
        );
    }
    objectProperties(op, 'query');
    for (const name of Object.keys(objectProperties(op, 'headers')))
      if (name !== name.toLowerCase())
        throw new Error(`${op.operationId}: header ${name} must be declared in lower case`);
  }

  private compile(ajv: Ajv2020, schema: JSONSchema, what: string): ValidateFunction {
    try {
      return ajv.compile({ ...schema, components: { schemas: this.schemas } });
    } catch (error) {
      throw new Error(`${what}: invalid schema: ${(error as Error).message}`, { cause: error });
    }
  }

  private compileAll(op: ApiOperation): Validators {
    const validators: Validators = {};
    if (op.body) validators.body = this.compile(this.bodyAjv, op.body, `${op.operationId} body`);
    if (op.query) validators.query = this.compile(this.paramAjv, op.query, `${op.operationId} query`);
    if (op.params) validators.params = this.compile(this.paramAjv, op.params, `${op.operationId} params`);
    if (op.headers) validators.headers = this.compile(this.paramAjv, op.headers, `${op.operationId} headers`);

    // A documented example the server would reject is worse than none: fail at start-up instead.
    const bodyExamples = Array.isArray(op.body?.examples) ? (op.body.examples as unknown[]) : [];
    for (const [index, example] of bodyExamples.entries()) {
      if (!validators.body!(structuredClone(example)))
        throw new Error(
          `${op.operationId}: body example ${index} fails its schema: ${this.bodyAjv.errorsText(validators.body!.errors)}`,
        );
    }
    for (const [status, response] of Object.entries(op.responses)) {
      if (response.schema === undefined || response.example === undefined) continue;
      const validate = this.compile(this.bodyAjv, response.schema, `${op.operationId} response ${status}`);
      if (!validate(structuredClone(response.example)))
        throw new Error(
          `${op.operationId}: response ${status} example fails its schema: ${this.bodyAjv.errorsText(validate.errors)}`,
        );
    }
    return validators;
  }

  private operationObject(op: ApiOperation): Record<string, unknown> {
    const parameters: Array<Record<string, unknown>> = [];
    const pathSchemas = op.params ? objectProperties(op, 'params') : {};
    for (const name of pathParamNames(op.path)) {
      const schema = pathSchemas[name] ?? { type: 'string' };
      parameters.push({ name, in: 'path', required: true, ...describe(schema), schema });
    }
    const querySchemas = objectProperties(op, 'query');
    for (const [name, schema] of Object.entries(querySchemas))
      parameters.push({
        name,
        in: 'query',
        required: requiredNames(op.query).includes(name),
        ...describe(schema),
        schema,
      });
    for (const [name, schema] of Object.entries(objectProperties(op, 'headers')))
      parameters.push({
        name,
        in: 'header',
        required: requiredNames(op.headers).includes(name),
        ...describe(schema),
        schema,
      });

    const responses: Record<string, unknown> = {};
    const documented: Record<number, ApiResponse> = { ...op.responses };
    if ((op.body || op.query || op.params || op.headers) && documented[400] === undefined)
      documented[400] = { description: 'The request does not match the schema' };
    if (op.auth === 'bearer' && documented[401] === undefined)
      documented[401] = { description: 'Missing, invalid or expired access token' };
    for (const [status, response] of Object.entries(documented))
      responses[status] = responseObject(Number(status), response);

    const operation: Record<string, unknown> = {
      operationId: op.operationId,
      summary: op.summary,
      tags: op.tags,
    };
    if (op.description !== undefined) operation.description = op.description;
    if (op.deprecated) operation.deprecated = true;
    if (parameters.length > 0) operation.parameters = parameters;
    if (op.body) {
      const media: Record<string, unknown> = { schema: op.body };
      if (Array.isArray(op.body.examples) && op.body.examples.length > 0) media.example = op.body.examples[0];
      operation.requestBody = { required: true, content: { 'application/json': media } };
    }
    operation.responses = responses;
    if (op.auth === 'bearer') operation.security = [{ bearerAuth: [] }];
    return operation;
  }
}

const describe = (schema: JSONSchema): { description?: string } =>
  typeof schema.description === 'string' ? { description: schema.description } : {};

function responseObject(status: number, response: ApiResponse): Record<string, unknown> {
  const isProblem = status >= 400;
  const schema = response.schema ?? (isProblem ? schemaRef('Problem') : undefined);
  const contentType = response.contentType ?? (isProblem ? PROBLEM_CONTENT_TYPE : 'application/json');
  const result: Record<string, unknown> = { description: response.description };
  if (schema !== undefined || response.example !== undefined) {
    const media: Record<string, unknown> = {};
    if (schema !== undefined) media.schema = schema;
    if (response.example !== undefined) media.example = response.example;
    result.content = { [contentType]: media };
  }
  const headers: Record<string, unknown> = { ...response.headers };
  if ((status === 429 || status === 503) && headers['Retry-After'] === undefined)
    headers['Retry-After'] = {
      description: 'Seconds to wait before retrying',
      schema: { type: 'integer', minimum: 0 },
    };
  if (Object.keys(headers).length > 0) result.headers = headers;
  return result;
}
