"""Tests on the real lab: PostgreSQL, sshd and systemd hosts, PgBouncer, Alertmanager (root)."""
