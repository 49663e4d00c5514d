-- Cron schedules (issue 11). The schedules read model: one row per schedule, kept by the schedules projection
-- (evolveSchedule over the schedule-<id> stream); commands never write it and it can be rebuilt from the log.
-- The scheduler finds due schedules here and then decides from the schedule's own stream, so a row that lags the
-- log costs a stream read, never a second task for a tick.
CREATE TABLE schedules (
  id             uuid PRIMARY KEY,
  owner_id       uuid NOT NULL,
  name           text NOT NULL,
  cron           text NOT NULL,
  timezone       text NOT NULL,
  task           jsonb NOT NULL,
  overlap        text NOT NULL CHECK (overlap IN ('skip', 'allow')),
  catch_up       text NOT NULL CHECK (catch_up IN ('none', 'last', 'all')),
  status         text NOT NULL CHECK (status IN ('active', 'paused', 'deleted')),
  next_fire_at   timestamptz,
  last_tick      timestamptz,
  last_task_id   uuid,
  fired_count    integer NOT NULL,
  created_at     timestamptz NOT NULL,
  updated_at     timestamptz NOT NULL,
  revision       bigint NOT NULL,
  last_position  text NOT NULL
);

-- The scheduler's look for due schedules, every scheduler.pollIntervalMs.
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE status = 'active';
-- GET /schedules for a user (admins list every one through the primary key's order).
CREATE INDEX schedules_owner_listing ON schedules (owner_id, created_at DESC, id DESC) WHERE status <> 'deleted';

-- Each task a schedule queued names it and its tick; GET /tasks?schedule_id= lists them, newest first.
ALTER TABLE tasks ADD COLUMN schedule_id uuid, ADD COLUMN schedule_tick timestamptz;
CREATE INDEX tasks_by_schedule ON tasks (schedule_id, created_at DESC, id DESC) WHERE schedule_id IS NOT NULL;
