-- One session as it is now, to say why a planned termination was skipped.
SELECT pid, state, backend_start, state_change
FROM pg_stat_get_activity(%(pid)s)
