"""Secrets, whichever way they arrive: one redaction boundary (connfix.config.redact) for every
error about a connection string, every secret keyword libpq has, the URI userinfo,
malformed or not — and the places that used to leak, end to end through the CLI."""

from __future__ import annotations

import dataclasses
import enum
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from connfix import DsnError
from connfix.cli import cli
from connfix.config import redact
from connfix.config.dsn import make_dsn, parse_dsn

# what libpq refuses, each quoting a piece of the string back (seen with libpq 15 and 17)
MALFORMED = [
    "postgresql://admin:{s}%zz@db.internal/app",  # invalid percent-encoded token: "…"
    "postgresql://admin:{s}@db.internal/app?sslpassword={s}%zz",
    "postgresql://admin:{s}@db.internal/app?oauth_client_secret={s}%zz",
    "postgresql://admin:{s}@[db.internal/app",  # quotes the whole string back
    "host=db.internal password='{s}",  # unterminated quoted string
    "host=db.internal sslpassword='{s}",
    "host=db.internal password={s} nosuchoption=1",
    "host=db.internal oauth_client_secret={s} nosuchoption=1",
]
secret = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters="%'\\@"),
    min_size=6,
    max_size=24,
)


def _own_words(template: str) -> str:
    """The message for a secret that cannot be confused with anything: libpq's and
    connfix's own words, which a drawn secret may happen to be part of ('invali')."""
    neutral = "QQQQQQQQ"
    try:
        parse_dsn(template.format(s=neutral))
    except DsnError as exc:
        return str(exc).replace(neutral, "")
    return ""


@settings(max_examples=300, deadline=None)
@given(secret=secret, template=st.sampled_from(MALFORMED))
def test_no_parser_error_about_a_dsn_carries_its_secret(secret: str, template: str) -> None:
    assume(secret not in _own_words(template))  # Hypothesis found 'invali' in "invalid"
    dsn = template.format(s=secret)
    try:
        parse_dsn(dsn)
    except DsnError as exc:
        assert secret not in str(exc), str(exc)
        assert dsn not in str(exc)


@pytest.mark.parametrize(
    "dsn",
    [
        "host=db password=hunter2hunter2",
        "host=db sslpassword=hunter2hunter2",
        "host=db oauth_client_secret=hunter2hunter2",
        "host=db sslpassword='hunter2 hunter2'",
        "postgresql://u:hunter2hunter2@db/app",
        "postgresql://u@db/app?sslpassword=hunter2hunter2",
        "postgresql://u@db/app?oauth_client_secret=hunter2hunter2",
    ],
)
def test_every_secret_keyword_is_a_secret(dsn: str, tmp_path: Path) -> None:
    """Refused in an inventory and on the command line alike; masked in any text."""
    assert redact.has_secret(dsn)
    assert "hunter2" not in redact.mask_secrets(f"connecting with {dsn} failed")
    result = CliRunner().invoke(cli, ["diagnose", "--dsn", dsn, "--json"])
    assert result.exit_code == 2 and "contains a secret" in result.output, result.output
    assert "hunter2" not in result.output


def test_a_bad_percent_escape_via_dsn_never_prints_the_password() -> None:
    """The exact example named by the last two reviews."""
    result = CliRunner().invoke(cli, ["diagnose", "--dsn", "postgresql://u:PW%zz@h/db"])
    assert result.exit_code == 2, result.output
    assert "PW%zz" not in result.output and "contains a secret" in result.output
    with pytest.raises(DsnError, match="invalid percent-encoded token") as caught:
        parse_dsn("postgresql://u:PW%zz@h/db")
    assert "PW" not in str(caught.value)


