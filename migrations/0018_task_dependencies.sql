-- Tasks that wait for other tasks (`depends_on`). The schedule (the inline projection workers claim from) holds a
-- task that waits as `waiting`, so no claim sees it, and one whose dependency failed as `dependency_failed`, which a
-- worker's reaper turns into TaskFailed naming the dependency. Both are a function of the log's current state:
-- the task's own status and each dependency's, as task_schedule_gate computes them.

ALTER TABLE task_schedule DROP CONSTRAINT task_schedule_status_check;
ALTER TABLE task_schedule ADD CONSTRAINT task_schedule_status_check
  CHECK (status IN ('pending', 'claimed', 'running', 'failed', 'canceled', 'waiting', 'dependency_failed'));
-- With status dependency_failed: the dependency that ended failed or canceled.
ALTER TABLE task_schedule ADD COLUMN failed_dependency uuid;
CREATE INDEX task_schedule_gated ON task_schedule (status) WHERE status IN ('waiting', 'dependency_failed');

-- Who waits for whom, from each TaskQueued's spec.dependencies: derived like the schedule, rebuilt with it.
CREATE TABLE task_dependencies (
  task_id     uuid NOT NULL,
  depends_on  uuid NOT NULL,
  on_failure  text NOT NULL CHECK (on_failure IN ('fail', 'ignore')),
  PRIMARY KEY (task_id, depends_on)
);
CREATE INDEX task_dependencies_by_dependency ON task_dependencies (depends_on);

-- The read model shows them (GET /tasks/{id}: depends_on, on_dependency_failure).
ALTER TABLE tasks ADD COLUMN dependencies jsonb;

-- A task's status as its stream says now, from the last event that sets it: pending (or running), done, failed,
-- canceled. Read from the log rather than the schedule, where done and archived tasks have no row.
CREATE FUNCTION task_status_in_log(p_task_id uuid) RETURNS text LANGUAGE sql STABLE AS $$
  SELECT CASE e.type WHEN 'TaskSucceeded' THEN 'done' WHEN 'TaskFailed' THEN 'failed'
                     WHEN 'TaskCanceled' THEN 'canceled' ELSE 'unfinished' END
    FROM events e
   WHERE e.stream_id = 'task-' || p_task_id::text
     AND e.type IN ('TaskQueued', 'TaskSucceeded', 'TaskFailed', 'TaskCanceled', 'TaskRequeued')
   ORDER BY e.revision DESC
   LIMIT 1
$$;

-- Puts a waiting task's row where its dependencies say: `dependency_failed` when one ended failed or canceled (and
-- its failure fails it), `waiting` while one is unfinished (with `ignore`: not yet finished at all), `pending` once
-- none holds it back. Only rows the task's own stream has pending are touched: one claimed, running or finished is
-- its own business.
CREATE FUNCTION task_schedule_gate(p_task_id uuid) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_policy text;
  v_failed uuid;
  v_unresolved integer;
BEGIN
  SELECT d.on_failure INTO v_policy FROM task_dependencies d WHERE d.task_id = p_task_id LIMIT 1;
  IF v_policy IS NULL THEN
    RETURN;
  END IF;
  WITH deps AS (
    SELECT d.depends_on, coalesce(task_status_in_log(d.depends_on), 'unfinished') AS status
      FROM task_dependencies d WHERE d.task_id = p_task_id
  )
  SELECT (SELECT deps.depends_on FROM deps WHERE deps.status IN ('failed', 'canceled')
           ORDER BY deps.depends_on LIMIT 1),
         (SELECT count(*) FROM deps
           WHERE deps.status = 'unfinished' OR (v_policy = 'fail' AND deps.status <> 'done'))
    INTO v_failed, v_unresolved;
  UPDATE task_schedule
     SET status = CASE WHEN v_policy = 'fail' AND v_failed IS NOT NULL THEN 'dependency_failed'
                       WHEN v_unresolved > 0 THEN 'waiting'
                       ELSE 'pending' END,
         failed_dependency = CASE WHEN v_policy = 'fail' THEN v_failed END
   WHERE task_id = p_task_id AND status IN ('pending', 'waiting', 'dependency_failed');
END $$;

-- Every waiting task looked at again: what a dependency's outcome could not reach (the task was being queued in
-- a transaction that committed after the dependency's outcome looked for it). Workers run it with the lease reaper.
CREATE FUNCTION task_schedule_regate() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  v_count bigint := 0;
  v_task record;
