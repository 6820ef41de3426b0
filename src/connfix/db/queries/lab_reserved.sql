-- PostgreSQL 16+: a role that may use the reserved_connections slots, for connfix.
CREATE ROLE connfix_reserved LOGIN PASSWORD %(reserved_password)s;
GRANT pg_use_reserved_connections, pg_read_all_stats, pg_signal_backend TO connfix_reserved;
