import http from 'node:http';
import zlib from 'node:zlib';
import fc from 'fast-check';

/**
 * Requests for the fuzz suite: arbitraries built from the OpenAPI document the service serves, mutations that
 * turn them into bad input, and a raw HTTP client that can send what fetch refuses to (TRACE, invalid UTF-8,
 * odd paths, chunked bodies).
 */

export type Schema = { [keyword: string]: unknown };

interface OpenApiParameter {
  name: string;
  in: 'path' | 'query' | 'header';
  required?: boolean;
  schema: Schema;
}

interface OpenApiOperation {
  operationId: string;
  parameters?: OpenApiParameter[];
  requestBody?: { content: Record<string, { schema: Schema }> };
  security?: unknown[];
}

export interface OpenApiDocument {
  paths: Record<string, Record<string, OpenApiOperation>>;
  components: { schemas: Record<string, Schema> };
}

export interface Operation {
  id: string;
  /** Upper case. */
  method: string;
  /** The OpenAPI template, `/tasks/{id}`. */
  path: string;
  auth: boolean;
  pathParams: Array<{ name: string; schema: Schema }>;
  query: Array<{ name: string; required: boolean; schema: Schema }>;
  headers: Array<{ name: string; schema: Schema }>;
  body: Schema | null;
}

export function operationsOf(doc: OpenApiDocument): Operation[] {
  const operations: Operation[] = [];
  for (const [path, byMethod] of Object.entries(doc.paths))
    for (const [method, op] of Object.entries(byMethod)) {
      const parameters = op.parameters ?? [];
      operations.push({
        id: op.operationId,
        method: method.toUpperCase(),
        path,
        auth: Array.isArray(op.security) && op.security.length > 0,
        pathParams: parameters.filter((p) => p.in === 'path').map(({ name, schema }) => ({ name, schema })),
        query: parameters
          .filter((p) => p.in === 'query')
          .map(({ name, schema, required }) => ({ name, schema, required: required === true })),
        headers: parameters.filter((p) => p.in === 'header').map(({ name, schema }) => ({ name, schema })),
        body: op.requestBody?.content['application/json']?.schema ?? null,
      });
    }
  return operations;
}

export function resolve(schema: Schema, doc: OpenApiDocument): Schema {
  let current = schema;
  for (let hops = 0; typeof current.$ref === 'string' && hops < 20; hops++)
    current = doc.components.schemas[current.$ref.replace('#/components/schemas/', '')] ?? {};
  return current;
}

const num = (value: unknown, fallback: number): number => (typeof value === 'number' ? value : fallback);

/** Valid values are kept short; the mutations make them huge. */
const MAX_GENERATED_LENGTH = 60;

/** RFC 3339 times, mostly ordinary, some at the edges the format allows (year 0, leap seconds, offsets). */
const dateTimeArbitrary: fc.Arbitrary<string> = fc.oneof(
  {
    weight: 8,
    arbitrary: fc
      .date({
        min: new Date('2000-01-01T00:00:00Z'),
        max: new Date('2100-01-01T00:00:00Z'),
        noInvalidDate: true,
      })
      .map((d) => d.toISOString()),
  },
  {
    weight: 1,
    arbitrary: fc
      .date({
        min: new Date('0000-01-01T00:00:00Z'),
        max: new Date('9999-12-31T23:59:59Z'),
        noInvalidDate: true,
      })
      .map((d) => d.toISOString()),
  },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      '2016-12-31T23:59:60Z',
      '1990-12-31T23:59:60+00:00',
      '0000-01-01T00:00:00Z',
      '9999-12-31T23:59:59.999999999Z',
      '2024-02-29T12:00:00-23:59',
      '2024-06-01t10:00:00z',
    ),
  },
);

function stringArbitrary(schema: Schema): fc.Arbitrary<string> {
  const minLength = num(schema.minLength, 0);
  const maxLength = num(schema.maxLength, Number.POSITIVE_INFINITY);
  switch (schema.format) {
    case 'uuid':
      return fc.uuid();
    case 'date-time':
      return dateTimeArbitrary;
    case 'uri':
      return fc.webUrl();
    case 'email':
      return fc.emailAddress();
  }
  if (typeof schema.pattern === 'string')
    return fc
      .stringMatching(new RegExp(schema.pattern))
      .filter((s) => [...s].length >= minLength && [...s].length <= maxLength);
  const constraints = {
    minLength,
    maxLength: Math.max(minLength, Math.min(maxLength, MAX_GENERATED_LENGTH)),
  };
  return fc.oneof(
    { weight: 4, arbitrary: fc.string(constraints) },
    { weight: 1, arbitrary: fc.string({ ...constraints, unit: 'grapheme' }) },
    { weight: 1, arbitrary: fc.string({ ...constraints, unit: 'binary' }) },
  );
}

