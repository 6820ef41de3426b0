-- Client backends with what termination planning needs: role attributes, state, ages.
-- Only pid/backend_start/state/state_change identify a session for the re-check.
SELECT
    a.pid,
    a.usename::text AS usename,
    coalesce(a.application_name, '') AS application_name,
    host(a.client_addr) AS client_addr,
    a.datname::text AS datname,
    a.state,
    (a.backend_type IS NOT NULL) AS visible,
    coalesce(r.rolsuper, false) AS is_superuser,
    coalesce(r.rolreplication, false) AS is_replication,
    a.backend_start,
    a.state_change,
    extract(epoch FROM now() - a.state_change)::float8 AS idle_seconds,
    extract(epoch FROM now() - a.xact_start)::float8 AS xact_seconds,
    left(a.query, 200) AS query
FROM pg_stat_activity AS a
LEFT JOIN pg_roles AS r ON r.oid = a.usesysid
WHERE a.pid <> pg_backend_pid()
  AND (a.backend_type = 'client backend'
       OR (a.backend_type IS NULL AND a.usesysid IS NOT NULL AND a.datid IS NOT NULL))
