-- One run per environment: a session-level advisory lock, held by connfix's session.
SELECT pg_try_advisory_lock(%(key1)s::int4, %(key2)s::int4) AS acquired
