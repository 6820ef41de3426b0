-- The client backends one app host's service holds: by the address PostgreSQL sees the
-- host as, and the service's application_name and role where the inventory names them
-- (connections no service owns, pgbench or psql on the same host, are not its).
-- A backend is (pid, backend_start): a pid can be reused by a later backend.
SELECT pid, backend_start FROM pg_stat_activity
WHERE backend_type = 'client backend' AND client_addr = %(addr)s::inet
  AND (%(app)s::text IS NULL OR application_name = %(app)s::text)
  AND (%(user)s::text IS NULL OR usename = %(user)s::text)
