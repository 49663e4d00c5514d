import type { Config } from '../../config.js';
import { echoHandler } from './echo.js';
import { failHandler } from './fail.js';
import { HandlerRegistry } from './handler.js';
import { createHttpHandler } from './http.js';
import { sleepHandler } from './sleep.js';

export { HandlerRegistry, UnrecoverableError, isAbortError, isUnrecoverableError } from './handler.js';
export type { TaskHandler, TaskHandlerContext } from './handler.js';

/**
 * Every task type a worker can run. A new handler is one file in this folder and one line in this list;
 * its payload schema is then validated on submission and shown in the OpenAPI document.
 */
export function createHandlerRegistry(settings: Config['handlers']): HandlerRegistry {
  return new HandlerRegistry([echoHandler, sleepHandler, failHandler, createHttpHandler(settings.http)]);
}
