-- Claims of workers that serve some queues only (`workers.onlyQueues`): the due index by queue first, so such a
-- claim reads its own queues' rows and never walks past the backlog of queues it does not serve (a 20,000-task
-- backlog elsewhere made every claim round and "when is the next one due" read all of it). One index only: every
-- schedule write maintains it, and "next due" reads its own queue's rows through this one well enough.
CREATE INDEX task_schedule_due_by_queue ON task_schedule (queue, priority DESC, run_at, created_at)
  WHERE status = 'pending';
