-- Claims of workers that serve some queues only (`workers.onlyQueues`): the due index by queue first, so such a
-- claim reads its own queues' rows and never walks past the backlog of queues it does not serve (a 20,000-task
-- backlog elsewhere made every claim round and "when is the next one due" read all of it).
CREATE INDEX task_schedule_due_by_queue ON task_schedule (queue, priority DESC, run_at, created_at)
  WHERE status = 'pending';
CREATE INDEX task_schedule_next_due_by_queue ON task_schedule (queue, run_at) WHERE status = 'pending';
