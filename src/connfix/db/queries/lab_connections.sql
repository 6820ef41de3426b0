-- Client backends per client address, for `connfix lab status`.
SELECT host(client_addr) AS client_addr,
       count(*)::int AS total,
       count(*) FILTER (WHERE state = 'idle')::int AS idle,
       count(*) FILTER (WHERE state LIKE 'idle in transaction%%')::int AS idle_in_transaction
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
GROUP BY client_addr
ORDER BY client_addr
