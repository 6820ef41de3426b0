-- The lab's roles and database; run once by `connfix lab up` as the bootstrap superuser.
CREATE ROLE app LOGIN PASSWORD %(app_password)s;
CREATE ROLE connfix LOGIN PASSWORD %(connfix_password)s;
GRANT pg_read_all_stats, pg_signal_backend TO connfix;
-- the refused connection attempts in the report: the log directory's files, listed
-- (pg_monitor) and read by the server (EXECUTE on pg_read_file and pg_read_binary_file,
-- granted in appdb by lab_appdb.sql: without pg_read_server_files they reach only the
-- data and log directories)
GRANT pg_monitor TO connfix;
CREATE ROLE connfix_admin LOGIN SUPERUSER PASSWORD %(admin_password)s;
CREATE DATABASE appdb OWNER app;
