-- Flow control per queue, across every worker process: a global concurrency limit, a rate limit, a cap per group
-- key with round-robin between keys, and a pause. An admin sets them with PUT /queues/{name} (QueueConfigured on
-- the stream queue-<name>); config.yml may give defaults for queues nobody has configured.
--
-- Enforced where workers claim. A queue with any limit (a "managed" queue) is claimed only through
-- task_schedule_claim_limited below, which takes a lock per queue, so the count it limits cannot change between
-- reading it and claiming. Queues without limits keep the one-statement claim of src/workers/schedule.ts, which
-- leaves managed queues alone.

-- Tasks carry an optional group key (a tenant, a customer); '' is "no key", so the column needs no NULL logic.
ALTER TABLE task_schedule ADD COLUMN group_key text NOT NULL DEFAULT '';

-- The read model shows the key and lists by it (GET /tasks?group_key=), newest first like every other list.
ALTER TABLE tasks ADD COLUMN group_key text;
CREATE INDEX tasks_group_listing ON tasks (group_key, created_at DESC, id DESC) WHERE group_key IS NOT NULL;

-- The fair claim walks a managed queue's due rows key by key, in each key by priority.
CREATE INDEX task_schedule_due_by_group ON task_schedule (queue, group_key, priority DESC, run_at, created_at)
  WHERE status = 'pending';
-- The counts the limits need: what runs (or is being started) per queue and per key.
CREATE INDEX task_schedule_active_by_group ON task_schedule (queue, group_key)
  WHERE status IN ('running', 'claimed');

-- The inline schedule learns the group key (spec.groupKey, absent on tasks submitted before it existed).
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

