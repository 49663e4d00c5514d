-- Attempt numbers now only grow: a retried task starts a new round of attempts after the old ones, so a handler
-- still winding down from a canceled attempt never shares an attempt number with the retry. The API shows the
-- attempt within the current round (attempt - attempts_before).
ALTER TABLE tasks ADD COLUMN attempts_before integer NOT NULL DEFAULT 0;
