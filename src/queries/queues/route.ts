/**
 * src/queries/queues: GET /queues and GET /queues/{name} (admins and auditors): each queue's limits now in force
 * (an admin's settings, else config.yml's defaults for it) and its tasks counted by status.
 */
import type { Api } from '../../infra/http/api.js';
import type { Pool } from '../../infra/db/pool.js';
import { requireRole } from '../../infra/http/auth.js';
import { NotFoundError } from '../../errors.js';
import { effectiveLimits, type QueueLimits } from '../../domain/queues/queueSettings.js';
import {
  ensureQueueSchemas,
  queueNameParams,
  queueResource,
  queueSettingsResource,
  type QueueResource,
} from '../../domain/queues/representation.js';
import { selectQueueSettings } from '../../projections/queues/table.js';
import { countTasksByQueue } from '../../projections/tasks/table.js';

export interface QueueQueryDeps {
  pool: Pool;
  /** config.yml's `workers.queueLimits`. */
  queueLimits: Readonly<Record<string, QueueLimits>>;
}

export function registerQueueQueryRoutes(api: Api, deps: QueueQueryDeps): void {
  const { pool, queueLimits } = deps;
  const refs = ensureQueueSchemas(api);

  /** The queues that have settings, config defaults or tasks (or only `name`), by name. */
  const queues = async (name?: string): Promise<QueueResource[]> => {
    const [settings, counts] = await Promise.all([
      selectQueueSettings(pool, name),
      countTasksByQueue(pool, name),
    ]);
    const configured = new Map(settings.map((row) => [row.queue, row]));
    const names = new Set([...configured.keys(), ...counts.keys(), ...Object.keys(queueLimits)]);
    if (name !== undefined) for (const other of names) if (other !== name) names.delete(other);
    return [...names].sort().map((queue) => {
      const row = configured.get(queue) ?? null;
      return queueResource(
        queueSettingsResource(
          queue,
          effectiveLimits(row?.limits ?? null, queueLimits, queue),
          row && { at: row.configuredAt, by: row.configuredBy },
        ),
        counts.get(queue) ?? {},
      );
    });
  };

  api.route(
    {
      method: 'get',
      path: '/queues',
      operationId: 'listQueues',
      summary: 'Every queue: its limits and its tasks by status (admins, auditors)',
      description:
        'The queues that have tasks, settings (PUT /queues/{name}) or defaults in config.yml. Counts come from the ' +
        'tasks read model, so they may be a moment behind the log.',
      tags: ['admin'],
      auth: 'bearer',
      responses: {
        200: {
          description: 'The queues, by name',
          schema: {
            type: 'object',
            required: ['items'],
            properties: { items: { type: 'array', items: refs.queue } },
          },
        },
        403: { description: 'Needs the admin or auditor role' },
      },
    },
    async (req, res) => {
      requireRole(req, 'admin', 'auditor');
      res.set('Cache-Control', 'no-store').json({ items: await queues() });
    },
  );

  api.route<unknown, Record<string, unknown>, { name: string }>(
    {
      method: 'get',
      path: '/queues/:name',
      operationId: 'getQueue',
      summary: 'One queue: its limits and its tasks by status (admins, auditors)',
      tags: ['admin'],
      auth: 'bearer',
      params: queueNameParams,
      responses: {
        200: { description: 'The queue', schema: refs.queue },
        403: { description: 'Needs the admin or auditor role' },
        404: { description: 'No task, settings or config defaults name this queue' },
      },
    },
    async (req, res) => {
      requireRole(req, 'admin', 'auditor');
      const [queue] = await queues(req.params.name);
      if (!queue) throw new NotFoundError(`no queue ${req.params.name}`);
      res.set('Cache-Control', 'no-store').json(queue);
    },
  );
}
