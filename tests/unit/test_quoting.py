"""Generated files are code: each name quoted by its file's rules, or refused. The real
consumers (psql, PgBouncer) read them back in tests/lab/test_pgbouncer.py."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connfix.config import quoting
from connfix.diagnosis.pool_sizing import auth_query_sql, pgbouncer_plan, size_pools
from tests.builders import diagnosis, environment, state

INJECTION = "reporting\nALTER ROLE victim SUPERUSER;\n--"


def _plan(roles: list[str], auth: str = "auth_query", **kw: object) -> object:
    env = environment()
    d = diagnosis(env, [], state([], []))
    args: dict[str, object] = {
        "db_host": "db",
        "db_port": 5432,
        "dbname": "app",
        "roles": roles,
        "admin_users": ["connfix"],
        "directory": "/etc/pgbouncer",
        "auth": auth,
    }
    args.update(kw)
    return pgbouncer_plan(env, d, size_pools(env, d), **args)  # type: ignore[arg-type]


def test_a_role_name_cannot_break_out_of_the_sql_comment() -> None:
    sql = auth_query_sql(["app", INJECTION, 'we"ird'])
    assert "\nALTER ROLE victim" not in sql
    last = sql.strip().splitlines()[-1]
    assert last.startswith("-- roles the apps log in as")
    assert '"reporting\\nALTER ROLE victim SUPERUSER;\\n--"' in last
    assert '"we""ird"' in last


def test_the_userlist_refuses_what_it_cannot_hold_and_quotes_the_rest() -> None:
    with pytest.raises(quoting.Unrepresentable, match=r"cannot be written into userlist\.txt"):
        _plan(["app", INJECTION], auth="userlist")
    with pytest.raises(quoting.Unrepresentable, match=r"\\x1b"):
        _plan(["app\x1b[31m"], auth="userlist")
    plan = _plan(['a"b" "x', "o'brien"], auth="userlist")
    lines = plan.userlist.splitlines()  # type: ignore[attr-defined]
    assert '"a""b"" ""x" "SCRAM-SHA-256$<fill in from pg_authid>"' in lines
    assert '"o\'brien" "SCRAM-SHA-256$<fill in from pg_authid>"' in lines


def test_the_ini_quotes_the_database_and_refuses_line_breaks() -> None:
    plan = _plan(["app"], dbname="my db", db_host="db.internal")
    assert "\n'my db' = host=db.internal port=5432 dbname='my db'\n" in plan.ini  # type: ignore[attr-defined]
    with pytest.raises(quoting.Unrepresentable, match="quoted key cannot hold a single quote"):
        _plan(["app"], dbname="o'brien")
    assert quoting.connstr_value("o'brien", "database") == "'o''brien'"
    for field in ("dbname", "db_host", "listen_addr", "directory"):
        with pytest.raises(quoting.Unrepresentable, match=r"pgbouncer\.ini"):
            _plan(["app"], **{field: "x\nadmin_users = mallory"})
    with pytest.raises(quoting.Unrepresentable, match="splits this list"):
        _plan(["app"], admin_users=["conn fix"])


def test_comments_stay_one_line() -> None:
    env = environment(description="prod\n[pgbouncer]\nadmin_users = mallory")
    d = diagnosis(env, [], state([], []))
    plan = pgbouncer_plan(
        env,
        d,
        size_pools(env, d),
        db_host="db",
        db_port=5432,
        dbname="app",
        roles=["app"],
        admin_users=["connfix"],
        directory="/etc/pgbouncer",
    )
    assert "\nadmin_users = mallory" not in plan.ini
    assert "prod\\n[pgbouncer]\\nadmin_users = mallory" in plan.ini


@given(st.text(min_size=1, max_size=40))
def test_a_userlist_name_reads_back_as_itself(name: str) -> None:
    """PgBouncer's reading of a userlist field (loader.c: the text between quotes, `""`
    for `"`), applied to what connfix writes, gives the name back — or it was refused."""
    try:
        field = quoting.userlist_name(name)
    except quoting.Unrepresentable:
        assert (
            any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in name)
            or any(c in name for c in "\u2028\u2029\u061c\u200e\u200f")
            or any(0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069 for c in name)
        )
        return
    assert "\n" not in field and field[0] == field[-1] == '"'
    assert field[1:-1].replace('""', '"') == name


@given(st.text(min_size=1, max_size=40))
def test_a_connstr_value_reads_back_as_itself(value: str) -> None:
    """PgBouncer's cstr_get_value: bare up to a space, or '…' with '' for a quote."""
    try:
        quoted = quoting.connstr_value(value, "x")
    except quoting.Unrepresentable:
        return
    if quoted.startswith("'"):
        assert quoted.endswith("'") and quoted[1:-1].replace("''", "'") == value
    else:
        assert quoted == value and " " not in value and "'" not in value


def test_database_url_percent_encodes_the_user() -> None:
    plan = _plan(["we ird@x"])
    assert plan.database_url.startswith("postgresql://we%20ird%40x@")  # type: ignore[attr-defined]
