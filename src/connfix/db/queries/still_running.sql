-- Which of these cancelled sessions still run the very statement that was cancelled:
-- same pid and backend_start, still active, state_change unchanged (a new statement or
-- going idle moves it).
SELECT a.pid
FROM unnest(
    %(pids)s::int[], %(backend_starts)s::timestamptz[], %(state_changes)s::timestamptz[]
) AS p(pid, backend_start, state_change)
JOIN pg_stat_get_activity(NULL) AS a ON a.pid = p.pid
WHERE a.backend_start = p.backend_start
  AND a.state_change = p.state_change
  AND a.state IN ('active', 'fastpath function call')
