-- Who holds an environment's advisory lock (two-int4 form: objsubid = 2).
SELECT a.pid, a.usename::text AS usename, host(a.client_addr) AS client_addr,
       coalesce(a.application_name, '') AS application_name, a.backend_start,
       extract(epoch FROM now() - a.backend_start)::float8 AS held_seconds, a.query
FROM pg_locks AS l
JOIN pg_stat_activity AS a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
  AND l.classid = %(key1)s::int8::oid AND l.objid = %(key2)s::int8::oid
