-- A task row is updated three or four times in its life (started, finished, retried), and none of those updates
-- could be heap-only (HOT): two partial indexes named `status` in their predicate and one indexed `lease_until`, so
-- every update inserted a new entry into each of the table's eight indexes, the GIN title index included. Both
-- serve only the EventStoreDB path, whose worker claims from this read model; that path creates them when it starts
-- (ensureReadModelClaimIndexes in src/projections/tasks/table.ts). The fillfactor leaves room on each page for the
-- new versions of its rows, which a heap-only update needs.
DROP INDEX IF EXISTS tasks_dispatch;
DROP INDEX IF EXISTS tasks_lease_expiry;
ALTER TABLE tasks SET (fillfactor = 80);
