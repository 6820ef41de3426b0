"""Generated files are code: every name connfix writes into one is quoted by that file's
own rules, or refused with a clear error. Names come from the database (role and
database names: anyone with CREATEROLE can name a role `x⏎ALTER ROLE victim SUPERUSER;`),
the inventory and the command line; none reaches a generated file any other way.

The rules, as the consumers parse them (PgBouncer 1.25's loader.c and libusual's
cfparser.c; PostgreSQL's lexer):
- pgbouncer.ini: a line is `key = value`; a value runs to the end of the line (so it
  can hold no line break, and its ends are trimmed); a key is `[A-Za-z0-9_.*-]+` or
  single-quoted (no quote inside). A [databases] connection string is `k=v` pairs; a
  value with a space or a quote is single-quoted, `''` for a quote. admin_users is a
  list split at spaces and commas.
- userlist.txt: `"name" "secret"` per line; `""` for a double quote; no line break.
- SQL: an identifier is double-quoted, `""` for a double quote (no NUL); a comment
  (`--`) ends at the line break, so text in one is shown with control characters
  visible and never spans lines.
Control characters (C0, C1, DEL, the Unicode line and paragraph separators and bidi
overrides) cannot be represented in an ini or userlist line: a name holding one is
refused, naming the name (shown visibly) and the file.
"""

from __future__ import annotations

import re

from connfix import InputError
from connfix.config.text import defang

_CONTROL = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)
_BARE_KEY = re.compile(r"[A-Za-z0-9_.*-]+")
_BARE_CONNSTR = re.compile(r"[^\s'\\=]+")


class Unrepresentable(InputError):
    """A name that a generated file cannot hold as what it is."""


def shown(text: str) -> str:
    """A name in a message or a comment: one line, control characters visible."""
    return (
        defang(text)
        .replace("\n", "\\n")
        .replace("\t", "\\t")
        .replace("\u2028", "<U+2028>")
        .replace("\u2029", "<U+2029>")
    )


def _plain(value: str, what: str, where: str) -> str:
    if _CONTROL.search(value):
        raise Unrepresentable(
            f"{what} '{shown(value)}' cannot be written into {where}: it holds a control"
            " character (a line break, ESC, …) that the file cannot represent; connfix"
            " writes nothing rather than a file that says something else"
        )
    return value


def ini_value(value: str, what: str) -> str:
    """A pgbouncer.ini value: the rest of a line, its ends trimmed by PgBouncer."""
    _plain(value, what, "pgbouncer.ini")
    if value != value.strip() or not value:
        raise Unrepresentable(
            f"{what} '{shown(value)}' cannot be written into pgbouncer.ini: PgBouncer trims"
            " a value's leading and trailing spaces"
        )
    return value


def ini_key(name: str, what: str) -> str:
    """A pgbouncer.ini key (a [databases] name): bare, or single-quoted."""
    _plain(name, what, "pgbouncer.ini")
    if _BARE_KEY.fullmatch(name):
        return name
    if "'" in name or not name:
        raise Unrepresentable(
            f"{what} '{shown(name)}' cannot be a pgbouncer.ini key: a quoted key cannot hold"
            " a single quote"
        )
    return f"'{name}'"


def ini_list(names: list[str], what: str) -> str:
    """A pgbouncer.ini list (admin_users, stats_users): split at spaces and commas."""
    for name in names:
        _plain(name, what, "pgbouncer.ini")
        if not name or re.search(r"[\s,]", name):
            raise Unrepresentable(
                f"{what} '{shown(name)}' cannot be written into pgbouncer.ini: PgBouncer"
                " splits this list at spaces and commas"
            )
    return ", ".join(names)


def connstr_value(value: str, what: str) -> str:
    """A value in a [databases] connection string: bare, or single-quoted."""
    _plain(value, what, "pgbouncer.ini")
    if _BARE_CONNSTR.fullmatch(value):
        return value
    return "'" + value.replace("'", "''") + "'"


def userlist_name(name: str, what: str = "role") -> str:
    """A userlist.txt field: double-quoted, `""` for a double quote."""
    _plain(name, what, "userlist.txt")
    return '"' + name.replace('"', '""') + '"'


def comment(text: str) -> str:
    """Text inside a comment (`;` or `--`): one line, control characters visible."""
    return shown(text)


def sql_ident(name: str) -> str:
    """An SQL identifier, double-quoted (PostgreSQL's quote_ident, always quoting)."""
    if "\x00" in name:
        raise Unrepresentable(f"identifier '{shown(name)}': SQL cannot hold a NUL")
    return '"' + name.replace('"', '""') + '"'
