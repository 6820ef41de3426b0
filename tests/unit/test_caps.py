"""Caps bind effects, not action names; and min_interval is kept where every runner
sees it. The per-run host cap on real hosts: tests/lab/test_restart.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from connfix.config.inventory import AlertCaps
from connfix.config.records import Invalid
from connfix.engine.runbook import parse_runbook
from connfix.record.events import Event
from connfix.record.journal import Journal, Redactor, last_change
from connfix.serve import _within_caps

BOOK = """\
version: 1
name: effects
summary: every kind of effect
healthy: "false"
steps:
  - {id: diagnose, action: diagnose}
  - {id: cancel-queries, action: cancel, params: {older_than: 1m}}
  - {id: cancel-but-terminate, action: cancel,
     params: {signal: terminate, states: [idle], older_than: 1m}}
  - {id: end-idle, action: terminate, params: {states: [idle], older_than: 1m}}
  - {id: roll, action: rolling_restart}
  - {id: kill, action: pgbouncer_kill_clients}
  - {id: verify, action: verify}
"""


def kept(actions: list[str]) -> list[str]:
    book = parse_runbook(BOOK, Path("effects.yaml"))
    return [s.id for s in _within_caps(book, AlertCaps(actions=actions).effects()).steps]


def test_a_cancel_step_that_terminates_needs_the_right_to_end_sessions() -> None:
    assert kept(["diagnose", "cancel"]) == ["diagnose", "cancel-queries", "verify"]
    assert kept(["cancel_queries"]) == ["diagnose", "cancel-queries", "verify"]
    assert kept(["end_sessions"]) == ["diagnose", "cancel-but-terminate", "end-idle", "verify"]
    assert kept(["terminate"]) == [
        "diagnose", "cancel-queries", "cancel-but-terminate", "end-idle", "verify"
    ]  # fmt: skip
    assert kept(["restart_hosts", "kill_pooler_clients"]) == ["diagnose", "roll", "kill", "verify"]
    book = parse_runbook(BOOK, Path("effects.yaml"))
    left = _within_caps(book, AlertCaps(actions=["cancel"]).effects()).summary
    assert "cancel-but-terminate (end_sessions)" in left


def test_an_unknown_cap_is_refused_naming_what_exists() -> None:
    with pytest.raises(Invalid, match="unknown 'restart'"):
        AlertCaps.validate({"actions": ["restart"]})


def test_the_last_change_is_read_from_the_journals(tmp_path: Path) -> None:
    """A dry run changes nothing; a run that ended a session did, whoever ran it."""
    assert last_change(tmp_path, "prod") is None
    dry = tmp_path / "20261204T010000Z-prod"
    dry.mkdir()
    journal = Journal(dry, Redactor())
    journal.record(Event.RUN_START, environment="prod", flags={"dry_run": True})
    journal.record(Event.RUN_END, status="dry_run")
    journal.close()
    assert last_change(tmp_path, "prod") is None
    real = tmp_path / "20261204T020000Z-prod"
    real.mkdir()
    journal = Journal(real, Redactor())
    journal.record(Event.RUN_START, environment="prod", flags={"dry_run": False})
    journal.record(Event.OPERATION, pid=42, result="terminated")
    journal.close()
    when = last_change(tmp_path, "prod")
    assert when is not None and abs(time.time() - when) < 60
    assert last_change(tmp_path, "staging") is None  # another environment's


def auto_inventory(tmp_path: Path) -> Path:
    """An inventory whose database refuses at once, under an auto policy (30m apart)."""
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(
        "version: 1\nenvironments:\n  prod:\n    database:\n"
        '      dsn: "host=127.0.0.1 port=1 dbname=app user=connfix connect_timeout=1"\n'
        "    service: {unit: app.service, pool_size: 3}\n"
        "    hosts: [{name: web1, ssh_address: 127.0.0.1}]\n"
        "    alerts: {mode: auto, caps: {min_interval: 30m}}\n"
    )
    return inventory


def test_min_interval_survives_a_restart_of_serve_and_counts_cli_runs(tmp_path: Path) -> None:
    """A new Server (serve restarted) finds the change an operator's `--yes` run
    journaled a minute ago in the shared incidents directory: an auto alert is run as a
    dry run instead."""
    from connfix.config.inventory_file import load_inventory
    from connfix.serve import Server

    inventory = auto_inventory(tmp_path)
    incidents = tmp_path / "incidents"
    earlier = incidents / "20261204T020000Z-prod"
    earlier.mkdir(parents=True)
    journal = Journal(earlier, Redactor())
    journal.record(Event.RUN_START, environment="prod", flags={"dry_run": False, "yes": True})
    journal.record(Event.HOST_START, host="web1")
    journal.close()
    server = Server(load_inventory(inventory), str(incidents), "token", None)
    decision = server.start("prod", "PostgresTooManyConnections", "am:x@1")
    for thread in server.threads:
        thread.join(30)
    assert decision.action == "started" and decision.mode == "dry-run", decision
    assert "min_interval" in decision.reason


def test_replicas_on_one_incidents_directory_share_duplicates_and_min_interval(
    tmp_path: Path,
) -> None:
    """Two Servers (two serve replicas) on one incidents directory: the alert one
    started is a duplicate at the other, and the other's next alert within min_interval
    of the first's change-making run is a dry run — though that run changed nothing yet
    (its database refuses): the replicas share what they started, not only journals."""
    from connfix.config.inventory_file import load_inventory
    from connfix.serve import Server

    inventory = auto_inventory(tmp_path)
    incidents = str(tmp_path / "incidents")
    one, two = (Server(load_inventory(inventory), incidents, "token", None) for _ in range(2))
    first = one.start("prod", "PostgresTooManyConnections", "am:x@1")
    assert (first.action, first.mode) == ("started", "auto")
    for thread in one.threads:
        thread.join(30)
    again = two.start("prod", "PostgresTooManyConnections", "am:x@1")
    assert again.action == "duplicate", again
    other = two.start("prod", "PostgresConnectionsHigh", "am:y@1")
    for thread in two.threads:
        thread.join(30)
    assert (other.action, other.mode) == ("started", "dry-run"), other
    assert "min_interval" in other.reason


def test_the_effects_table_names_every_action_and_what_each_may_do() -> None:
    from connfix.actions import ACTIONS
    from connfix.config.effects import ACTION_EFFECTS, EFFECTS

    assert set(ACTION_EFFECTS) == set(ACTIONS)
    for name, action in ACTIONS.items():
        assert action.effect_name is None or action.effect_name in ACTION_EFFECTS[name]
        assert ACTION_EFFECTS[name] <= set(EFFECTS)
        assert bool(ACTION_EFFECTS[name]) is action.mutating, name
