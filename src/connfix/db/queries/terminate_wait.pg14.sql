-- PostgreSQL 14+: terminate one session if it is still the very session that was planned
-- (same pid, backend_start, state and state_change), and wait for it to exit.
-- true: it is gone; false (with a WARNING): still there after the timeout.
-- The wait polls in 100 ms steps, so connfix uses this only for small plans.
SELECT a.pid, pg_terminate_backend(a.pid, %(timeout_ms)s) AS signalled
FROM pg_stat_get_activity(%(pid)s) AS a
WHERE a.backend_start = %(backend_start)s
  AND a.state = %(state)s
  AND a.state_change = %(state_change)s