def test_an_admin_dsn_from_the_environment_never_prints_its_password(tmp_path: Path) -> None:
    """inventory check and triage with an admin DSN (from the environment) libpq
    refuses: a clear error, no traceback, no password in output, journal or report."""
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(
        "version: 1\nenvironments:\n  prod:\n    database:\n"
        '      dsn: "host=127.0.0.1 port=1 dbname=app user=connfix connect_timeout=1"\n'
        "      admin_dsn_env: CONNFIX_TEST_ADMIN_DSN\n"
        "    service: {unit: app.service, pool_size: 3}\n"
        "    hosts: [{name: web1, ssh_address: 127.0.0.1}]\n"
    )
    env = {**os.environ, "CONNFIX_TEST_ADMIN_DSN": "postgresql://a:Sw0rdfish%zz@127.0.0.1:1/x"}
    for args in (
        ["inventory", "check", "prod"],
        ["triage", "prod", "--yes", "--incidents-dir", str(tmp_path / "incidents")],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "connfix", *args, "-i", str(inventory)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        output = proc.stdout + proc.stderr
        assert "Sw0rdfish" not in output and "Traceback" not in output, output
        assert proc.returncode in (1, 2, 3), output
    for path in (tmp_path / "incidents").rglob("*"):
        if path.is_file():
            assert "Sw0rdfish" not in path.read_text()


def test_write_inventory_never_writes_a_secret() -> None:
    """The starter inventory keeps every connection keyword but the secret ones."""
    from connfix.diagnosis.analysis import analyse
    from connfix.diagnosis.zero_setup import starter_inventory
    from tests.builders import backend, env, info

    d = analyse("prod", env(), info(), [backend(1, "10.0.0.1")], [])
    for keyword in redact.SECRET_KEYWORDS:
        text = starter_inventory(
            d, f"host=db dbname=app user=x {keyword}=s3cr3tvalue sslmode=require", {}, "prod"
        )
        assert "s3cr3tvalue" not in text and keyword not in text
        assert "sslmode=require" in text


names = st.text(min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(
    app=names,
    user=names,
    # no DSN holds NUL, nor a lone surrogate (the CLI refuses a --dsn that is not UTF-8)
    options=st.text(
        st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=30
    ),
    ptr=st.text(min_size=1, max_size=40),
)
def test_write_inventory_output_is_read_back_by_inventory_check(
    app: str, user: str, options: str, ptr: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Whatever the sessions and the reverse DNS showed (names with spaces, quotes, line
    breaks; a DSN whose options hold spaces), the starter inventory is one that
    `inventory check`'s own reader accepts — or connfix says why it cannot write one."""
    import dataclasses

    from connfix import InputError
    from connfix.config.inventory_file import load_inventory
    from connfix.diagnosis.analysis import analyse
    from connfix.diagnosis.zero_setup import starter_inventory
    from tests.builders import backend, env, info

    row = dataclasses.replace(backend(1, "10.0.0.1"), application_name=app, usename=user)
    d = analyse("prod", env(), info(), [row], [])
    dsn = make_dsn({"host": "db", "dbname": "app", **({"options": options} if options else {})})
    try:
        text = starter_inventory(d, dsn, {"10.0.0.1": ptr}, "prod")
    except InputError:
        return
    path = tmp_path_factory.mktemp("inv") / "inventory.yaml"
    path.write_text(text)
    load_inventory(path).environment("prod")


# --- never a traceback ------------------------------------------------------------------


def test_deeply_nested_yaml_and_journals_are_clear_errors(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("version: 1\nenvironments: " + "[" * 20000 + "]" * 20000 + "\n")
    runbook = tmp_path / "runbook.yaml"
    runbook.write_text("steps: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n")
    incident = tmp_path / "incident"
    incident.mkdir()
    (incident / "journal.jsonl").write_text(
        '{"event": "run_start", "ts": "2026-01-01T00:00:00Z", "environment": "x"}\n'
        '{"event": "diagnosis", "ts": "2026-01-01T00:00:00Z", "x": '
        + "[" * 100_000
        + "]" * 100_000
        + "}\n"
    )
    for args, expected in (
        (["inventory", "check", "prod", "-i", str(inventory)], "YAML nested too deeply"),
        (["runbook", "validate", str(runbook)], "YAML nested too deeply"),
        (["report", str(incident)], "line 2 is nested too deeply"),
        (
            ["restart", "x", "--resume", str(incident), "-i", str(inventory)],
            "YAML nested too deeply",
        ),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "connfix", *args], capture_output=True, text=True, check=False
        )
        output = proc.stdout + proc.stderr
        assert proc.returncode == 2 and expected in output, output
        assert "Traceback" not in output


def test_resume_of_a_journal_with_a_host_done_and_no_host_is_a_clear_error(
    tmp_path: Path,
) -> None:
    from connfix import InputError
    from connfix.record.events import Event
    from connfix.record.journal import Journal, Redactor, resume_state

    journal = Journal(tmp_path, Redactor())
    journal.record(Event.RUN_START, environment="prod")
    journal.record(Event.HOST_DONE, ok=True)
    journal.close()
    with pytest.raises(InputError, match="a host done without a host name"):
        resume_state(tmp_path, "prod")


def test_a_reverse_dns_name_that_is_not_utf8_is_no_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lab's resolver cannot serve a PTR record that is not UTF-8; the C library can
    (Python raises UnicodeDecodeError): the address is shown without a name."""
    import socket

    from connfix.diagnosis import zero_setup

    def not_utf8(addr: str) -> tuple[str, list[str], list[str]]:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    monkeypatch.setattr(socket, "gethostbyaddr", not_utf8)
    zero_setup._RESOLVED.clear()
    assert zero_setup.resolve(["192.0.2.7"]) == {}


def _four_substitutions(text: str) -> str:
    """mask_secrets as it was before its pre-filter: the reference it must equal."""
    text = redact._SECRET_KV.sub(r"\1***", text)
    text = redact._SECRET_QUERY.sub(r"\1***", text)
    text = redact._PASSWORD_URI.sub(r"\1***\3", text)
    return redact._PASSWORD_SQL.sub(r"\1'***'", text)


_NEAR = "password=PASSWORD oauth_client_secret sslpassword ?&:/@'$ \u017f\u0131\u0130\u212a"
_WORDS = [
    "://", "password", "PaSsWoRd ", "pa\u017f\u017fword=", "oauth_client_secret=",
    "OAUTH_CLIENT_SECRET = ", "sslpassword='", "?password=", "postgresql://u:p@h",
]  # fmt: skip


@settings(max_examples=3000, deadline=None)
@given(
    st.lists(
        st.one_of(st.sampled_from(list(_NEAR) + _WORDS), st.text()),
        max_size=12,
    ).map("".join)
)
def test_the_pre_filter_never_changes_what_is_masked(text: str) -> None:
    """The cheap checks before the four patterns (a "w", a "_", "://", then one search)
    skip only strings none of the patterns could match: Unicode's case folding
    included (the long s, the dotless i, the dotted capital I, the Kelvin sign)."""
    assert redact.mask_secrets(text) == _four_substitutions(text)


def _three_passes(entry: dict[str, object], redactor: object) -> str:
    """A journal line as it was written before the one-pass conversion: json.dumps with
    _plain, json.loads, Redactor.value, json.dumps (the reference it must equal)."""
    import json

    from connfix.record import journal

    plain = json.loads(json.dumps(entry, default=journal._plain, ensure_ascii=False))
    return json.dumps(redactor.value(plain), ensure_ascii=False)  # type: ignore[attr-defined]


@dataclasses.dataclass(frozen=True)
class _Inner:
    name: str
    when: datetime
    tags: frozenset[str]


class _Colour(enum.StrEnum):
    RED = "red"


class _Old(str, enum.Enum):  # noqa: UP042 (the mixin on purpose: str() gives its name, JSON its text)
    ONE = "one password=x"


class _Level(enum.IntEnum):
    HIGH = 3


class _Opaque:  # no JSON form: written as its str()
    def __str__(self) -> str:
        return "opaque password=hunter2"


_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
    st.sampled_from([float("inf"), -float("inf")]),
    st.text(), st.sampled_from([*_WORDS, "s3cretpassw0rd", "x s3cretpassw0rd y"]),
    st.sampled_from([_Colour.RED, _Old.ONE, _Level.HIGH, Path("/a/b")]),
    st.builds(_Opaque),
    st.datetimes(timezones=st.just(UTC)),
    st.builds(_Inner, st.text(), st.datetimes(timezones=st.just(UTC)),
              st.frozensets(st.text(max_size=5), max_size=3)),
    st.sets(st.integers(), max_size=4),
)  # fmt: skip
_KEYS = st.one_of(  # enum keys are fixed in the test (one equal to "red" would collide)
    st.text(), st.integers(), st.booleans(), st.none(), st.floats(allow_nan=False),
)  # fmt: skip
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(_KEYS, inner, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=1500, deadline=None)
@given(st.dictionaries(st.text(), _VALUES, max_size=6))
def test_a_journal_line_is_what_the_three_passes_wrote(fields: dict[str, object]) -> None:
    """The journal converts and redacts an event in one pass over it: its line is the
    one json.dumps → json.loads → Redactor.value → json.dumps wrote, byte for byte
    (keys of every JSON kind, str-mixin enums, dataclasses, datetimes, sets, paths,
    secrets inside text), and the entry it returns is that line read back."""
    import json

    from connfix.record import journal

    redactor = journal.Redactor(["s3cretpassw0rd", "lab"])
    entry = {"ts": "2026-12-05T00:00:00.000Z", "seq": 1, "event": "operation", **fields}
    entry["enum_keys"] = {_Colour.RED: 1, _Old.ONE: [_Old.ONE], _Level.HIGH: _Level.HIGH}
    expected = _three_passes(entry, redactor)
    plain = journal._redacted_plain(entry, redactor)
    assert json.dumps(plain, ensure_ascii=False) == expected
    assert plain == json.loads(expected)


def test_a_redactor_remembers_a_bounded_number_of_short_strings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from connfix.record import journal

    redactor = journal.Redactor(["s3cretpassw0rd"])
    for _ in range(2):  # the same answer from memory
        assert redactor("x s3cretpassw0rd password=hunter2") == "x *** password=***"
    assert list(redactor._done) == ["x s3cretpassw0rd password=hunter2"]
    assert redactor("s3cretpassw0rd" * 20) == "***" * 20  # too long to remember
    assert len(redactor._done) == 1
    monkeypatch.setattr(journal, "MEMO_ENTRIES", 3)
    for text in ("a", "b", "c", "d"):
        redactor(text)
    assert list(redactor._done) == ["c", "d"]  # full at "c": forgotten, then remembered
    assert journal.Redactor(["other-secret"])("x s3cretpassw0rd") == "x s3cretpassw0rd"
