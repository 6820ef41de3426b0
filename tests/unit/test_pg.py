"""The database layer's pure parts: the server's refusals classified, a DSN described."""

from __future__ import annotations

import pytest

from connfix.config.dsn import describe_dsn
from connfix.db import pg

PG16_MESSAGES = [
    (
        "remaining connection slots are reserved for roles with privileges of the"
        ' "pg_use_reserved_connections" role',
        "reserved_slots",
    ),
    (
        "remaining connection slots are reserved for roles with the SUPERUSER attribute",
        "reserved_slots",
    ),
    (
        "remaining connection slots are reserved for non-replication superuser connections",
        "reserved_slots",
    ),
    ("sorry, too many clients already", "too_many_clients"),
    ('too many connections for role "app"', "role_limit"),
    ('too many connections for database "appdb"', "database_limit"),
    ("remaining connection slots are reserved for rds_reserved", "reserved_slots"),
    ('password authentication failed for user "app"', None),
    ("could not connect to server: Connection refused", None),
]


@pytest.mark.parametrize(("message", "kind"), PG16_MESSAGES)
def test_classify_refusal(message: str, kind: str | None) -> None:
    assert pg.classify_refusal(message) == kind
    assert pg.classify_refusal(f"connection failed: FATAL:  {message}") == kind


def test_dsn_description_never_contains_the_password() -> None:
    described = describe_dsn("host=db1 port=5433 dbname=app user=u password=s3cret")
    assert described == "u@db1:5433/app"
