-- Run by `connfix lab up` in the lab's appdb, as the bootstrap superuser: a function's
-- privileges are the database's own. connfix's role may read the server's log files
-- (the report's refused connection attempts), the data and log directories only.
GRANT EXECUTE ON FUNCTION pg_read_file(text) TO connfix;
-- the window of a large file, read in pieces
GRANT EXECUTE ON FUNCTION pg_read_binary_file(text, bigint, bigint) TO connfix;
