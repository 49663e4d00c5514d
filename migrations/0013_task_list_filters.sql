-- GET /tasks?q=...: a word index on titles, so a title search stays an index scan at a million tasks. 'simple'
-- (no stemming, no stop words): task titles are short labels in any language, and a prefix of any word matches.
-- The expression must stay the one the list query uses (projections/tasks/table.ts), or the index goes unused.
-- created_after / created_before need no index of their own: tasks_owner_listing and tasks_listing are ordered by
-- created_at already.
CREATE INDEX tasks_title_words ON tasks USING gin (to_tsvector('simple', title));
