-- The client backends one app host holds, by the address PostgreSQL sees it as.
-- A backend is (pid, backend_start): a pid can be reused by a later backend.
SELECT pid, backend_start FROM pg_stat_activity
WHERE backend_type = 'client backend' AND client_addr = %(addr)s::inet
