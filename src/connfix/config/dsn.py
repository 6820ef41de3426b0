"""Connection strings, parsed and written by libpq's own rules (psycopg.conninfo), and
described without their secrets. No connection is made here: connfix.db.pg connects.
psycopg is imported inside the functions, so reading an inventory does not load it."""

from __future__ import annotations

import os

from connfix import DsnError
from connfix.config.redact import dsn_error


def parse_dsn(dsn: str) -> dict[str, str]:
    """Parse a libpq connection string or URI; raise DsnError (a ValueError) if it is not
    one, its message redacted: libpq quotes what it could not parse (the whole string,
    or a token that is the password), so it goes through connfix.config.redact first."""
    from psycopg import Error
    from psycopg.conninfo import conninfo_to_dict

    try:
        return {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    except (Error, ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or ["not a connection string"])[0]
        raise DsnError(f"invalid connection string: {dsn_error(first, dsn)}") from None


def make_dsn(parts: dict[str, str]) -> str:
    """A key=value connection string of these parts, each value quoted as libpq reads it
    (psycopg's make_conninfo)."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(**parts)


def describe_dsn(dsn: str) -> str:
    """Describe where a DSN points, without anything secret: user@host:port/dbname."""
    try:
        parts = parse_dsn(dsn)
    except ValueError:
        return "(unparsable connection string)"
    user = parts.get("user", os.environ.get("PGUSER", "(default user)"))
    host = parts.get("host") or parts.get("hostaddr") or os.environ.get("PGHOST", "(socket)")
    port = parts.get("port", os.environ.get("PGPORT", "5432"))
    db = parts.get("dbname", os.environ.get("PGDATABASE", user))
    return f"{user}@{host}:{port}/{db}"
