-- The schedule: an inline projection of the task streams, written by a trigger in the same transaction as the
-- events that change it, so a worker's claim never reads a row that lags the log (the tasks read model, fed by
-- the bus, may). Derived data like any read model: `projections rebuild --verify` compares it with a fold of the
-- log (src/workers/schedule.ts), and task_schedule_rebuild() recomputes it from the events.
-- Finished tasks leave it (done, archived); failed and canceled ones stay, marked, since a retry queues them again.
CREATE TABLE task_schedule (
  task_id      uuid PRIMARY KEY,
  queue        text NOT NULL,
  priority     integer NOT NULL,
  -- 'claimed': a worker took the row and is appending its TaskStarted (a lock marker, not a state of the task:
  -- the log still says pending; a claim whose worker died is put back once its lease_until passes).
  status       text NOT NULL CHECK (status IN ('pending', 'claimed', 'running', 'failed', 'canceled')),
  run_at       timestamptz NOT NULL,
  attempt      integer NOT NULL,
  worker_id    text,
  lease_until  timestamptz,
  created_at   timestamptz NOT NULL
);

-- The claim: due pending tasks, highest priority first, then the earliest due (FOR UPDATE SKIP LOCKED).
CREATE INDEX task_schedule_due ON task_schedule (priority DESC, run_at, created_at) WHERE status = 'pending';
-- The lease reaper, and claims whose worker vanished before its TaskStarted.
CREATE INDEX task_schedule_leases ON task_schedule (lease_until) WHERE status IN ('running', 'claimed');

-- Mirrors evolveTask (src/commands/tasks/state.ts) for the fields a claim needs; the verify step catches drift.
CREATE FUNCTION task_schedule_apply(p_stream_id text, p_type text, p_data jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  v_task_id uuid;
BEGIN
  -- Only streams named as the tasks decider names them (task-<uuid>); any other stream is none of its business.
  IF substr(p_stream_id, 6) !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
    RETURN;
  END IF;
  v_task_id := substr(p_stream_id, 6)::uuid;
  CASE p_type
    WHEN 'TaskQueued' THEN
      INSERT INTO task_schedule (task_id, queue, priority, status, run_at, attempt, created_at)
      VALUES (v_task_id, p_data #>> '{spec,queue}', (p_data #>> '{spec,priority}')::int, 'pending',
              coalesce(p_data #>> '{spec,runAt}', p_data ->> 'queuedAt')::timestamptz, 0,
              (p_data ->> 'queuedAt')::timestamptz)
      ON CONFLICT (task_id) DO NOTHING;
    WHEN 'TaskUpdated' THEN
      IF p_data #> '{changes,priority}' IS NOT NULL THEN
        UPDATE task_schedule SET priority = (p_data #>> '{changes,priority}')::int WHERE task_id = v_task_id;
      END IF;
    WHEN 'TaskStarted' THEN
      UPDATE task_schedule
         SET status = 'running', attempt = (p_data ->> 'attempt')::int, worker_id = p_data ->> 'workerId',
             lease_until = (p_data ->> 'leaseUntil')::timestamptz
       WHERE task_id = v_task_id;
    WHEN 'TaskAttemptFailed' THEN
      UPDATE task_schedule
         SET status = 'pending', run_at = (p_data ->> 'nextRunAt')::timestamptz, worker_id = NULL, lease_until = NULL
       WHERE task_id = v_task_id;
    WHEN 'TaskReleased' THEN
      UPDATE task_schedule
         SET status = 'pending', run_at = (p_data ->> 'releasedAt')::timestamptz,
             attempt = (p_data ->> 'attempt')::int - 1, worker_id = NULL, lease_until = NULL
       WHERE task_id = v_task_id;
    WHEN 'TaskRequeued' THEN
      UPDATE task_schedule
         SET status = 'pending', run_at = (p_data ->> 'requeuedAt')::timestamptz, worker_id = NULL, lease_until = NULL
       WHERE task_id = v_task_id;
    WHEN 'TaskFailed' THEN
      UPDATE task_schedule SET status = 'failed', worker_id = NULL, lease_until = NULL WHERE task_id = v_task_id;
    WHEN 'TaskCanceled' THEN
      UPDATE task_schedule SET status = 'canceled', worker_id = NULL, lease_until = NULL WHERE task_id = v_task_id;
    WHEN 'TaskSucceeded', 'TaskArchived' THEN
      DELETE FROM task_schedule WHERE task_id = v_task_id;
    ELSE
      NULL; -- TaskProgressed and anything newer: nothing a claim needs
  END CASE;
END $$;

CREATE FUNCTION task_schedule_on_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM task_schedule_apply(NEW.stream_id, NEW.type, NEW.data::jsonb);
  RETURN NULL;
END $$;

CREATE TRIGGER task_schedule_inline AFTER INSERT ON events
  FOR EACH ROW WHEN (NEW.stream_id LIKE 'task-%') EXECUTE FUNCTION task_schedule_on_event();

-- Recomputes the schedule from the log, each stream in revision order, in the caller's transaction.
CREATE FUNCTION task_schedule_rebuild() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  v_count bigint := 0;
  v_event record;
BEGIN
  DELETE FROM task_schedule;
  FOR v_event IN
    SELECT stream_id, type, data FROM events WHERE stream_id LIKE 'task-%' ORDER BY stream_id, revision
  LOOP
    PERFORM task_schedule_apply(v_event.stream_id, v_event.type, v_event.data::jsonb);
    v_count := v_count + 1;
  END LOOP;
  RETURN v_count;
END $$;

-- Tasks submitted before this migration: the schedule starts out equal to a replay of the log.
SELECT task_schedule_rebuild();
