-- How far the global log may be read without ever skipping an event that commits later (see SAFE_HORIZON in
-- src/infra/eventStore/postgres/postgresEventStore.ts): below every transaction that was running at the caller's
-- snapshot and may write events. pg_snapshot_xmin alone would do, but it waits for every running transaction of
-- the cluster, so the projections' short transactions would hold log readers back all the time.
--
-- A running transaction is passed over only if it (1) is in progress, then (2) holds no ROW EXCLUSIVE lock on
-- events, then (3) is still in progress, checked in that order: a committing transaction leaves the in-progress
-- set before it releases its locks, so (3) proves the lock was not merely released at commit. It relies on every
-- writer of events taking that lock before it has a transaction id: a plain INSERT does; the worker's claim locks
-- the table first, since its FOR UPDATE takes an id early. STABLE, so pg_current_snapshot() is the caller's.
CREATE FUNCTION events_safe_horizon() RETURNS xid8 LANGUAGE plpgsql STABLE AS $$
DECLARE
  v_snapshot pg_snapshot := pg_current_snapshot();
  v_passable xid8[];
BEGIN
  SELECT coalesce(array_agg(x), '{}') INTO v_passable
    FROM pg_snapshot_xip(v_snapshot) AS x WHERE pg_xact_status(x) = 'in progress';
  IF cardinality(v_passable) > 0 THEN
    SELECT coalesce(array_agg(x), '{}') INTO v_passable
      FROM unnest(v_passable) AS x
     WHERE NOT EXISTS (
       SELECT 1 FROM pg_locks t JOIN pg_locks r ON r.virtualtransaction = t.virtualtransaction
        WHERE t.locktype = 'transactionid'
          AND t.transactionid::text::bigint = (x::text::numeric % 4294967296)::bigint
          AND r.locktype = 'relation' AND r.relation = 'events'::regclass AND r.mode = 'RowExclusiveLock'
          AND r.database = (SELECT oid FROM pg_database WHERE datname = current_database()));
    SELECT coalesce(array_agg(x), '{}') INTO v_passable
      FROM unnest(v_passable) AS x WHERE pg_xact_status(x) = 'in progress';
  END IF;
  RETURN coalesce(
    (SELECT min(x) FROM pg_snapshot_xip(v_snapshot) AS x WHERE x <> ALL (v_passable)),
    pg_snapshot_xmax(v_snapshot));
END $$;
