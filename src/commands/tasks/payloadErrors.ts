import type { TaskTypeCatalogue } from '../../domain/tasks/taskTypes.js';
import type { FieldError } from '../../errors.js';

/**
 * A submission's type and payload checked against the catalogue, as the 400's errors: JSON Pointers into the
 * request body (`/body/type`, `/body/payload/ms`), which is where the client sent them. Empty when both fit.
 */
export function submittedPayloadErrors(
  taskTypes: TaskTypeCatalogue,
  type: string,
  payload: unknown,
): FieldError[] {
  if (!taskTypes.knows(type))
    return [
      { path: '/body/type', message: `is not a known task type (known: ${taskTypes.types().join(', ')})` },
    ];
  return taskTypes
    .validatePayload(type, payload)
    .map((error) => ({ ...error, path: `/body/payload${error.path}` }));
}
