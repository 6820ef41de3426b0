-- How many client backends there are now, counted as a diagnosis counts them
-- (activity.sql: a session hidden from connfix's role has no backend_type).
SELECT count(*)::int AS count
FROM pg_stat_activity AS a
WHERE a.backend_type = 'client backend'
   OR (a.backend_type IS NULL AND a.usesysid IS NOT NULL AND a.datid IS NOT NULL)
