-- Terminate one session (or, with cancel, cancel its running statement), only if it is
-- still the very session that was planned: same
-- pid, same backend_start (pids are reused), same state and state_change (it has not
-- woken up since). No row: it changed, nothing was signalled. pg_stat_get_activity(pid)
-- reads that one backend's entry, not all of them. The signal is sent without waiting;
-- connfix then confirms the exits for all pids at once (see backends_alive), or for a
-- cancel that the statements ended (see still_running).
SELECT a.pid,
       CASE WHEN %(cancel)s THEN pg_cancel_backend(a.pid) ELSE pg_terminate_backend(a.pid) END
           AS signalled
FROM pg_stat_get_activity(%(pid)s) AS a
WHERE a.backend_start = %(backend_start)s
  AND a.state = %(state)s
  AND a.state_change = %(state_change)s