-- Each queue's settings as its stream's last QueueConfigured says: an inline projection like task_schedule
-- (written in the append's transaction, so a claim never reads limits older than the log), derived data that
-- `projections rebuild --verify` compares with a fold of the log and queue_settings_rebuild() recomputes.
CREATE TABLE queue_settings (
  queue              text PRIMARY KEY,
  concurrency        integer,
  rate_limit         integer,
  rate_interval_ms   integer,
  group_concurrency  integer,
  paused             boolean NOT NULL,
  configured_at      timestamptz NOT NULL,
  configured_by      text NOT NULL,
  managed            boolean GENERATED ALWAYS AS (
                       concurrency IS NOT NULL OR rate_limit IS NOT NULL OR group_concurrency IS NOT NULL OR paused
                     ) STORED
);

CREATE FUNCTION queue_settings_apply(p_type text, p_data jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF p_type <> 'QueueConfigured' THEN
    RETURN;
  END IF;
  INSERT INTO queue_settings AS s (queue, concurrency, rate_limit, rate_interval_ms, group_concurrency, paused,
                                   configured_at, configured_by)
  VALUES (p_data ->> 'queue', (p_data ->> 'concurrency')::int, (p_data #>> '{rate,limit}')::int,
          (p_data #>> '{rate,intervalMs}')::int, (p_data ->> 'groupConcurrency')::int, (p_data ->> 'paused')::boolean,
          (p_data ->> 'configuredAt')::timestamptz, p_data ->> 'configuredBy')
  ON CONFLICT (queue) DO UPDATE
    SET concurrency = excluded.concurrency, rate_limit = excluded.rate_limit,
        rate_interval_ms = excluded.rate_interval_ms, group_concurrency = excluded.group_concurrency,
        paused = excluded.paused, configured_at = excluded.configured_at, configured_by = excluded.configured_by;
END $$;

CREATE FUNCTION queue_settings_on_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM queue_settings_apply(NEW.type, NEW.data::jsonb);
  RETURN NULL;
END $$;

CREATE TRIGGER queue_settings_inline AFTER INSERT ON events
  FOR EACH ROW WHEN (NEW.stream_id LIKE 'queue-%') EXECUTE FUNCTION queue_settings_on_event();

CREATE FUNCTION queue_settings_rebuild() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  v_count bigint := 0;
  v_event record;
BEGIN
  DELETE FROM queue_settings;
  FOR v_event IN SELECT type, data FROM events WHERE stream_id LIKE 'queue-%' ORDER BY stream_id, revision LOOP
    PERFORM queue_settings_apply(v_event.type, v_event.data::jsonb);
    v_count := v_count + 1;
  END LOOP;
  RETURN v_count;
END $$;

-- Book-keeping of the claim itself, not derived from the log (like a `claimed` row): the starts inside each rate
-- limited queue's current window, and where the round-robin between group keys stopped. Losing them loosens a rate
-- limit for one interval and restarts the round at the first key; nothing else.
CREATE TABLE queue_rate_starts (
  queue       text NOT NULL,
  started_at  timestamptz NOT NULL
);
CREATE INDEX queue_rate_starts_by_queue ON queue_rate_starts (queue, started_at);

CREATE TABLE queue_claim_cursors (
  queue           text PRIMARY KEY,
  last_group_key  text NOT NULL
);

-- The claim of managed queues. For each managed queue with due work (in random order, so no queue always goes
-- first), under a lock of that queue held to the end of the caller's transaction (or, when another worker holds it,
-- not now): room = min(the worker's free
-- slots, its room for the queue, concurrency - running, rate_limit - starts in the window); then the due tasks of
-- the group keys after the round-robin cursor, one per key per round (each key capped at group_concurrency -
-- running), marked `claimed`. Returns each claimed task's events (read after the claim, so a task queued a moment
-- ago is never claimed without its events) and, as rows without a task, why a queue with due work gave nothing:
-- `rate` with the time its window frees a start, `limit` (concurrency or group caps: wait for a task to end), or
-- `busy` (another worker holds the queue's lock: look again in a moment).
CREATE FUNCTION task_schedule_claim_limited(
  p_now timestamptz, p_worker text, p_lease_until timestamptz, p_limit integer, p_only_queues text[],
  p_room jsonb, p_default_room integer, p_defaults jsonb
) RETURNS TABLE (task_id uuid, queue text, stream_id text, revision bigint, type text, data text, hash text,
                 held_by text, retry_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_queue record;
  v_left integer := p_limit;
  v_room integer;
  v_active integer;
  v_started integer;
  v_oldest timestamptz;
  v_interval interval;
  v_cursor text;
  v_key text;
  v_next text;
  v_wrapped boolean;
  v_looked integer;
  v_keys text[];
  v_key_room integer[];
  v_key_active integer;
  v_picked uuid[];
  v_last_key text;
  v_claimed uuid[] := ARRAY[]::uuid[];
BEGIN
  FOR v_queue IN
    WITH effective AS (
      SELECT s.queue, s.concurrency, s.rate_limit, s.rate_interval_ms, s.group_concurrency, s.paused
        FROM queue_settings s
      UNION ALL
      SELECT d.key, (d.value ->> 'concurrency')::int, (d.value #>> '{rate,limit}')::int,
             (d.value #>> '{rate,intervalMs}')::int, (d.value ->> 'groupConcurrency')::int,
             coalesce((d.value ->> 'paused')::boolean, false)
        FROM jsonb_each(p_defaults) d
       WHERE NOT EXISTS (SELECT 1 FROM queue_settings s WHERE s.queue = d.key)
    )
    SELECT e.* FROM effective e
     WHERE NOT e.paused
       AND (e.concurrency IS NOT NULL OR e.rate_limit IS NOT NULL OR e.group_concurrency IS NOT NULL)
       AND (cardinality(p_only_queues) = 0 OR e.queue = ANY(p_only_queues))
       AND EXISTS (SELECT 1 FROM task_schedule t
                    WHERE t.queue = e.queue AND t.status = 'pending' AND t.run_at <= p_now)
     ORDER BY random()
  LOOP
    EXIT WHEN v_left <= 0;
    v_room := least(v_left, coalesce((p_room ->> v_queue.queue)::int, p_default_room));
    CONTINUE WHEN v_room <= 0;
    -- Tried, not waited for: two workers taking the locks of two queues in opposite orders would deadlock. A
    -- queue another worker is claiming right now is looked at again in a moment.
    IF NOT pg_try_advisory_xact_lock(hashtextextended('task_schedule_claim:' || v_queue.queue, 0)) THEN
      RETURN QUERY SELECT NULL::uuid, v_queue.queue, NULL::text, NULL::bigint, NULL::text, NULL::text, NULL::text,
                          'busy'::text, p_now + interval '10 milliseconds';
      CONTINUE;
    END IF;
    -- Read after the lock: every claim of this queue that committed before it is counted.
    IF v_queue.concurrency IS NOT NULL THEN
      SELECT count(*) INTO v_active FROM task_schedule t
       WHERE t.queue = v_queue.queue AND t.status IN ('running', 'claimed');
      IF v_active >= v_queue.concurrency THEN
        RETURN QUERY SELECT NULL::uuid, v_queue.queue, NULL::text, NULL::bigint, NULL::text, NULL::text, NULL::text,
                            'limit'::text, NULL::timestamptz;
        CONTINUE;
      END IF;
      v_room := least(v_room, v_queue.concurrency - v_active);
    END IF;
    IF v_queue.rate_limit IS NOT NULL THEN
      v_interval := make_interval(secs => v_queue.rate_interval_ms / 1000.0);
      DELETE FROM queue_rate_starts r WHERE r.queue = v_queue.queue AND r.started_at <= p_now - v_interval;
      SELECT count(*), min(r.started_at) INTO v_started, v_oldest FROM queue_rate_starts r
       WHERE r.queue = v_queue.queue;
      IF v_started >= v_queue.rate_limit THEN
        RETURN QUERY SELECT NULL::uuid, v_queue.queue, NULL::text, NULL::bigint, NULL::text, NULL::text, NULL::text,
                            'rate'::text, v_oldest + v_interval;
        CONTINUE;
      END IF;
      v_room := least(v_room, v_queue.rate_limit - v_started);
    END IF;

    -- The keys to serve this round: those with due work after the cursor, wrapping round to the first, each with
    -- its own room; a key at its cap is passed over. Bounded, so a queue of many capped keys costs a bounded look.
    SELECT c.last_group_key INTO v_cursor FROM queue_claim_cursors c WHERE c.queue = v_queue.queue;
    v_keys := ARRAY[]::text[];
    v_key_room := ARRAY[]::integer[];
    v_key := v_cursor;
    v_wrapped := v_cursor IS NULL;
    v_looked := 0;
    LOOP
      EXIT WHEN cardinality(v_keys) >= v_room OR v_looked >= 1000;
      v_next := NULL;
      SELECT t.group_key INTO v_next FROM task_schedule t
       WHERE t.queue = v_queue.queue AND t.status = 'pending' AND t.run_at <= p_now
         AND (v_key IS NULL OR t.group_key > v_key)
       ORDER BY t.group_key LIMIT 1;
      IF v_next IS NULL THEN
        EXIT WHEN v_wrapped;
        v_wrapped := true;
        v_key := NULL;
        CONTINUE;
      END IF;
      -- Round the wrap: stop once back past the key the last round ended on.
      EXIT WHEN v_wrapped AND v_cursor IS NOT NULL AND v_next > v_cursor;
      v_looked := v_looked + 1;
      v_key := v_next;
      IF v_queue.group_concurrency IS NOT NULL AND v_next <> '' THEN
        SELECT count(*) INTO v_key_active FROM task_schedule t
         WHERE t.queue = v_queue.queue AND t.group_key = v_next AND t.status IN ('running', 'claimed');
        CONTINUE WHEN v_key_active >= v_queue.group_concurrency;
        v_keys := v_keys || v_next;
        v_key_room := v_key_room || least(v_room, v_queue.group_concurrency - v_key_active);
      ELSE
        v_keys := v_keys || v_next;
        v_key_room := v_key_room || v_room;
      END IF;
    END LOOP;
    IF cardinality(v_keys) = 0 THEN
      RETURN QUERY SELECT NULL::uuid, v_queue.queue, NULL::text, NULL::bigint, NULL::text, NULL::text, NULL::text,
                          'limit'::text, NULL::timestamptz;
      CONTINUE;
    END IF;

    -- Round robin: every key's first task, then every key's second, ...; within a key, by priority.
    SELECT array_agg(x.task_id ORDER BY x.rn, x.ord), (array_agg(x.group_key ORDER BY x.rn DESC, x.ord DESC))[1]
      INTO v_picked, v_last_key
      FROM (SELECT c.task_id, c.rn, k.ord, k.group_key
              FROM unnest(v_keys, v_key_room) WITH ORDINALITY AS k(group_key, room, ord)
              CROSS JOIN LATERAL (
                SELECT t.task_id, row_number() OVER (ORDER BY t.priority DESC, t.run_at, t.created_at) AS rn
                  FROM task_schedule t
                 WHERE t.queue = v_queue.queue AND t.group_key = k.group_key AND t.status = 'pending'
                   AND t.run_at <= p_now
                 ORDER BY t.priority DESC, t.run_at, t.created_at
                 LIMIT k.room) c
             ORDER BY c.rn, k.ord
             LIMIT v_room) x;
    WITH marked AS (
      UPDATE task_schedule t SET status = 'claimed', worker_id = p_worker, lease_until = p_lease_until
       WHERE t.task_id = ANY(v_picked) AND t.status = 'pending'
      RETURNING t.task_id
    )
    SELECT coalesce(array_agg(m.task_id), ARRAY[]::uuid[]) INTO v_picked FROM marked m;
    IF cardinality(v_picked) > 0 THEN
      v_claimed := v_claimed || v_picked;
      v_left := v_left - cardinality(v_picked);
      IF v_queue.rate_limit IS NOT NULL THEN
        INSERT INTO queue_rate_starts (queue, started_at)
        SELECT v_queue.queue, p_now FROM generate_series(1, cardinality(v_picked));
      END IF;
      INSERT INTO queue_claim_cursors AS c (queue, last_group_key) VALUES (v_queue.queue, v_last_key)
      ON CONFLICT (queue) DO UPDATE SET last_group_key = excluded.last_group_key;
    END IF;
  END LOOP;
  RETURN QUERY
    SELECT t.task_id, s.queue, e.stream_id, e.revision, e.type, e.data, e.metadata ->> 'hash', NULL::text,
           NULL::timestamptz
      FROM unnest(v_claimed) AS t(task_id)
      JOIN task_schedule s ON s.task_id = t.task_id
      JOIN events e ON e.stream_id = 'task-' || t.task_id::text
     ORDER BY e.stream_id, e.revision;
END $$;