function objectArbitrary(schema: Schema, doc: OpenApiDocument, depth: number): fc.Arbitrary<unknown> {
  const properties = (schema.properties ?? {}) as Record<string, Schema>;
  const names = Object.keys(properties);
  if (names.length === 0)
    return fc.dictionary(fc.string({ maxLength: 10 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 3 });
  const model: Record<string, fc.Arbitrary<unknown>> = {};
  for (const name of names) model[name] = arbitraryFor(properties[name]!, doc, depth + 1);
  const required = Array.isArray(schema.required) ? (schema.required as string[]) : [];
  const minProperties = num(schema.minProperties, 0);
  return fc
    .record(model, { requiredKeys: required.filter((name) => names.includes(name)) })
    .filter((value) => Object.keys(value).length >= minProperties);
}

/**
 * The subset of JSON Schema the service uses: $ref, const, enum, oneOf/anyOf, type lists, objects, strings
 * with lengths, patterns and formats, integers and numbers with bounds, arrays; `{}` is any JSON.
 */
export function arbitraryFor(schema: Schema, doc: OpenApiDocument, depth = 0): fc.Arbitrary<unknown> {
  const s = resolve(schema, doc);
  if ('const' in s) return fc.constant(s.const);
  if (Array.isArray(s.enum)) return fc.constantFrom(...(s.enum as unknown[]));
  const alternatives = (s.oneOf ?? s.anyOf) as Schema[] | undefined;
  if (Array.isArray(alternatives)) return fc.oneof(...alternatives.map((a) => arbitraryFor(a, doc, depth)));
  if (Array.isArray(s.type))
    return fc.oneof(...(s.type as string[]).map((type) => arbitraryFor({ ...s, type }, doc, depth)));
  switch (s.type) {
    case 'object':
      return objectArbitrary(s, doc, depth);
    case 'string':
      return stringArbitrary(s);
    case 'integer':
      return fc.integer({ min: num(s.minimum, -(2 ** 31)), max: num(s.maximum, 2 ** 31) });
    case 'number':
      return fc.double({
        min: num(s.minimum, -1e9),
        max: num(s.maximum, 1e9),
        noNaN: true,
        noDefaultInfinity: true,
      });
    case 'boolean':
      return fc.boolean();
    case 'null':
      return fc.constant(null);
    case 'array':
      return fc.array(
        depth > 4 ? fc.constant(null) : arbitraryFor((s.items ?? {}) as Schema, doc, depth + 1),
        {
          minLength: num(s.minItems, 0),
          maxLength: Math.max(num(s.minItems, 0), Math.min(num(s.maxItems, 4), 4)),
        },
      );
    default:
      return fc.jsonValue({ maxDepth: 3 });
  }
}

export const INJECTIONS = [
  "' OR '1'='1",
  "'; DROP TABLE events; --",
  '"; DROP TABLE tasks; --',
  '1; SELECT pg_sleep(10); --',
  "' UNION SELECT password_hash, email FROM users --",
  "admin'--",
  '<script>alert(1)</script>',
  '"><img src=x onerror=alert(1)>',
  'javascript:alert(document.cookie)',
  '${7*7}',
  '{{7*7}}',
  '#{7*7}',
  '$(reboot)',
  '`id`',
  '../../../../etc/passwd',
  '..\\..\\windows\\win.ini',
  '{"$gt": ""}',
  '__proto__',
  'constructor.prototype',
  '%s%s%s%n',
  '\r\nSet-Cookie: pwned=1',
];

export const UNICODE_EDGES = [
  '\u0000',
  'a\u0000b',
  '\ud800',
  'x\udc00y',
  'emoji cut \ud83d',
  '\u202eevil.exe\u202c',
  'مرحبا \u200f\u200e mixed',
  '\ufeffbom',
  '😀👍🏽👨‍👩‍👧‍👦',
  'e\u0301\u0301\u0301\u0301',
  'Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǫ̗̻̇̽̅',
  '\uffff\ufffe\ufdd0',
  '\u2028\u2029',
  '\t\r\n\u000b\u000c',
  '𝕳𝖊𝖑𝖑𝖔',
  'İı ß ǅ',
  '\u001b[31mred\u001b[0m',
];

/** Byte sequences that are not UTF-8: overlong encodings, encoded surrogates, beyond U+10FFFF, truncated, stray. */
export const INVALID_UTF8 = [
  [0xc0, 0xaf],
  [0xe0, 0x80, 0xaf],
  [0xf0, 0x80, 0x80, 0xaf],
  [0xc0, 0x80],
  [0xed, 0xa0, 0x80],
  [0xf4, 0x90, 0x80, 0x80],
  [0xff],
  [0xfe, 0xff],
  [0xc3],
  [0xe2, 0x82],
  [0x80, 0x80, 0x80],
];

const BAD_JSON = [
  '',
  '{',
  '}',
  '{"title": "x",}',
  "{'title': 'x'}",
  '{title: "x"}',
  '{"title": NaN}',
  '{"title": Infinity}',
  '{"title": "x"} // comment',
  '/* c */ {"title": "x"}',
  '{"title": "x"}{"title": "y"}',
  '{"title": "x"} trailing',
  '{"title": "\\x41"}',
  '{"title": "\\ud800"}',
  '{"title": "\u0001"}',
  '{"title": 1e999999}',
  '{"title": -}',
  '{"a":1,"a":2,"title":"dup"}',
  '[]',
  'null',
  'true',
  '"a string"',
  '12345',
  '{"__proto__": {"isAdmin": true}, "title": "x"}',
  '{"constructor": {"prototype": {"isAdmin": true}}}',
  '\ufeff{"title": "bom"}',
  '\u0000',
  '{"title": "unterminated',
];

const CONTENT_TYPES = [
  'text/plain',
  'application/x-www-form-urlencoded',
  'multipart/form-data; boundary=xyz',
  'application/xml',
  'text/html',
  'application/octet-stream',
  'application/json; charset=latin1',
  'application/json; charset=utf-16',
  'application/json; charset=utf-8',
  'APPLICATION/JSON',
  'application/merge-patch+json',
  'application/json, text/plain',
  'json',
  '*/*',
  ';;;',
  'application/json; boundary=',
];

/** Methods Node's HTTP parser knows; unknown ones are refused by Node itself (see the suite's known-input cases). */
export const ODD_METHODS = ['PUT', 'TRACE', 'PROPFIND', 'PROPPATCH', 'MKCOL', 'LOCK', 'SEARCH'];
const ALL_METHODS = [...ODD_METHODS, 'OPTIONS', 'HEAD', 'GET', 'POST', 'PATCH', 'DELETE'];

export const ODD_PATHS = [
  '/tasks/../../etc/passwd',
  '/tasks/%2e%2e/%2e%2e/etc/passwd',
  '/..%2f..%2fetc%2fpasswd',
  '/swagger/../../package.json',
  '/swagger/%2e%2e/%2e%2e/package.json',
  '/swagger/..%2f..%2fconfig.yml',
  '/.env',
  '/config.yml',
  '/node_modules/.package-lock.json',
  '/tasks/%00',
  '/tasks/%00/events',
  '/tasks/00000000-0000-4000-8000-000000000000%00',
  '/tasks/00000000-0000-4000-8000-000000000000%00/retry',
  '/register%00',
  '/tasks/%C0%AF',
  '/tasks/%FF%FE',
  '/tasks/%ED%A0%80',
  '/tasks//',
  '//tasks',
  '/tasks/./',
  '/TASKS',
  '/Tasks/00000000-0000-4000-8000-000000000000',
  '/tasks;jsessionid=1',
  '/tasks/%2F',
  '/tasks/*',
  '/tasks/:id',
  '/tasks/{id}',
  '/me/',
  '/health/..',
  '/audit/events/../../tasks',
  '/metrics%2F..',
  '/openapi.json/x',
  '*',
];

const QUERY_NAMES = [
  'limit',
  'cursor',
  'status',
  'type',
  'queue',
  'owner_id',
  'min_position',
  'as_of',
  'after',
  'stream',
  'user_id',
  'from',
  'to',
  '__proto__',
  'constructor[prototype][admin]',
  'limit[]',
  'status[$ne]',
  'q',
];

const QUERY_VALUES = [
  '-1',
  '0',
  '1e3',
  '101',
  '1001',
  'NaN',
  'Infinity',
  '',
  '999999999999999999999999',
  '0x10',
  'true',
  'null',
  '[object Object]',
  'a,b',
  '2016-12-31T23:59:60Z',
  '0000-01-01T00:00:00Z',
  '00000000000000ff-0000000000000001',
  'ffffffffffffffff-ffffffffffffffff',
  'pending',
  '00000000-0000-4000-8000-000000000000',
  ...INJECTIONS,
  ...UNICODE_EDGES,
];

/** Percent-escapes that are not UTF-8 or not escapes at all, appended as they are. */
const RAW_QUERY_SUFFIXES = [
  'status=%zz',
  'type=%E0%A4%A',
  'limit=%',
  'cursor=%C0%AF',
  'a=%FF&a=%FE',
  '&&&=&==',
];

const HEADER_NAMES = [
  'x-request-id',
  'x-forwarded-for',
  'x-forwarded-host',
  'origin',
  'accept',
  'accept-encoding',
  'accept-language',
  'idempotency-key',
  'x-min-position',
  'cookie',
  'range',
  'if-none-match',
  'x-http-method-override',
];

export type Mutation =
  | { kind: 'none' }
  | { kind: 'wrong-type'; key: number; value: unknown }
  | { kind: 'missing'; key: number }
  | { kind: 'extra'; name: string; value: unknown }
  | { kind: 'huge-string'; key: number; unit: string; length: number }
  | { kind: 'deep'; key: number; depth: number; shape: 'array' | 'object' }
  | { kind: 'unicode'; key: number; value: string }
  | { kind: 'injection'; where: 'body' | 'query' | 'path' | 'header'; key: number; value: string }
  | { kind: 'invalid-utf8'; key: number; bytes: number[] }
  | { kind: 'bad-json'; text: string }
  | { kind: 'truncated-json'; cut: number }
  | { kind: 'content-type'; contentType: string | null }
  | { kind: 'encoding'; encoding: 'gzip' | 'deflate' | 'br' | 'zstd' | 'gzip-garbage' | 'gzip-bomb' }
  | { kind: 'oversized'; extra: number; json: boolean }
  | { kind: 'method'; method: string }
  | { kind: 'path'; path: string }
  | { kind: 'long-path'; length: number; segments: boolean }
  | { kind: 'query'; name: string; value: string }
  | { kind: 'raw-query'; suffix: string }
  | { kind: 'header'; name: string; value: string }
  | { kind: 'chunked' };

export type MutationKind = Mutation['kind'];

const wrongValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.integer(),
  fc.double(),
  fc.boolean(),
  fc.constant(null),
  fc.string({ maxLength: 10 }),
  fc.array(fc.jsonValue({ maxDepth: 1 }), { maxLength: 3 }),
  fc.dictionary(fc.string({ maxLength: 5 }), fc.jsonValue({ maxDepth: 1 }), { maxKeys: 3 }),
  fc.constantFrom(-1, 0, 1.5, 11, 101, 3_600_001, 2 ** 53, -(2 ** 63), 1e308, '5', 'high ', 'HIGH', ''),
);

