-- The tasks read model: one row per task, kept by the tasks projection (evolveTask over the task-<id> stream).
-- Commands never write it; it can be dropped and rebuilt from the log.
CREATE TABLE tasks (
  id             uuid PRIMARY KEY,
  owner_id       uuid NOT NULL,
  title          text NOT NULL,
  description    text,
  type           text NOT NULL,
  payload        jsonb,
  priority       integer NOT NULL,
  queue          text NOT NULL,
  status         text NOT NULL CHECK (status IN ('pending', 'in_progress', 'done', 'failed', 'canceled')),
  attempt        integer NOT NULL,
  max_attempts   integer NOT NULL,
  timeout_ms     integer NOT NULL,
  run_at         timestamptz,
  worker_id      text,
  lease_until    timestamptz,
  progress       double precision,
  result         jsonb,
  last_error     jsonb,
  created_at     timestamptz NOT NULL,
  updated_at     timestamptz NOT NULL,
  -- The task stream's revision this row reflects, and the log position of the last event applied to it:
  -- a read that must see position P is satisfied by this row alone once last_position >= P.
  revision       bigint NOT NULL,
  last_position  text NOT NULL
);

-- Workers' dispatch: the next pending task of a queue, highest priority first, then the earliest due.
CREATE INDEX tasks_dispatch ON tasks (queue, priority DESC, run_at, created_at) WHERE status = 'pending';
-- The lease reaper: running tasks whose worker stopped renewing its lease.
CREATE INDEX tasks_lease_expiry ON tasks (lease_until) WHERE status = 'in_progress';
-- GET /tasks for a user: their own tasks, newest first, keyset-paged on (created_at, id).
CREATE INDEX tasks_owner_listing ON tasks (owner_id, created_at DESC, id DESC);
-- GET /tasks for auditors and admins: every task, newest first, keyset-paged on (created_at, id).
CREATE INDEX tasks_listing ON tasks (created_at DESC, id DESC);
