"""The database and its pooler, the only packages' way to them: PostgreSQL sessions, the
ways in when the slots are full, set-based termination (`pg`, the one importer of
psycopg's connections); PgBouncer's admin console (`pgbouncer_console`: SHOW and the
admin commands, through `pg`); session states (`sessions`); the SQL (`queries/`)."""
