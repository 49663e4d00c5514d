-- When the next pending task falls due, for a claim round that found fewer due tasks than it had room for: read
-- from the first entry after now, not from every pending row (the other indexes lead with the queue or the
-- priority, so min(run_at) had to read all of them: 12-37 ms with 100,000 pending, on every such round). A
-- worker of some queues filters this index by queue as it walks it, or reads its queues' rows through
-- task_schedule_due_by_queue when the planner estimates that cheaper.
CREATE INDEX task_schedule_next_due ON task_schedule (run_at) WHERE status = 'pending';
