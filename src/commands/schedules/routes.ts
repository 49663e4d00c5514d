/**
 * src/commands/schedules: the schedule commands over HTTP: create, edit, delete, pause, resume and "run now". The
 * deciders are in src/domain/schedules; the scheduler role (src/workers/cronScheduler.ts) fires the ticks.
 */
import type { Request, Response } from 'express';
import { ValidationError, type FieldError } from '../../errors.js';
import { uuidIdParams, type Api, type JSONSchema } from '../../infra/http/api.js';
import type { EventStore } from '../../infra/eventStore/eventStore.js';
import { GENESIS_HASH } from '../../infra/eventStore/hashChain.js';
import { claimsOf } from '../../infra/http/auth.js';
import type { Config } from '../../config.js';
import { foldEvents } from '../../domain/decider.js';
import type { TaskTypeCatalogue } from '../../domain/tasks/taskTypes.js';
import { taskStreamId } from '../../domain/tasks/events.js';
import { task as taskDecider } from '../../domain/tasks/state.js';
import { submitTask } from '../../domain/tasks/submitTask.js';
import { ensureTaskSchemas, taskResource } from '../../domain/tasks/representation.js';
import { checkCron } from '../../domain/schedules/cron.js';
import {
  scheduleStreamId,
  type CatchUpPolicy,
  type OverlapPolicy,
  type ScheduleChanges,
  type ScheduleEvent,
} from '../../domain/schedules/events.js';
import { schedule as scheduleDecider, type Schedule } from '../../domain/schedules/state.js';
import {
  assertRunnable,
  createSchedule,
  deleteSchedule,
  pauseSchedule,
  resumeSchedule,
  runScheduleNow,
  updateSchedule,
  type ScheduleActor,
} from '../../domain/schedules/commands.js';
import { ensureScheduleSchemas, scheduleResource } from '../../domain/schedules/representation.js';
import { handleCommand, type CommandContext } from '../commandHandler.js';
import { taskBodyProperties, taskSpecOf, type TaskBody } from '../tasks/taskBody.js';

export interface ScheduleCommandDeps {
  store: EventStore;
  taskTypes: TaskTypeCatalogue;
  settings: Config['tasks'];
  clock: () => Date;
  newId: () => string;
}

interface CreateBody {
  name: string;
  cron: string;
  timezone?: string;
  task: Omit<TaskBody, 'run_at'>;
  overlap?: OverlapPolicy;
  catch_up?: CatchUpPolicy;
}

type EditBody = Partial<CreateBody>;

const problem = (description: string) => ({ description });
const positionHeader = {
  'X-Position': {
    description: 'Log position of this change: send it as X-Min-Position to read your own write.',
    schema: { type: 'string' },
  },
};

/** The problems of an expression and zone as the 400's field errors. */
function cronFieldErrors(cron: string, timezone: string, now: Date, cronSent: boolean): FieldError[] {
  const { problems } = checkCron(cron, timezone, now);
  if (!problems) return [];
  const errors: FieldError[] = [];
  if (problems.timezone) errors.push({ path: '/body/timezone', message: problems.timezone });
  // An edit of the zone alone that makes the kept expression unusable points at the zone it sent.
  if (problems.cron)
    errors.push({ path: cronSent ? '/body/cron' : '/body/timezone', message: problems.cron });
  return errors;
}