BEGIN
  FOR v_task IN SELECT task_id FROM task_schedule WHERE status IN ('waiting', 'dependency_failed') LOOP
    PERFORM task_schedule_gate(v_task.task_id);
    v_count := v_count + 1;
  END LOOP;
  RETURN v_count;
END $$;

-- The schedule's trigger function once more (as of 0016), now also: recording a queued task's dependencies and
-- gating it; gating a task again whenever its own stream makes it pending; and, after any event that changes a
-- task's status, gating the tasks that wait for it.
CREATE OR REPLACE FUNCTION task_schedule_apply(p_stream_id text, p_type text, p_data jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  v_task_id uuid;
BEGIN
  IF substr(p_stream_id, 6) !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
    RETURN;
  END IF;
  v_task_id := substr(p_stream_id, 6)::uuid;
  CASE p_type
    WHEN 'TaskQueued' THEN
      INSERT INTO task_schedule (task_id, queue, priority, status, run_at, attempt, created_at, group_key)
      VALUES (v_task_id, p_data #>> '{spec,queue}', (p_data #>> '{spec,priority}')::int, 'pending',
              coalesce(p_data #>> '{spec,runAt}', p_data ->> 'queuedAt')::timestamptz, 0,
              (p_data ->> 'queuedAt')::timestamptz, coalesce(p_data #>> '{spec,groupKey}', ''))
      ON CONFLICT (task_id) DO NOTHING;
      IF jsonb_typeof(p_data #> '{spec,dependencies}') = 'object' THEN
        INSERT INTO task_dependencies (task_id, depends_on, on_failure)
        SELECT v_task_id, dependency::uuid, p_data #>> '{spec,dependencies,onFailure}'
          FROM jsonb_array_elements_text(p_data #> '{spec,dependencies,taskIds}') AS dependency
        ON CONFLICT DO NOTHING;
        PERFORM task_schedule_gate(v_task_id);
      END IF;
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
      PERFORM task_schedule_gate(v_task_id);
    WHEN 'TaskReleased' THEN
      UPDATE task_schedule
         SET status = 'pending', run_at = (p_data ->> 'releasedAt')::timestamptz,
             attempt = (p_data ->> 'attempt')::int - 1, worker_id = NULL, lease_until = NULL
       WHERE task_id = v_task_id;
      PERFORM task_schedule_gate(v_task_id);
    WHEN 'TaskRequeued' THEN
      UPDATE task_schedule
         SET status = 'pending', run_at = (p_data ->> 'requeuedAt')::timestamptz, worker_id = NULL, lease_until = NULL,
             failed_dependency = NULL
       WHERE task_id = v_task_id;
      PERFORM task_schedule_gate(v_task_id);
    WHEN 'TaskFailed' THEN
      UPDATE task_schedule SET status = 'failed', worker_id = NULL, lease_until = NULL, failed_dependency = NULL
       WHERE task_id = v_task_id;
    WHEN 'TaskCanceled' THEN
      UPDATE task_schedule SET status = 'canceled', worker_id = NULL, lease_until = NULL, failed_dependency = NULL
       WHERE task_id = v_task_id;
    WHEN 'TaskSucceeded', 'TaskArchived' THEN
      DELETE FROM task_schedule WHERE task_id = v_task_id;
    ELSE
      NULL; -- TaskProgressed and anything newer: nothing a claim needs
  END CASE;
  IF p_type IN ('TaskSucceeded', 'TaskFailed', 'TaskCanceled', 'TaskRequeued') THEN
    PERFORM task_schedule_gate(d.task_id) FROM task_dependencies d WHERE d.depends_on = v_task_id;
  END IF;
END $$;

-- Rebuild: the dependencies go with the schedule, and every waiting task is gated once the whole log is replayed
-- (streams are replayed one after another, so a task may be replayed before the tasks it waits for).
CREATE OR REPLACE FUNCTION task_schedule_rebuild() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  v_count bigint := 0;
  v_event record;
BEGIN
  DELETE FROM task_schedule;
  DELETE FROM task_dependencies;
  FOR v_event IN
    SELECT stream_id, type, data FROM events WHERE stream_id LIKE 'task-%' ORDER BY stream_id, revision
  LOOP
    PERFORM task_schedule_apply(v_event.stream_id, v_event.type, v_event.data::jsonb);
    v_count := v_count + 1;
  END LOOP;
  PERFORM task_schedule_gate(d.task_id) FROM (SELECT DISTINCT task_id FROM task_dependencies) d;
  RETURN v_count;
END $$;