/** Bodies are at most this many bytes (express.json's limit); set from the config before generating. */
export const limits = { bodyBytes: 100 * 1024 };

export function mutationArbitrary(
  options: { kinds?: ReadonlySet<MutationKind>; methods?: readonly string[] } = {},
): fc.Arbitrary<Mutation> {
  const { kinds, methods = ALL_METHODS } = options;
  const key = fc.nat({ max: 50 });
  const all: Array<{ kind: MutationKind; weight: number; arbitrary: fc.Arbitrary<Mutation> }> = [
    { kind: 'none', weight: 6, arbitrary: fc.constant({ kind: 'none' as const }) },
    {
      kind: 'wrong-type',
      weight: 4,
      arbitrary: fc.record({ kind: fc.constant('wrong-type' as const), key, value: wrongValue }),
    },
    { kind: 'missing', weight: 3, arbitrary: fc.record({ kind: fc.constant('missing' as const), key }) },
    {
      kind: 'extra',
      weight: 3,
      arbitrary: fc.record({
        kind: fc.constant('extra' as const),
        name: fc.oneof(
          fc.string({ maxLength: 12 }),
          fc.constantFrom('__proto__', 'constructor', 'role', 'owner_id', 'id', 'status', 'password_hash'),
        ),
        value: fc.jsonValue({ maxDepth: 2 }),
      }),
    },
    {
      kind: 'huge-string',
      weight: 2,
      arbitrary: fc.record({
        kind: fc.constant('huge-string' as const),
        key,
        unit: fc.oneof(
          fc.string({ minLength: 1, maxLength: 3 }),
          fc.constantFrom('é', '😀', '\u0000', '\ud800'),
        ),
        length: fc.integer({ min: 1_000, max: limits.bodyBytes + 8_000 }),
      }),
    },
    {
      kind: 'deep',
      weight: 2,
      arbitrary: fc.record({
        kind: fc.constant('deep' as const),
        key,
        depth: fc.constantFrom(10, 100, 1_000, 2_000, 5_000),
        shape: fc.constantFrom('array' as const, 'object' as const),
      }),
    },
    {
      kind: 'unicode',
      weight: 3,
      arbitrary: fc.record({
        kind: fc.constant('unicode' as const),
        key,
        value: fc.oneof(
          fc.constantFrom(...UNICODE_EDGES),
          fc.string({ unit: 'binary', minLength: 1, maxLength: 20 }),
          fc
            .tuple(fc.constantFrom(...UNICODE_EDGES), fc.constantFrom('title', 'a@b.cd', 'x'))
            .map(([u, s]) => s + u),
        ),
      }),
    },
    {
      kind: 'injection',
      weight: 3,
      arbitrary: fc.record({
        kind: fc.constant('injection' as const),
        where: fc.constantFrom('body' as const, 'query' as const, 'path' as const, 'header' as const),
        key,
        value: fc.constantFrom(...INJECTIONS),
      }),
    },
    {
      kind: 'invalid-utf8',
      weight: 2,
      arbitrary: fc.record({
        kind: fc.constant('invalid-utf8' as const),
        key,
        bytes: fc.constantFrom(...INVALID_UTF8),
      }),
    },
    {
      kind: 'bad-json',
      weight: 2,
      arbitrary: fc.record({ kind: fc.constant('bad-json' as const), text: fc.constantFrom(...BAD_JSON) }),
    },
    {
      kind: 'truncated-json',
      weight: 1,
      arbitrary: fc.record({ kind: fc.constant('truncated-json' as const), cut: fc.nat({ max: 200 }) }),
    },
    {
      kind: 'content-type',
      weight: 2,
      arbitrary: fc.record({
        kind: fc.constant('content-type' as const),
        contentType: fc.option(fc.constantFrom(...CONTENT_TYPES), { nil: null }),
      }),
    },
    {
      kind: 'encoding',
      weight: 1,
      arbitrary: fc.record({
        kind: fc.constant('encoding' as const),
        encoding: fc.constantFrom(
          'gzip' as const,
          'deflate' as const,
          'br' as const,
          'zstd' as const,
          'gzip-garbage' as const,
          'gzip-bomb' as const,
        ),
      }),
    },
    {
      kind: 'oversized',
      weight: 1,
      arbitrary: fc.record({
        kind: fc.constant('oversized' as const),
        extra: fc.integer({ min: 1, max: 60_000 }),
        json: fc.boolean(),
      }),
    },
    {
      kind: 'method',
      weight: 2,
      arbitrary: fc.record({ kind: fc.constant('method' as const), method: fc.constantFrom(...methods) }),
    },
    {
      kind: 'path',
      weight: 2,
      arbitrary: fc.record({ kind: fc.constant('path' as const), path: fc.constantFrom(...ODD_PATHS) }),
    },
    {
      kind: 'long-path',
      weight: 1,
      arbitrary: fc.record({
        kind: fc.constant('long-path' as const),
        // Under Node's 16 KB header limit: beyond it Node answers by itself (see the known-input cases).
        length: fc.integer({ min: 100, max: 8_000 }),
        segments: fc.boolean(),
      }),
    },
    {
      kind: 'query',
      weight: 3,
      arbitrary: fc.record({
        kind: fc.constant('query' as const),
        name: fc.oneof(fc.constantFrom(...QUERY_NAMES), fc.string({ maxLength: 8 })),
        value: fc.oneof(
          fc.constantFrom(...QUERY_VALUES),
          fc.string({ unit: 'binary', maxLength: 20 }),
          fc.integer({ min: 1, max: 6_000 }).map((n) => 'q'.repeat(n)),
        ),
      }),
    },
    {
      kind: 'raw-query',
      weight: 1,
      arbitrary: fc.record({
        kind: fc.constant('raw-query' as const),
        suffix: fc.constantFrom(...RAW_QUERY_SUFFIXES),
      }),
    },
    {
      kind: 'header',
      weight: 2,
      arbitrary: fc.record({
        kind: fc.constant('header' as const),
        name: fc.constantFrom(...HEADER_NAMES),
        value: fc.oneof(
          fc.constantFrom(...QUERY_VALUES),
          fc.integer({ min: 1, max: 7_000 }).map((n) => 'h'.repeat(n)),
        ),
      }),
    },
    { kind: 'chunked', weight: 1, arbitrary: fc.constant({ kind: 'chunked' as const }) },
  ];
  const chosen = kinds ? all.filter((entry) => kinds.has(entry.kind)) : all;
  return fc.oneof(...chosen.map(({ weight, arbitrary }) => ({ weight, arbitrary })));
}

