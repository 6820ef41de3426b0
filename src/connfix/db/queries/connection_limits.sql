-- Roles and databases with a CONNECTION LIMIT, and how many client backends use each.
-- Counts come from usename / datname, which stay visible without pg_read_all_stats.
SELECT 'role' AS kind, r.rolname::text AS name, r.rolconnlimit AS "limit",
       (SELECT count(*) FROM pg_stat_activity AS a
         WHERE a.usename = r.rolname AND a.pid <> pg_backend_pid()
           AND (a.backend_type = 'client backend'
                OR (a.backend_type IS NULL AND a.datid IS NOT NULL)))::int AS used
FROM pg_roles AS r
WHERE r.rolconnlimit >= 0 AND r.rolcanlogin
UNION ALL
SELECT 'database', d.datname::text, d.datconnlimit,
       (SELECT count(*) FROM pg_stat_activity AS a
         WHERE a.datname = d.datname AND a.pid <> pg_backend_pid()
           AND (a.backend_type = 'client backend'
                OR (a.backend_type IS NULL AND a.datid IS NOT NULL)))::int
FROM pg_database AS d
WHERE d.datconnlimit >= 0 AND d.datallowconn
ORDER BY 1, 2
