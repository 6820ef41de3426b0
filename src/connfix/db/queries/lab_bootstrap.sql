-- The lab's roles and database; run once by `connfix lab up` as the bootstrap superuser.
CREATE ROLE app LOGIN PASSWORD %(app_password)s;
CREATE ROLE connfix LOGIN PASSWORD %(connfix_password)s;
GRANT pg_read_all_stats, pg_signal_backend TO connfix;
CREATE ROLE connfix_admin LOGIN SUPERUSER PASSWORD %(admin_password)s;
CREATE DATABASE appdb OWNER app;
