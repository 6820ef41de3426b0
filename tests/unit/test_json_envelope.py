"""`--json` on every command: one envelope, checked against the schema connfix ships,
on real outputs; tables and progress go to stderr, stdout holds the JSON alone."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from connfix.cli import cli
from tests.helpers import envelope_of, schema, terminal_signals

EXAMPLE = str(Path(__file__).resolve().parents[2] / "inventory.example.yaml")
RUNBOOK = str(
    Path(__file__).resolve().parents[2] / "src/connfix/engine/runbooks/too-many-connections.yaml"
)


def test_the_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(schema())


def test_the_schema_rejects_what_it_should() -> None:
    good = {
        "schema": "connfix/1",
        "command": "report",
        "environment": None,
        "status": "ok",
        "exit_status": 0,
        "incident": "x",
        "result": {"report": "x/report.md", "journal": "x/journal.jsonl"},
    }
    jsonschema.validate(good, schema())
    for broken in (
        {**good, "exit_status": 7},
        {**good, "command": "reboot"},
        {**good, "result": {}},
        {**good, "status": "error", "result": {}},
        {k: v for k, v in good.items() if k != "incident"},
        {**good, "extra": 1},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema())


def test_runbook_validate_json(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: x\nsteps: []\n")
    result = CliRunner().invoke(cli, ["runbook", "validate", RUNBOOK, str(bad), "--json"])
    assert result.exit_code == 2
    data = envelope_of(result.stdout)
    assert data["status"] == "failed" and data["exit_status"] == 2
    files = data["result"]["files"]
    assert [f["ok"] for f in files] == [True, False] and "bad.yaml" in files[1]["error"]
    assert "invalid" in result.stderr  # the human words, on stderr


def test_an_error_is_an_envelope_too(tmp_path: Path) -> None:
    broken = tmp_path / "inventory.yaml"
    broken.write_text("version: 1\nenvironments: {prod: {database: {}}}\n")
    for args in (
        ["diagnose", "prod", "--json", "-i", str(broken)],
        ["triage", "prod", "--json", "-i", str(broken), "--incidents-dir", str(tmp_path)],
        ["inventory", "check", "prod", "--json", "-i", str(broken)],
        ["pool", "prod", "--json", "-i", str(broken)],
    ):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        data = envelope_of(result.stdout)
        assert data["status"] == "error" and data["exit_status"] == 2
        assert "inventory.yaml" in data["result"]["error"]
        assert data["command"] == " ".join(args[:2]) if args[0] == "inventory" else args[0]
        assert "connfix: error:" in result.stderr


def test_report_json_refuses_stdout_for_the_report(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["report", str(tmp_path), "-o", "-", "--json"])
    assert result.exit_code == 2 and "give -o PATH" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["diagnose", "lab", "--json", "--bogus"],
        ["diagnose", "--json"],  # neither ENVIRONMENT nor --dsn: a usage error in the command
        ["terminate", "prod", "--json", "--state", "sleeping"],
        ["inventory", "check", "--json", "--nope"],
        ["pool", "prod", "--json", "--listen-port", "many"],
    ],
)
def test_a_usage_error_with_json_is_one_envelope(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    data = envelope_of(result.stdout)
    assert data["status"] == "error" and data["exit_status"] == 2
    assert data["command"] == " ".join(a for a in args[:2] if a in ("inventory", "check")) or (
        data["command"] == args[0]
    )
    assert data["result"]["error"]


def test_a_run_that_ends_in_error_says_why_in_result_error() -> None:
    from connfix.cli.envelope import envelope

    data = envelope("triage", "error", 1, result={"message": "the journal could not be written"})
    assert data["result"]["error"] == "the journal could not be written"
    jsonschema.validate(data, schema())


def test_ctrl_c_during_diagnose_with_json_is_one_envelope(tmp_path: Path) -> None:
    """A server that accepts and never answers (loopback) keeps diagnose connecting;
    SIGINT then: stdout holds one envelope (status error, result.error: interrupted),
    exit 130."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "connfix",
                "diagnose",
                "--dsn",
                f"host=127.0.0.1 port={port} user=x dbname=x connect_timeout=30",
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=terminal_signals,
        )
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    data = envelope_of(out)
    assert data["status"] == "error" and data["exit_status"] == 130
    assert data["result"]["error"] == "interrupted (Ctrl-C)"
