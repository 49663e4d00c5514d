-- The projector's one-statement write (applyEventsInOneWrite in src/projections/applyEvents.ts) sets each stream's
-- guard only where it still holds the revision the projector read a moment before. When any guard moved in between
-- (another consumer applied those events: a rebalance), the whole statement must fail, the rows it wrote included,
-- and a part of a statement cannot make it fail by itself: it asks this function, which raises.
CREATE FUNCTION projection_guards_unmoved(p_set bigint, p_expected bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  IF p_set <> p_expected THEN
    RAISE EXCEPTION 'projection guards moved since they were read (% of % still as read)', p_set, p_expected
      USING ERRCODE = 'serialization_failure';
  END IF;
  RETURN true;
END
$$;
