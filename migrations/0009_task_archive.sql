-- TaskArchived: a finished task hidden from lists (GET /tasks, GET /api/tasks) while its stream keeps its history.
ALTER TABLE tasks ADD COLUMN archived_at timestamptz;