export interface Parts {
  op: Operation;
  /** The Authorization header, or undefined for none. */
  authorization: string | undefined;
  pathParams: Record<string, string>;
  query: Array<[string, string]>;
  headers: Record<string, string>;
  /** A JSON value, or undefined for no body. */
  body: unknown;
}

export interface WireRequest {
  /** `<operationId> <mutation kind>`, for statistics and reports. */
  label: string;
  op: string;
  mutation: MutationKind;
  method: string;
  path: string;
  headers: Record<string, string>;
  body?: Buffer;
  chunked?: boolean;
}

const DEEP_MARKER = '\u0001deep\u0001';
const BAD_BYTES_MARKER = '\u0001bytes\u0001';
const isPlainObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value);

/** Percent-encodes everything but RFC 3986 unreserved characters, byte by byte (lone surrogates become U+FFFD). */
export const encodeSegment = (value: string): string =>
  [...Buffer.from(value, 'utf8')]
    .map((byte) =>
      /[A-Za-z0-9\-._~]/.test(String.fromCharCode(byte))
        ? String.fromCharCode(byte)
        : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`,
    )
    .join('');

/** Node refuses to send header values with control characters or code points above U+00FF. */
const headerSafe = (value: string): string => value.replace(/[^\t\x20-\x7e\x80-\xff]/g, '?');

function propertyNames(op: Operation, doc: OpenApiDocument): string[] {
  if (!op.body) return [];
  return Object.keys((resolve(op.body, doc).properties ?? {}) as object);
}

function requiredNames(op: Operation, doc: OpenApiDocument): string[] {
  if (!op.body) return [];
  const required = resolve(op.body, doc).required;
  return Array.isArray(required) ? (required as string[]) : [];
}

function fieldName(op: Operation, doc: OpenApiDocument, body: unknown, n: number): string | null {
  const names = [...new Set([...(isPlainObject(body) ? Object.keys(body) : []), ...propertyNames(op, doc)])];
  return names.length === 0 ? null : names[n % names.length]!;
}

/** Sets one field of an object body (or replaces the whole body when it has no fields). */
function withField(op: Operation, doc: OpenApiDocument, body: unknown, n: number, value: unknown): unknown {
  const name = isPlainObject(body) || body === undefined ? fieldName(op, doc, body, n) : null;
  if (name === null) return value;
  const copy: Record<string, unknown> = isPlainObject(body) ? { ...body } : {};
  Object.defineProperty(copy, name, { value, enumerable: true, configurable: true, writable: true });
  return copy;
}

const nested = (depth: number, shape: 'array' | 'object'): string =>
  shape === 'array'
    ? `${'['.repeat(depth)}${']'.repeat(depth)}`
    : `${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}`;

let bomb: Buffer | undefined;
const gzipBomb = (): Buffer => (bomb ??= zlib.gzipSync(Buffer.alloc(50 * 1024 * 1024, 0x20), { level: 9 }));

export function render(parts: Parts, mutation: Mutation, doc: OpenApiDocument): WireRequest {
  const { op } = parts;
  let method = op.method;
  let body = parts.body;
  let raw: Buffer | undefined;
  let contentType: string | null = 'application/json';
  let chunked = false;
  const pathParams = { ...parts.pathParams };
  const query = [...parts.query];
  const headers: Record<string, string> = { ...parts.headers };
  const extraHeaders: Record<string, string> = {};
  let path: string | undefined;
  let rawQuery: string | undefined;

  switch (mutation.kind) {
    case 'none':
      break;
    case 'wrong-type':
      body = withField(op, doc, body, mutation.key, mutation.value);
      break;
    case 'missing': {
      if (isPlainObject(body)) {
        const required = requiredNames(op, doc);
        const names = required.length > 0 ? required : Object.keys(body);
        const name = names[mutation.key % Math.max(1, names.length)];
        body = { ...body };
        if (name !== undefined) delete (body as Record<string, unknown>)[name];
      } else body = undefined;
      break;
    }
    case 'extra': {
      const copy: Record<string, unknown> = isPlainObject(body) ? { ...body } : {};
      Object.defineProperty(copy, mutation.name, {
        value: mutation.value,
        enumerable: true,
        configurable: true,
        writable: true,
      });
      body = copy;
      break;
    }
    case 'huge-string':
      body = withField(
        op,
        doc,
        body,
        mutation.key,
        mutation.unit.repeat(Math.ceil(mutation.length / mutation.unit.length)).slice(0, mutation.length),
      );
      break;
    case 'deep':
      body = withField(op, doc, body, mutation.key, DEEP_MARKER);
      break;
    case 'unicode':
      body = withField(op, doc, body, mutation.key, mutation.value);
      break;
    case 'injection':
      if (mutation.where === 'body') body = withField(op, doc, body, mutation.key, mutation.value);
      else if (mutation.where === 'path' && op.pathParams.length > 0)
        pathParams[op.pathParams[mutation.key % op.pathParams.length]!.name] = mutation.value;
      else if (mutation.where === 'header')
        extraHeaders[HEADER_NAMES[mutation.key % HEADER_NAMES.length]!] = mutation.value;
      else
        query.push([
          op.query.length > 0 ? op.query[mutation.key % op.query.length]!.name : 'q',
          mutation.value,
        ]);
      break;
    case 'invalid-utf8':
      body = withField(op, doc, body, mutation.key, BAD_BYTES_MARKER);
      break;
    case 'bad-json':
      raw = Buffer.from(mutation.text, 'utf8');
      break;
    case 'truncated-json': {
      const text = JSON.stringify(body ?? { title: 'truncated' });
      raw = Buffer.from(text.slice(0, Math.max(1, mutation.cut % text.length)), 'utf8');
      break;
    }
    case 'content-type':
      body ??= {};
      contentType = mutation.contentType;
      break;
    case 'encoding':
      body ??= {};
      break;
    case 'oversized': {
      const filler = 'x'.repeat(limits.bodyBytes + mutation.extra);
      raw = Buffer.from(
        mutation.json ? JSON.stringify({ ...(isPlainObject(body) ? body : {}), filler }) : filler,
      );
      break;
    }
    case 'method':
      method = mutation.method;
      break;
    case 'path':
      path = mutation.path;
      break;
    case 'long-path':
      path = mutation.segments
        ? `/tasks/${'a/'.repeat(Math.floor(mutation.length / 2))}`
        : `/tasks/${'a'.repeat(mutation.length)}`;
      break;
    case 'query':
      query.push([mutation.name, mutation.value]);
      break;
    case 'raw-query':
      rawQuery = mutation.suffix;
      break;
    case 'header':
      extraHeaders[mutation.name] = mutation.value;
      break;
    case 'chunked':
      body ??= {};
      chunked = true;
      break;
  }

  if (path === undefined) {
    path = op.path.replace(/\{([^}]+)\}/g, (_m, name: string) => encodeSegment(pathParams[name] ?? ''));
    const search = query.map(([k, v]) => `${encodeSegment(k)}=${encodeSegment(v)}`);
    if (rawQuery !== undefined) search.push(rawQuery);
    if (search.length > 0) path += `?${search.join('&')}`;
  }

  if (raw === undefined && body !== undefined) {
    let text = JSON.stringify(body) ?? 'null';
    if (mutation.kind === 'deep')
      text = text.replace(JSON.stringify(DEEP_MARKER), () => nested(mutation.depth, mutation.shape));
    raw = Buffer.from(text, 'utf8');
    if (mutation.kind === 'invalid-utf8') {
      const marker = Buffer.from(JSON.stringify(BAD_BYTES_MARKER).slice(1, -1), 'utf8');
      const at = raw.indexOf(marker);
      if (at >= 0)
        raw = Buffer.concat([
          raw.subarray(0, at),
          Buffer.from(mutation.bytes),
          raw.subarray(at + marker.length),
        ]);
    }
  }
  if (raw !== undefined && mutation.kind === 'encoding') {
    switch (mutation.encoding) {
      case 'gzip':
        raw = zlib.gzipSync(raw);
        break;
      case 'deflate':
        raw = zlib.deflateSync(raw);
        break;
      case 'br':
        raw = zlib.brotliCompressSync(raw);
        break;
      case 'zstd':
        break;
      case 'gzip-garbage':
        raw = Buffer.concat([Buffer.from([0x1f, 0x8b, 0x08, 0x00]), raw]);
        break;
      case 'gzip-bomb':
        // 50 MB of zeros in about 50 kB: the limit must apply to the inflated body.
        raw = gzipBomb();
        break;
    }
    headers['content-encoding'] = mutation.encoding.startsWith('gzip') ? 'gzip' : mutation.encoding;
  }

  if (raw !== undefined && contentType !== null) headers['content-type'] = contentType;
  if (parts.authorization !== undefined) headers.authorization = parts.authorization;
  for (const [name, value] of Object.entries(extraHeaders)) headers[name] = value;
  for (const [name, value] of Object.entries(headers)) headers[name] = headerSafe(value);

  return {
    label: `${op.id} ${mutation.kind}`,
    op: op.id,
    mutation: mutation.kind,
    method,
    path: path.replace(/[^\u0021-\u00ff]/g, (c) => encodeSegment(c)),
    headers,
    ...(raw === undefined ? {} : { body: raw }),
    ...(chunked ? { chunked } : {}),
  };
}

export interface WireResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

function sendOnce(base: URL, agent: http.Agent, request: WireRequest, timeoutMs: number) {
  return new Promise<WireResponse>((resolvePromise, reject) => {
    const headers: Record<string, string> = { ...request.headers };
    // Framing is explicit: Node would send a GET or DELETE body without any unless told.
    if (request.body !== undefined && request.chunked) headers['transfer-encoding'] = 'chunked';
    else if (request.body !== undefined) headers['content-length'] = String(request.body.length);
    const req = http.request(
      { host: base.hostname, port: base.port, method: request.method, path: request.path, headers, agent },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () =>
          resolvePromise({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }),
        );
        res.on('error', reject);
      },
    );
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', (error) => reject(Object.assign(error, { reusedSocket: req.reusedSocket })));
    if (request.body === undefined) req.end();
    else if (request.chunked) {
      const half = request.body.length >> 1;
      req.write(request.body.subarray(0, half));
      req.end(request.body.subarray(half));
    } else req.end(request.body);
  });
}

/** Sends a request as bytes on the wire; a keep-alive socket the server closed meanwhile is retried once. */
export async function send(base: URL, agent: http.Agent, request: WireRequest, timeoutMs = 30_000) {
  try {
    return await sendOnce(base, agent, request, timeoutMs);
  } catch (error) {
    const { code, reusedSocket } = error as { code?: string; reusedSocket?: boolean };
    if (reusedSocket && (code === 'ECONNRESET' || code === 'EPIPE'))
      return sendOnce(base, agent, request, timeoutMs);
    throw error;
  }
}

/** What is wrong with an answer, or null: never a 5xx, and every 4xx a problem document of its own status. */
export function violation(request: WireRequest, response: WireResponse): string | null {
  const { status } = response;
  if (status >= 500) return `answered ${status}: ${preview(response.body, 300)}`;
  if (status < 400) return null;
  const contentType = String(response.headers['content-type'] ?? '');
  if (!contentType.startsWith('application/problem+json'))
    return `answered ${status} with Content-Type "${contentType}", not application/problem+json: ${preview(response.body, 200)}`;
  if (request.method === 'HEAD') return null;
  let problem: { type?: unknown; title?: unknown; status?: unknown };
  try {
    problem = JSON.parse(response.body.toString('utf8'));
  } catch {
    return `answered ${status} with a problem document that is not JSON: ${preview(response.body, 200)}`;
  }
  if (typeof problem.type !== 'string' || problem.type === '')
    return `answered ${status}: the problem has no type`;
  if (typeof problem.title !== 'string' || problem.title === '')
    return `answered ${status}: the problem has no title`;
  if (problem.status !== status)
    return `answered ${status} but the problem says status ${String(problem.status)}`;
  return null;
}

export function preview(bytes: Buffer, max: number): string {
  const text = bytes.subarray(0, max).toString('utf8');
  const shown = Buffer.from(text, 'utf8').equals(bytes.subarray(0, max))
    ? JSON.stringify(text)
    : `(not UTF-8) base64:${bytes.subarray(0, max).toString('base64')}`;
  return bytes.length > max ? `${shown}... (${bytes.length} bytes)` : shown;
}

export function describeRequest(request: WireRequest): string {
  const path =
    request.path.length > 300
      ? `${request.path.slice(0, 300)}... (${request.path.length} chars)`
      : request.path;
  const headers = Object.fromEntries(
    Object.entries(request.headers).map(([name, value]) => [
      name,
      value.length > 200 ? `${value.slice(0, 200)}... (${value.length} chars)` : value,
    ]),
  );
  return [
    `${request.method} ${path}   [${request.label}]`,
    `    headers: ${JSON.stringify(headers)}`,
    `    body: ${request.body === undefined ? '(none)' : preview(request.body, 400)}${request.chunked ? ' (chunked)' : ''}`,
  ].join('\n');
}

export interface RequestSpace {
  doc: OpenApiDocument;
  ops: readonly Operation[];
  /** Authorization header values that authenticate, and ones that must not. */
  authorizations: { valid: readonly string[]; invalid: readonly string[] };
  /** Task ids that exist, used as path parameters besides random ones. */
  ids: readonly string[];
  mutations?: { kinds?: ReadonlySet<MutationKind>; methods?: readonly string[] };
}

/**
 * A request to one of the operations, built from its schemas and then mutated. Routes that need a token get a
 * valid one half the time; the others sometimes get one anyway.
 */
export function requestArbitrary(space: RequestSpace): fc.Arbitrary<WireRequest> {
  const { doc, authorizations, ids } = space;
  const valid = fc.constantFrom(...authorizations.valid);
  const invalid = fc.oneof(fc.constant(undefined), fc.constantFrom(...authorizations.invalid));
  const mutation = mutationArbitrary(space.mutations);
  // One arbitrary per operation, built once: building them (regular expressions especially) costs far more
  // than drawing from them.
  const perOperation = space.ops.map((op) => {
    const pathParams: Record<string, fc.Arbitrary<string>> = {};
    for (const param of op.pathParams) {
      const generated = arbitraryFor(param.schema, doc).map(String);
      pathParams[param.name] =
        (param.name === 'id' || param.name === 'task_id') && ids.length > 0
          ? fc.oneof(generated, fc.constantFrom(...ids))
          : generated;
    }
    const optional = (params: ReadonlyArray<{ name: string; schema: Schema }>) =>
      fc
        .tuple(
          ...params.map((param) =>
            fc.option(
              arbitraryFor(param.schema, doc).map((value): [string, string] => [param.name, String(value)]),
              { nil: undefined, freq: 2 },
            ),
          ),
        )
        .map((pairs) => pairs.filter((pair): pair is [string, string] => pair !== undefined));
    return fc
      .record({
        authorization: op.auth
          ? fc.oneof(valid, invalid)
          : fc.oneof(
              { weight: 5, arbitrary: fc.constant(undefined) },
              { weight: 1, arbitrary: fc.oneof(valid, invalid) },
            ),
        pathParams: fc.record(pathParams),
        query: optional(op.query),
        headers: optional(op.headers).map((pairs) => Object.fromEntries(pairs)),
        body: op.body ? arbitraryFor(op.body, doc) : fc.constant(undefined),
        mutation,
      })
      .map(({ mutation: chosen, ...parts }) => render({ op, ...parts }, chosen, doc));
  });
  return fc.oneof(...perOperation);
}
