/**
 * src/workers/handlers: the code behind each task type of the catalogue (src/domain/tasks/taskTypes.ts), one file each.
 */
import type { Config } from '../../config.js';
import { TASK_TYPES } from '../../domain/tasks/taskTypes.js';
import { echoHandler } from './echo.js';
import { failHandler } from './fail.js';
import { gatherHandler } from './gather.js';
import { HandlerRegistry } from './handler.js';
import { createHttpHandler } from './http.js';
import { sleepHandler } from './sleep.js';

export { HandlerRegistry, UnrecoverableError, isAbortError, isUnrecoverableError } from './handler.js';
export type { TaskHandler, TaskHandlerContext } from './handler.js';

/**
 * A handler for every task type of the catalogue. A new type is an entry in src/domain/tasks/taskTypes.ts (which
 * the write side validates submissions against and lists in the OpenAPI document) and a handler here.
 */
export function createHandlerRegistry(settings: Config['handlers']): HandlerRegistry {
  const registry = new HandlerRegistry([
    echoHandler,
    sleepHandler,
    failHandler,
    createHttpHandler(settings.http),
    gatherHandler,
  ]);
  // Submissions are accepted by the catalogue, so a type without a handler would queue tasks no one runs.
  const offered = TASK_TYPES.map((taskType) => taskType.type).sort();
  if (offered.join() !== registry.types().join())
    throw new Error(
      `task handlers (${registry.types().join(', ')}) differ from task types (${offered.join(', ')})`,
    );
  return registry;
}