export function registerScheduleCommandRoutes(api: Api, deps: ScheduleCommandDeps): void {
  const { store, taskTypes, settings, clock, newId } = deps;
  const refs = ensureScheduleSchemas(api);
  const taskRef = ensureTaskSchemas(api).task;
  const rules = { taskTypes, settings };
  const { run_at: _runAt, ...taskProperties } = taskBodyProperties(rules);
  const scheduledTask = api.addSchema('ScheduledTask', {
    type: 'object',
    additionalProperties: false,
    required: ['title'],
    description:
      'The task each tick queues: a POST /tasks body without run_at (a fired task is due at once).',
    properties: taskProperties,
  });
  const settingsProperties: Record<string, JSONSchema> = {
    name: { type: 'string', minLength: 1, maxLength: 200 },
    cron: {
      type: 'string',
      minLength: 1,
      maxLength: 200,
      description:
        'Cron expression, 5 fields (minute hour day month weekday) or 6 (seconds first), as croner reads it',
    },
    timezone: {
      type: 'string',
      minLength: 1,
      maxLength: 100,
      description:
        'IANA time zone the expression is read in (default UTC); daylight saving as croner handles it',
    },
    task: scheduledTask,
    overlap: {
      enum: ['skip', 'allow'],
      description:
        '`skip` (default `allow`): a tick queues nothing while the previous task is pending or running',
    },
    catch_up: {
      enum: ['none', 'last', 'all'],
      description:
        'Ticks missed while no scheduler ran: `none` (default) skips them, `last` queues the newest, `all` each (capped)',
    },
  };
  const createBody = api.addSchema('CreateSchedule', {
    type: 'object',
    additionalProperties: false,
    required: ['name', 'cron', 'task'],
    properties: settingsProperties,
    examples: [
      {
        name: 'Nightly report',
        cron: '0 2 * * *',
        timezone: 'Europe/Berlin',
        task: { title: 'Build the nightly report', type: 'echo', payload: { report: 'nightly' } },
        overlap: 'skip',
        catch_up: 'last',
      },
    ],
  });
  const editBody = api.addSchema('EditSchedule', {
    type: 'object',
    additionalProperties: false,
    minProperties: 1,
    properties: settingsProperties,
    examples: [{ cron: '30 2 * * *' }],
  });

  const context = (req: Request): CommandContext => ({
    now: clock,
    newId,
    correlationId: req.id ?? newId(),
    causationId: null,
    userId: req.auth!.userId,
  });
  const actorOf = (req: Request): ScheduleActor => {
    const claims = claimsOf(req);
    return { actorId: claims.userId, isAdmin: claims.role === 'admin' };
  };
  const answer = (
    res: Response,
    status: number,
    state: Schedule,
    revision: number,
    position: string | null,
  ) => {
    if (position) res.set('X-Position', position);
    res.status(status).json(scheduleResource(state, revision));
  };
  const onSchedule = async (req: Request, res: Response, decide: (state: Schedule) => ScheduleEvent[]) => {
    const id = String(req.params.id).toLowerCase();
    const result = await handleCommand(store, scheduleStreamId(id), scheduleDecider, decide, context(req));
    answer(res, 200, result.state, result.revision!, result.position);
  };

  api.route<CreateBody>(
    {
      method: 'post',
      path: '/schedules',
      operationId: 'createSchedule',
      summary: 'Create a cron schedule that queues a task at every tick',
      description:
        'The first tick is the first after now. Every tick queues one task (whatever the number of schedulers), ' +
        'which shows `schedule_id` and `schedule_tick`. A bad expression or unknown time zone is 400, pointing at it.',
      tags: ['schedules'],
      auth: 'bearer',
      body: createBody,
      responses: {
        201: {
          description: 'Created',
          schema: refs.schedule,
          headers: {
            ...positionHeader,
            Location: { description: 'The schedule', schema: { type: 'string' } },
          },
        },
        400: problem('Invalid schedule: bad cron expression, unknown time zone, invalid task'),
        413: problem('Task payload larger than allowed'),
      },
    },
    async (req, res) => {
      const body = req.body;
      const now = clock();
      const timezone = body.timezone ?? 'UTC';
      const errors = cronFieldErrors(body.cron, timezone, now, true);
      if (errors.length > 0) throw new ValidationError(errors);
      const spec = taskSpecOf(body.task, rules, '/body/task');
      const scheduleId = newId();
      const ownerId = req.auth!.userId;
      const result = await handleCommand(
        store,
        scheduleStreamId(scheduleId),
        scheduleDecider,
        (state) =>
          createSchedule(
            {
              scheduleId,
              ownerId,
              now,
              settings: {
                name: body.name,
                cron: body.cron,
                timezone,
                task: spec,
                overlap: body.overlap ?? 'allow',
                catchUp: body.catch_up ?? 'none',
              },
            },
            state,
          ),
        context(req),
        { known: { state: scheduleDecider.initialState, revision: null, hash: GENESIS_HASH } },
      );
      res.set('Location', `/schedules/${scheduleId}`);
      answer(res, 201, result.state, result.revision!, result.position);
    },
  );

  api.route<EditBody>(
    {
      method: 'patch',
      path: '/schedules/:id',
      operationId: 'editSchedule',
      summary: 'Change a schedule: name, cron, time zone, task, overlap or catch-up',
      description:
        'Only what is sent changes; `task` is replaced whole. A new expression or time zone counts from now: no tick ' +
        'before the edit fires. Tasks already queued keep the task they were queued with.',
      tags: ['schedules'],
      auth: 'bearer',
      params: uuidIdParams,
      body: editBody,
      responses: {
        200: { description: 'Changed', schema: refs.schedule, headers: positionHeader },
        400: problem('Invalid change: bad cron expression, unknown time zone, invalid task'),
        404: problem('No such schedule (or not yours)'),
        413: problem('Task payload larger than allowed'),
      },
    },
    async (req, res) => {
      const body = req.body;
      const actor = actorOf(req);
      const task = body.task === undefined ? undefined : taskSpecOf(body.task, rules, '/body/task');
      await onSchedule(req, res, (state) => {
        // Not yours is 404 before any 400 that depends on the schedule.
        assertRunnable(actor, state);
        const now = clock();
        if (body.cron !== undefined || body.timezone !== undefined) {
          const errors = cronFieldErrors(
            body.cron ?? state.cron,
            body.timezone ?? state.timezone,
            now,
            body.cron !== undefined,
          );
          if (errors.length > 0) throw new ValidationError(errors);
        }
        const changes: ScheduleChanges = {
          name: body.name,
          cron: body.cron,
          timezone: body.timezone,
          task,
          overlap: body.overlap,
          catchUp: body.catch_up,
        };
        return updateSchedule({ ...actor, changes, now }, state);
      });
    },
  );

  api.route(
    {
      method: 'delete',
      path: '/schedules/:id',
      operationId: 'deleteSchedule',
      summary: 'Delete a schedule: no tick fires after it; its history and its tasks stay',
      tags: ['schedules'],
      auth: 'bearer',
      params: uuidIdParams,
      responses: {
        204: { description: 'Deleted', headers: positionHeader },
        404: problem('No such schedule (or not yours)'),
      },
    },
    async (req, res) => {
      const id = String(req.params.id).toLowerCase();
      const actor = actorOf(req);
      const result = await handleCommand(
        store,
        scheduleStreamId(id),
        scheduleDecider,
        (state) => deleteSchedule({ ...actor, now: clock() }, state),
        context(req),
      );
      if (result.position) res.set('X-Position', result.position);
      res.status(204).end();
    },
  );

  const toggle = (path: string, operationId: string, summary: string, pause: boolean) =>
    api.route(
      {
        method: 'post',
        path,
        operationId,
        summary,
        tags: ['schedules'],
        auth: 'bearer',
        params: uuidIdParams,
        responses: {
          200: { description: 'The schedule', schema: refs.schedule, headers: positionHeader },
          404: problem('No such schedule (or not yours)'),
        },
      },
      async (req, res) => {
        const actor = actorOf(req);
        await onSchedule(req, res, (state) =>
          pause
            ? pauseSchedule({ ...actor, now: clock() }, state)
            : resumeSchedule({ ...actor, now: clock() }, state),
        );
      },
    );
  toggle(
    '/schedules/:id/pause',
    'pauseSchedule',
    'Pause a schedule: no tick fires until it is resumed',
    true,
  );
  toggle(
    '/schedules/:id/resume',
    'resumeSchedule',
    'Resume a paused schedule: the next tick is the first after now (ticks of the pause are not caught up)',
    false,
  );

  api.route(
    {
      method: 'post',
      path: '/schedules/:id/run',
      operationId: 'runSchedule',
      summary: "Run now: queue the schedule's task at once, outside its ticks",
      description:
        'Works on a paused schedule too, and whatever `overlap` says (it is an explicit request). The task shows ' +
        '`schedule_id` and the time of the request as `schedule_tick`; the next tick stays as it was.',
      tags: ['schedules'],
      auth: 'bearer',
      params: uuidIdParams,
      responses: {
        202: {
          description: 'The queued task',
          schema: taskRef,
          headers: { ...positionHeader, Location: { description: 'The task', schema: { type: 'string' } } },
        },
        404: problem('No such schedule (or not yours)'),
      },
    },
    async (req, res) => {
      const id = String(req.params.id).toLowerCase();
      const actor = actorOf(req);
      const state = foldEvents(scheduleDecider, await store.readStream(scheduleStreamId(id)));
      assertRunnable(actor, state);
      const now = clock();
      const taskId = newId();
      // The task first, as the scheduler does: a run recorded in the schedule always has its task.
      const queued = await handleCommand(
        store,
        taskStreamId(taskId),
        taskDecider,
        (current) =>
          submitTask(
            {
              taskId,
              ownerId: state.ownerId!,
              spec: state.task!,
              idempotencyKey: null,
              now,
              origin: { scheduleId: id, tick: now.toISOString() },
            },
            current,
          ),
        context(req),
        { known: { state: taskDecider.initialState, revision: null, hash: GENESIS_HASH } },
      );
      const recorded = await handleCommand(
        store,
        scheduleStreamId(id),
        scheduleDecider,
        (current) => runScheduleNow({ ...actor, now, taskId }, current),
        context(req),
      );
      res.set('Location', `/tasks/${taskId}`);
      res.set('X-Position', recorded.position ?? queued.position!);
      res.status(202).json(taskResource(queued.state, queued.revision!));
    },
  );
}
