"""Secrets in text: the one boundary every message about a connection string, and every
journal line, goes through.

libpq's connection strings carry secrets under several keywords (libpq's documentation,
"Parameter Key Words": `password`, `sslpassword`, and from PostgreSQL 18
`oauth_client_secret`) and in a URI's userinfo (`postgresql://user:secret@host`). Parsers
quote pieces of what they could not parse — libpq's "invalid percent-encoded token:
"PW%zz"" is the password itself — so an error about a DSN is redacted with the secrets
found in that DSN by a tolerant reading of our own, malformed or not, before it goes
anywhere; and anything shaped like a secret is masked whatever its value."""

from __future__ import annotations

import re
from urllib.parse import unquote

# libpq keywords whose value is a secret (paths to key files are not)
SECRET_KEYWORDS = ("password", "sslpassword", "oauth_client_secret")
_KEYWORDS = "|".join(SECRET_KEYWORDS)
_SECRET_KV = re.compile(rf"(\b(?:{_KEYWORDS})\s*=\s*)('(?:[^'\\]|\\.)*'?|\S+)", re.IGNORECASE)
# key=value secrets inside a URI's query string: ?password=…&…
_SECRET_QUERY = re.compile(rf"([?&](?:{_KEYWORDS})=)([^&\s#]*)", re.IGNORECASE)
_PASSWORD_URI = re.compile(r"(://[^:/@\s]*:)([^@\s]+)(@)")
# another session's query text: ALTER ROLE … [ENCRYPTED] PASSWORD '…', CREATE USER … too
_PASSWORD_SQL = re.compile(r"(\bpassword\s+)('(?:[^']|'')*'?|\$[^$]*\$[^$]*)", re.IGNORECASE)
_URI = re.compile(r"^\s*postgres(?:ql)?://(?P<userinfo>[^@/]*)@", re.IGNORECASE)
_KV_VALUE = re.compile(rf"\b(?:{_KEYWORDS})\s*=\s*('(?:[^'\\]|\\.)*'?|\S+)", re.IGNORECASE)


# what each pattern above needs somewhere in the text, matched the same way (the same
# engine, the same case folding): most journal strings hold none, and one search costs
# a fraction of the four substitutions. Before it, plainer still: every keyword holds a
# "w" (password; only "w" and "W" fold to it) or a "_" (oauth_client_secret).
_ANY_SECRET = re.compile(rf"{_KEYWORDS}|password|://", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """Mask whatever is shaped like a secret: `password=…` (and every other secret
    keyword), a URI's `user:pass@` and `?password=…`, and SQL's `PASSWORD '…'`."""
    if "w" not in text and "W" not in text and "_" not in text and "://" not in text:
        return text
    if not _ANY_SECRET.search(text):
        return text
    text = _SECRET_KV.sub(r"\1***", text)
    text = _SECRET_QUERY.sub(r"\1***", text)
    text = _PASSWORD_URI.sub(r"\1***\3", text)
    return _PASSWORD_SQL.sub(r"\1'***'", text)


def dsn_secrets(dsn: str) -> list[str]:
    """The secret values in a connection string, read tolerantly (a string libpq would
    refuse still has its secrets found): each secret keyword's value, quoted or not, the
    URI's userinfo password, raw and percent-decoded, and a query string's secrets."""
    found: list[str] = []
    match = _URI.match(dsn)
    if match:
        userinfo = match.group("userinfo")
        if ":" in userinfo:
            raw = userinfo.split(":", 1)[1]
            found += [raw, _decoded(raw)]
        for m in _SECRET_QUERY.finditer(dsn):
            found += [m.group(2), _decoded(m.group(2))]
    for m in _KV_VALUE.finditer(dsn):
        value = m.group(1)
        found.append(value)
        if value.startswith("'"):
            found.append(value.strip("'").replace("\\'", "'").replace("\\\\", "\\"))
    return sorted({s for s in found if s}, key=len, reverse=True)


def _decoded(text: str) -> str:
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        return text


def redact_with(text: str, secrets: list[str]) -> str:
    """Replace every occurrence of these secrets, then mask what looks like one."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return mask_secrets(text)


def dsn_error(message: str, dsn: str) -> str:
    """An error message about `dsn` (libpq's, psycopg's, connfix's), made safe to show,
    journal or send: the DSN's secrets and the DSN itself never appear in it."""
    secrets = dsn_secrets(dsn)
    return redact_with(message.replace(dsn, redact_with(dsn, secrets)), secrets)


def has_secret(dsn: str) -> bool:
    """Whether a connection string carries a secret (any secret keyword, a URI password)."""
    return bool(dsn_secrets(dsn))
