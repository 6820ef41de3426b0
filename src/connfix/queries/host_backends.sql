-- The client backends one app host holds, by the address PostgreSQL sees it as.
SELECT pid FROM pg_stat_activity
WHERE backend_type = 'client backend' AND client_addr = %(addr)s::inet
