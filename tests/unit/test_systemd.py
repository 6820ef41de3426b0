"""connfix.hosts.systemd and the sudo permission probe, without a lab (the lab tests run them
against real systemd and real sudo: tests/lab/test_systemd_units.py)."""

from __future__ import annotations

import pytest

from connfix.actions.restart.preflight import permission_probe
from connfix.hosts.systemd import UnitState, is_pattern, parse_list_units, parse_show, usec


def test_parse_show_is_by_name_whatever_the_order() -> None:
    (first, second) = parse_show("MainPID=12\nLoadState=loaded\nId=a.service\n\nId=b.service\n")
    assert first == {"MainPID": "12", "LoadState": "loaded", "Id": "a.service"}
    assert second == {"Id": "b.service"}
    assert UnitState.from_show(first).main_pid == 12


def test_a_value_with_equals_signs_is_kept_whole() -> None:
    (props,) = parse_show("ExecStart={ path=/bin/sh ; argv[]=/bin/sh -c a=b }\n")
    assert props["ExecStart"] == "{ path=/bin/sh ; argv[]=/bin/sh -c a=b }"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1min 30s", 90.0), ("30s", 30.0), ("500ms", 0.5), ("infinity", None), ("", None)],
)
def test_usec_reads_systemd_time_spans(text: str, seconds: float | None) -> None:
    assert usec(text) == seconds


def test_started_since_compares_invocations_not_pids() -> None:
    old = UnitState.from_show({"Id": "a", "MainPID": "7", "InvocationID": "x"})
    same_pid = UnitState.from_show({"Id": "a", "MainPID": "7", "InvocationID": "y"})
    reused = UnitState.from_show({"Id": "a", "MainPID": "9", "InvocationID": "x"})
    assert same_pid.started_since(old)  # a pid reused by the new invocation
    assert not reused.started_since(old)  # a new pid, same invocation (a reexec)


def test_patterns_and_list_units() -> None:
    assert is_pattern("app@*.service") and not is_pattern("app@1.service")
    assert parse_list_units("a@1.service loaded active running x\n● b.service loaded failed") == [
        "a@1.service",
        "b.service",
    ]


@pytest.mark.parametrize(
    ("command", "probe"),
    [
        ("sudo -n systemctl restart a", "sudo -n -l -- systemctl restart a"),
        ("sudo -n -u app systemctl restart a", "sudo -n -l -u app -- systemctl restart a"),
        ("sudo --user=app -E systemctl restart a", "sudo -n -l -u app -- systemctl restart a"),
        ("sudo -nuapp systemctl restart a", "sudo -n -l -u app -- systemctl restart a"),
        ("sudo -g ops -C 3 -n cmd x", "sudo -n -l -g ops -- cmd x"),
        ("sudo --user app --chdir /srv cmd", "sudo -n -l -u app -- cmd"),
        ("sudo -n -- systemctl restart a", "sudo -n -l -- systemctl restart a"),
        ("systemctl restart a", "command -v systemctl"),
    ],
)
def test_permission_probe_keeps_the_target_user_and_skips_option_arguments(
    command: str, probe: str
) -> None:
    assert permission_probe(command) == probe
