-- Whether the server is a hot standby now (a switchover turns a standby into the primary).
SELECT pg_is_in_recovery() AS in_recovery
