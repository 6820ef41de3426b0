-- Who connfix is on this server, and the settings that bound client connections.
SELECT
    current_user::text AS role,
    r.rolsuper AS is_superuser,
    pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS read_all_stats,
    pg_has_role(current_user, 'pg_signal_backend', 'USAGE') AS signal_backend,
    current_setting('server_version') AS server_version,
    current_setting('server_version_num')::int AS server_version_num,
    current_setting('max_connections')::int AS max_connections,
    current_setting('superuser_reserved_connections')::int AS superuser_reserved_connections,
    coalesce(current_setting('reserved_connections', true), '0')::int AS reserved_connections,
    -- Amazon RDS and Aurora reserve slots for rds_superuser members too (0 elsewhere)
    coalesce(
        nullif(current_setting('rds.rds_superuser_reserved_connections', true), ''), '0'
    )::int AS rds_superuser_reserved_connections,
    pg_backend_pid() AS backend_pid,
    current_database()::text AS database,
    pg_is_in_recovery() AS in_recovery
FROM pg_roles AS r
WHERE r.rolname = current_user
