"""Hostile and broken input: each gets a clear message and exit status 2, nothing runs;
and a property test that the loaders never fail with anything but their own errors."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connfix import InventoryError, RunbookError
from connfix.cli import cli
from connfix.config.inventory_file import load_inventory
from connfix.engine.runbook import parse_runbook
from tests.builders import GOOD

EXAMPLE = str(Path(__file__).resolve().parents[2] / "inventory.example.yaml")

BAD_INVENTORIES = [
    (
        "shell metacharacters in a host name",
        GOOD.replace("name: web1", "name: 'web1; reboot'"),
        "not a host name",
    ),
    (
        "shell metacharacters in an ssh address",
        GOOD.replace("ssh_address: 10.0.0.11", "ssh_address: '$(reboot)'"),
        "not an IP address or host name",
    ),
    (
        "unit name starting with a dash",
        GOOD.replace("unit: webapp.service", "unit: --now"),
        "not a systemd unit name",
    ),
    ("deeply nested YAML", "a: " + "[" * 60 + "]" * 60 + "\n", "nested deeper than 32"),
    ("huge YAML", "x: '" + "a" * 1_100_000 + "'\n", "larger than 1000 kB"),
    (
        "YAML tag that constructs an object",
        "environments: !!python/object/new:os.system [echo]\n",
        "not allowed",
    ),
    ("merge key", "base: &b {unit: x}\nenvironments:\n  <<: *b\n", "merge keys"),
    (
        "restart command that cannot be parsed",
        GOOD.replace(
            "      pool_size: 20", '      pool_size: 20\n      restart_command: "sudo \'x"'
        ),
        "cannot be parsed",
    ),
    (
        "health timeout out of range",
        GOOD.replace("      pool_size: 20", "      pool_size: 20\n      health_timeout: 9d"),
        "out of range",
    ),
    (
        "negative pool size",
        GOOD.replace("pool_size: 20", "pool_size: -3"),
        "greater than or equal to 1",
    ),
    (
        "thresholds above 1",
        GOOD + "    thresholds:\n      critical: 1.5\n",
        "less than or equal to 1",
    ),
    ("port out of range", GOOD + "    ssh:\n      port: 70000\n", "less than or equal to 65535"),
    ("not UTF-8", None, "not UTF-8"),
]


@pytest.mark.parametrize(
    ("text", "fragment"), [b[1:] for b in BAD_INVENTORIES], ids=[b[0] for b in BAD_INVENTORIES]
)
def test_hostile_inventories(tmp_path: Path, text: str | None, fragment: str) -> None:
    path = tmp_path / "inventory.yaml"
    if text is None:
        path.write_bytes(b"environments:\n  prod: \xff\xfe\n")
    else:
        path.write_text(text)
    result = CliRunner().invoke(cli, ["inventory", "check", "prod", "-i", str(path)])
    assert result.exit_code == 2, result.output
    assert fragment in result.output, result.output
    assert str(path) in result.output and "Traceback" not in result.output


BAD_FLAGS = [
    (
        ["terminate", "prod", "--older-than", "soon"],
        "Invalid value for '--older-than': not a duration",
    ),
    (
        ["terminate", "prod", "--older-than", "30d"],
        "Invalid value for '--older-than': duration '30d' is out of",
    ),
    (["terminate", "prod", "--max", "0"], "--max: Input should be greater than or equal to 1"),
    (["terminate", "prod", "--max-fraction", "2"], "--max-fraction: Input should be less"),
    (["terminate", "prod", "--state", "sleeping"], "Invalid value for '--state'"),
    (["terminate", "prod", "--state", "active"], "--include-active"),
    (["terminate", "prod", "--host", "nosuch"], "no host nosuch in environment 'prod'"),
    (["restart", "prod", "--hosts", "web1,nosuch"], "no host nosuch in environment 'prod'"),
    (["restart", "prod", "--batch", "0"], "--batch: Input should be greater than or equal"),
    (["restart", "prod", "--pause", "-1s"], "Invalid value for '--pause': not a duration"),
    (["lab", "up", "--app-traffic", "often"], "Invalid value for '--app-traffic': not a duration"),
    (["lab", "up", "--app-traffic", "20ms"], "--app-traffic must be 0 (none) or between"),
    (["restart", "prod", "--resume", "/nonexistent/incident"], "no journal there"),
    (["triage", "prod", "--runbook", "Not A Name!"], "neither a runbook name nor a path"),
    (["triage", "prod", "--frobnicate"], "No such option '--frobnicate'"),
    (["diagnose"], "give ENVIRONMENT (from the inventory), or --dsn DSN"),
    (["lab", "up", "--app-boot", "forever"], "Invalid value for '--app-boot': not a duration"),
    (["lab", "up", "--pgbouncer", "--pgbouncer-hosts", "1"], "not both"),
    (["lab", "up", "--hosts", "3", "--pgbouncer-hosts", "5"], "--pgbouncer-hosts must be between"),
    (["lab", "up", "--pgbouncer-hosts", "-1"], "Invalid value for '--pgbouncer-hosts'"),
    (["lab", "up", "--pgbouncer-version", "1.25"], "--pgbouncer-version needs a PgBouncer"),
    (["lab", "up", "--pgbouncer", "--pgbouncer-version", "1.9"], "'1.9' is not one of"),
    (["lab", "traffic", "app1", "often"], "Invalid value for 'EVERY': not a duration"),
    (["pool", "prod", "--direct", "nosuch", "-i", EXAMPLE], "--direct: no host nosuch"),
    (["pool", "prod", "--pgbouncer-version", "new", "-i", EXAMPLE], "not a version"),
    (["pool", "prod", "--auth", "trust", "-i", EXAMPLE], "Invalid value for '--auth'"),
]


@pytest.mark.parametrize(
    ("args", "fragment"),
    BAD_FLAGS,
    ids=[" ".join(getattr(f, "values", f)[0]) for f in BAD_FLAGS],
)
def test_bad_flags(tmp_path: Path, args: list[str], fragment: str) -> None:
    needs_inventory = args[0] in ("terminate", "restart", "triage") and "--frobnicate" not in args
    extra = (
        ["-i", EXAMPLE, "--incidents-dir", str(tmp_path / "incidents")] if needs_inventory else []
    )
    result = CliRunner().invoke(cli, [*args, *extra])
    assert result.exit_code == 2, result.output
    assert fragment in result.output, result.output
    assert not (tmp_path / "incidents").exists()  # nothing ran


def test_sql_metacharacters_in_protected_names_are_plain_names(tmp_path: Path) -> None:
    text = GOOD + (
        "    protected:\n      users: [\"o'brien\", 'x\"; DROP ROLE app; --']\n"
        '      applications: ["app\'); SELECT pg_terminate_backend(1); --"]\n'
    )
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    env = load_inventory(path).environment("prod")
    assert env.protected.users == ["o'brien", 'x"; DROP ROLE app; --']
    assert env.protected.applications == ["app'); SELECT pg_terminate_backend(1); --"]


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(string.printable, max_size=20),
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "environments",
                    "prod",
                    "database",
                    "dsn",
                    "service",
                    "unit",
                    "pool_size",
                    "hosts",
                    "name",
                    "ssh_address",
                    "steps",
                    "id",
                    "action",
                    "params",
                    "healthy",
                    "summary",
                    "version",
                    "when",
                    "duration",
                    "x",
                ]
            ),
            children,
            max_size=5,
        ),
    ),
    max_leaves=25,
)


# hypothesis 6.170 sometimes says this extend "doesn't use it's argument" (it does:
# lists and dictionaries of `children`); seen once in a full run, never alone
@pytest.mark.filterwarnings("ignore:extend=.*doesn't use it's argument")
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=DOCUMENTS)
def test_loaders_raise_only_their_own_errors_on_any_structure(document: Any) -> None:
    text = yaml.safe_dump(document)
    _only_documented_errors(text)


@settings(max_examples=250, deadline=None)
@given(text=st.text(max_size=300))
def test_loaders_raise_only_their_own_errors_on_any_text(text: str) -> None:
    _only_documented_errors(text)


def _only_documented_errors(text: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            loaded = load_inventory(path)
            for name in loaded.inventory.environments:
                loaded.environment(name)
        except InventoryError as exc:
            assert str(exc).startswith(str(path))
        try:
            parse_runbook(text, path)
        except RunbookError as exc:
            assert str(exc).startswith(str(path))


def test_a_pgbouncer_version_whose_sources_are_absent_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clone without the vendor folder: the lab says where it looked and what to set
    (the PgBouncer tests skip with this sentence); nothing is built."""
    from connfix.lab import pgbouncer as lab_bouncer

    monkeypatch.setenv("CONNFIX_VENDOR_DIR", str(tmp_path / "vendor"))
    monkeypatch.setenv("CONNFIX_CACHE_DIR", str(tmp_path / "cache"))
    why = lab_bouncer.unavailable("1.25")
    assert why and "PgBouncer 1.25.2 is built from its release sources" in why
    assert f"{tmp_path / 'vendor'}/pgbouncer-1.25.2-src.tar.gz is not here" in why
    assert "set CONNFIX_VENDOR_DIR" in why
    assert "must be one of 1.18, 1.24, 1.25" in str(lab_bouncer.unavailable("2.0"))
    assert not (tmp_path / "cache").exists()


def test_a_tarball_that_is_not_the_release_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connfix import LabError
    from connfix.lab import pgbouncer as lab_bouncer

    vendor = tmp_path / "vendor"
    vendor.mkdir()
    (vendor / "pgbouncer-1.24.1-src.tar.gz").write_bytes(b"not the release")
    monkeypatch.setenv("CONNFIX_VENDOR_DIR", str(vendor))
    monkeypatch.setenv("CONNFIX_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(LabError, match=r"sha256 .*, expected 348beeff"):
        lab_bouncer.binary("1.24")
    assert not (tmp_path / "cache" / "pgbouncer-1.24.1").exists()
