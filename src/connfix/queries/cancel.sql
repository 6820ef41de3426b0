-- Cancel the running statement of one session, only if it is still the very session
-- that was planned: same pid, same backend_start (pids are reused), same state and
-- state_change (still the same statement). No row: it changed, nothing was signalled. pg_stat_get_activity(pid)
-- reads that one backend's entry, not all of them. The signal is sent without waiting;
-- connfix then confirms each statement ended (see still_running).
SELECT a.pid, pg_cancel_backend(a.pid) AS signalled
FROM pg_stat_get_activity(%(pid)s) AS a
WHERE a.backend_start = %(backend_start)s
  AND a.state = %(state)s
  AND a.state_change = %(state_change)s
