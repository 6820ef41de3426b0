-- Which of these pids still have a backend.
SELECT pid FROM pg_stat_activity WHERE pid = ANY(%(pids)s)
