import type { TaskTypeCatalogue } from '../../domain/tasks/taskTypes.js';
import type { FieldError } from '../../errors.js';

/**
 * A submission's type and payload checked against the catalogue, as the 400's errors: JSON Pointers into the
 * request (`/body/type`, `/body/payload/ms`; under `at`, `/body/tasks/3`, for an item of a batch), which is where
 * the client sent them. Empty when both fit.
 */
export function submittedPayloadErrors(
  taskTypes: TaskTypeCatalogue,
  type: string,
  payload: unknown,
  at = '/body',
): FieldError[] {
  if (!taskTypes.knows(type))
    return [
      { path: `${at}/type`, message: `is not a known task type (known: ${taskTypes.types().join(', ')})` },
    ];
  return taskTypes
    .validatePayload(type, payload)
    .map((error) => ({ ...error, path: `${at}/payload${error.path}` }));
}
