-- Several sessions as they are now, to say why planned terminations were skipped.
SELECT pid, state, backend_start, state_change
FROM pg_stat_activity
WHERE pid = ANY(%(pids)s)
