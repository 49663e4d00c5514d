/**
 * src/commands/queues: an admin sets a queue's flow control (PUT /queues/{name}): QueueConfigured on the queue's
 * stream, which the claim reads through the inline queue_settings table. The decider is in src/domain/queues.
 */
import type { Api } from '../../infra/http/api.js';
import { requireRole } from '../../infra/http/auth.js';
import type { EventStore } from '../../infra/eventStore/eventStore.js';
import { handleCommand } from '../commandHandler.js';
import {
  configureQueue,
  effectiveLimits,
  queueSettings,
  queueStreamId,
} from '../../domain/queues/queueSettings.js';
import {
  ensureQueueSchemas,
  queueNameParams,
  limitsOfBody,
  queueSettingsBodySchema,
  queueSettingsResource,
  type QueueSettingsBody,
} from '../../domain/queues/representation.js';

export interface QueueCommandDeps {
  store: EventStore;
  clock: () => Date;
  newId: () => string;
}

export function registerQueueCommandRoutes(api: Api, deps: QueueCommandDeps): void {
  const { store, clock, newId } = deps;
  const refs = ensureQueueSchemas(api);
  const body = api.addSchema('QueueSettingsBody', queueSettingsBodySchema);
  api.route<QueueSettingsBody, Record<string, unknown>, { name: string }>(
    {
      method: 'put',
      path: '/queues/:name',
      operationId: 'configureQueue',
      summary: "Set a queue's limits (admin): global concurrency, rate, per-key concurrency, pause",
      description:
        'Replaces the whole settings: a field left out means no limit of that kind (and not paused). Enforced where ' +
        'workers claim, across every worker process, from the next claim on; tasks already running keep running. ' +
        'A queue with any limit serves its group keys round robin. Recorded as QueueConfigured on the stream ' +
        '`queue-<name>`, so every change is in the audited log; the same settings again append nothing.',
      tags: ['admin'],
      auth: 'bearer',
      params: queueNameParams,
      body,
      responses: {
        200: { description: 'The settings now in force', schema: refs.queueSettings },
        400: { description: 'Invalid settings or queue name' },
        403: { description: 'Needs the admin role' },
      },
    },
    async (req, res) => {
      const admin = requireRole(req, 'admin');
      const name = req.params.name;
      const result = await handleCommand(
        store,
        queueStreamId(name),
        queueSettings,
        (state) =>
          configureQueue(
            { queue: name, limits: limitsOfBody(req.body), by: admin.userId, now: clock() },
            state,
          ),
        { now: clock, newId, correlationId: req.id ?? newId(), causationId: null, userId: admin.userId },
      );
      if (result.position) res.set('X-Position', result.position);
      const { state } = result;
      res.json(
        queueSettingsResource(name, effectiveLimits(state.limits, {}, name), {
          at: state.configuredAt!,
          by: state.configuredBy!,
        }),
      );
    },
  );
}
