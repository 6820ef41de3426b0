"""What is wrong and what would fix it: the model (`model`: Diagnosis, Backend, Suspect),
taking one (`analysis`: attribution through a pooler too, suspects, severity), a bare DSN
without an inventory (`zero_setup`), which connections are beyond a pool
(`beyond_pool`), pool sizing and the PgBouncer config it leads to (`pool_sizing`), and
the read-only check of an inventory's ways in (`inventory_check`)."""
