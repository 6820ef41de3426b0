"""`diagnose --watch` driven under a real pseudo-terminal (pexpect), on the lab."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pexpect
from click.testing import CliRunner

from connfix.cli import cli
from tests.helpers import Lab, terminal_signals


@contextmanager
def watching(lab: Lab, *extra: str) -> Iterator[Any]:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "connfix", "diagnose", "lab", "-i", str(lab.inventory), "--watch", "0.5s", *extra],
        encoding="utf-8",
        timeout=30,
        dimensions=(50, 160),
        env={**os.environ, "COLUMNS": "160", "TERM": "xterm"},
        preexec_fn=terminal_signals,
    )
    try:
        yield child
    finally:
        if child.isalive():
            child.terminate(force=True)


def test_it_refreshes_in_place_shows_the_trend_sorts_and_quits(clean_lab: Lab) -> None:
    with watching(clean_lab) as child:
        child.expect("refresh 1")
        child.expect("refresh 2")
        clean_lab.core.leak("app2", 3, idle_in_transaction=True)
        child.expect(r"app2\s+│\s+6\s+│\s+3\s+│\s+3\s+│\s+0\s+│\s+\+3")  # the leak, as a trend
        child.expect("sessions in a transaction, by age")
        child.send("h")
        child.expect("now by host")
        child.expect("sessions in a transaction, by host")
        child.send("q")
        child.expect(pexpect.EOF)
        child.close()
    assert child.exitstatus == 0


def test_ctrl_c_quits_cleanly(clean_lab: Lab) -> None:
    with watching(clean_lab) as child:
        child.expect("refresh 2")
        child.sendintr()
        child.expect(pexpect.EOF)
        child.close()
    assert child.exitstatus == 0 and "Traceback" not in (child.before or "")


def test_on_a_full_server_it_watches_through_the_way_in(full_server: list[Any], lab: Lab) -> None:
    with watching(lab) as child:
        child.expect(f"watching through the {lab.way_in} connection")
        child.expect("refresh 2")  # one session, kept: it refreshes on a full server
        child.send("q")
        child.expect(pexpect.EOF)


def test_it_needs_a_terminal_and_is_not_json(lab: Lab) -> None:
    piped = CliRunner().invoke(cli, ["diagnose", "lab", "-i", str(lab.inventory), "--watch"])
    assert piped.exit_code == 2 and "--watch needs a terminal" in piped.output
    both = CliRunner().invoke(
        cli, ["diagnose", "lab", "-i", str(lab.inventory), "--watch", "1s", "--json"]
    )
    assert both.exit_code == 2 and "not with --json" in both.output
