import type { JsonValue } from '../../infra/eventStore/eventStore.js';
import { throwIfAborted, type TaskHandler } from './handler.js';

export const echoHandler: TaskHandler<JsonValue | undefined> = {
  type: 'echo',
  description: 'Returns its payload unchanged (null when there is none). For smoke tests.',
  payloadSchema: { description: 'Any JSON value' },
  async run(payload, { signal }) {
    throwIfAborted(signal);
    return payload ?? null;
  },
};
