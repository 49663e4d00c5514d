import { Ajv2020, type ErrorObject } from 'ajv/dist/2020.js';
import formatsPlugin from 'ajv-formats';
import type { FieldError } from '../errors.js';

/** JSON Schema 2020-12, the dialect of OpenAPI 3.1. Loose on purpose: schemas are written as literals. */
export type JSONSchema = { [keyword: string]: unknown };

/**
 * The one ajv set-up for request bodies, query strings, path parameters, task payloads: every 400 in the API
 * is decided by the same rules and worded the same way, whichever layer compiled the schema.
 */
export function createAjv(options: { coerce?: boolean; useDefaults?: boolean } = {}): Ajv2020 {
  const ajv = new Ajv2020({
    allErrors: true,
    strict: true,
    allowUnionTypes: true,
    useDefaults: options.useDefaults ?? false,
    // Query strings and path segments are always strings; a JSON body already has its types.
    coerceTypes: options.coerce ? 'array' : false,
  });
  // ajv-formats is CommonJS with a `default` property; under NodeNext the default import is module.exports.
  (formatsPlugin as unknown as (ajv: Ajv2020) => void)(ajv);
  return ajv;
}

const escapePointer = (segment: string): string => segment.replace(/~/g, '~0').replace(/\//g, '~1');

/**
 * ajv's errors as JSON Pointers under `pathPrefix` (`/body` gives `/body/title`; `''` gives paths relative to
 * the validated value) with plain messages.
 */
export function toFieldErrors(pathPrefix: string, errors: ErrorObject[] | null | undefined): FieldError[] {
  // `if` and `propertyNames` only say that something inside failed; that inner error, reported too, says
  // where and why.
  return (errors ?? [])
    .filter((error) => error.keyword !== 'if' && error.keyword !== 'propertyNames')
    .map((error) => {
      const path = `${pathPrefix}${error.instancePath}`;
      const params = error.params as Record<string, unknown>;
      if (error.propertyName !== undefined)
        return {
          path: `${path}/${escapePointer(error.propertyName)}`,
          message: `is not an allowed name: ${error.message ?? 'is invalid'}`,
        };
      switch (error.keyword) {
        case 'required':
          return { path: `${path}/${escapePointer(String(params.missingProperty))}`, message: 'is required' };
        case 'additionalProperties':
          return {
            path: `${path}/${escapePointer(String(params.additionalProperty))}`,
            message: 'is not an allowed field',
          };
        case 'unevaluatedProperties':
          return {
            path: `${path}/${escapePointer(String(params.unevaluatedProperty))}`,
            message: 'is not an allowed field',
          };
        case 'false schema':
          return { path, message: 'is not allowed here' };
        default:
          return { path, message: error.message ?? 'is invalid' };
      }
    });
}
