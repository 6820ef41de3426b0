-- Every session that may hold a connection slot, connfix's own included (own = true):
-- it takes a slot like any other, so it is counted, and shown apart.
-- Rows of other roles that connfix may not see (no pg_read_all_stats) have NULL
-- backend_type, state, client_addr and timestamps; they are kept (visible = false) when
-- they belong to a role and a database, as client backends do, so they are counted
-- instead of silently dropped. (Background workers without a database, such as the
-- logical replication launcher, and autovacuum, which has no role, stay out.)
-- The same rows plan a termination: the role's attributes exclude superusers and
-- replication roles; pid, backend_start, state and state_change identify a session for
-- the re-check before it is ended.
SELECT
    a.pid,
    a.usename::text AS usename,
    coalesce(a.application_name, '') AS application_name,
    host(a.client_addr) AS client_addr,
    a.datname::text AS datname,
    a.state,
    (a.backend_type IS NOT NULL) AS visible,
    a.backend_start,
    a.state_change,
    extract(epoch FROM now() - a.state_change)::float8 AS idle_seconds,
    extract(epoch FROM now() - a.xact_start)::float8 AS xact_seconds,
    a.wait_event_type,
    CASE WHEN a.wait_event_type = 'Lock' THEN pg_blocking_pids(a.pid) END AS blocked_by,
    left(a.query, 200) AS query,
    (a.pid = pg_backend_pid()) AS own,
    coalesce(r.rolsuper, false) AS is_superuser,
    coalesce(r.rolreplication, false) AS is_replication
FROM pg_stat_activity AS a
LEFT JOIN pg_roles AS r ON r.oid = a.usesysid
WHERE a.backend_type = 'client backend'
   OR (a.backend_type IS NULL AND a.usesysid IS NOT NULL AND a.datid IS NOT NULL)
