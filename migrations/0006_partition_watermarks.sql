-- Read-your-writes across Kafka partitions. The relay records, per partition, the newest log position it has
-- published there (in the transaction that moves its checkpoint); each projection records, per partition, the
-- newest position it has applied. A read model has reached position P when the relay's checkpoint is at or past
-- P and, in every partition p, the projection has applied at least min(P, the relay's head in p).
CREATE TABLE relay_partition_heads (
  partition  integer PRIMARY KEY,
  position   text NOT NULL
);

CREATE TABLE projection_partition_positions (
  projection  text NOT NULL,
  partition   integer NOT NULL,
  position    text NOT NULL,
  PRIMARY KEY (projection, partition)
);

-- Superseded by projection_partition_positions: one newest position per projection cannot say "everything
-- before P is applied" once events arrive over several partitions.
DROP TABLE projection_positions;
