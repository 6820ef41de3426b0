-- Terminate a batch of planned sessions in one statement, each only if it is still the
-- very session that was planned: same pid, same backend_start (pids are reused), same
-- state and state_change (it has not woken up since). pg_terminate_backend is called
-- only for the rows that pass those checks (a target list is evaluated after the join
-- and its conditions). A planned pid with no row here changed: nothing was signalled.
-- The signals are sent without waiting; connfix confirms the exits for all pids at once.
-- With cancel, pg_cancel_backend instead: the running statements end, the sessions stay.
SELECT a.pid,
       CASE WHEN %(cancel)s THEN pg_cancel_backend(a.pid) ELSE pg_terminate_backend(a.pid) END
           AS signalled
FROM unnest(
    %(pids)s::int[], %(backend_starts)s::timestamptz[], %(states)s::text[],
    %(state_changes)s::timestamptz[]
) AS p(pid, backend_start, state, state_change)
JOIN pg_stat_get_activity(NULL) AS a ON a.pid = p.pid
WHERE a.backend_start = p.backend_start
  AND a.state = p.state
  AND a.state_change = p.state_change
