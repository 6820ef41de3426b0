"""The restart gates, one host's restart and the roll, on a scripted SSH layer (no root,
no lab). Each behaviour here is also proven on real systemd hosts by the lab tests named
in the docstrings (tests/lab/test_restart.py, tests/lab/test_systemd_units.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from connfix.actions.restart import gates
from connfix.actions.restart.host import GateTimeouts, HostOutcome, restart_host
from connfix.actions.restart.preflight import Preflight
from connfix.actions.restart.roll import batches, roll
from connfix.db.pg import BackendId
from connfix.hosts import remote
from connfix.hosts.systemd import UnitState, parse_show
from tests.fakes import Expect, FakeRun, ScriptedRemote, environment, show

RESTART = "sudo -n systemctl restart app.service"
SHOW = "systemctl show"
HEALTH = "curl -fsS"
FAST = GateTimeouts(active=0.3, health=0.3, database=0.3, settle=0.05)


def unit(**kw: Any) -> UnitState:
    (props,) = parse_show(show(**kw))
    return UnitState.from_show(props)


def backend(pid: int) -> BackendId:
    return BackendId(pid, datetime(2026, 1, 1, tzinfo=UTC))


def check_of(conn: ScriptedRemote, host: str = "app1", **kw: Any) -> Preflight:
    """A preflight that passed, with the host's scripted connection and unit state."""
    return Preflight(host, ok=True, reachable=True, units=[unit(**kw)], remote=conn)  # type: ignore[arg-type]


def healthy_host(host: str = "app1") -> list[Expect]:
    """The script of a host whose restart passes every gate."""
    return [
        Expect(RESTART),
        Expect(SHOW, show(invocation="new", pid=200)),
        Expect(HEALTH),
        Expect(SHOW, show(invocation="new", pid=200)),  # still active
    ]


def run_host(
    conn: ScriptedRemote, run: FakeRun, timeouts: GateTimeouts = FAST, **kw: Any
) -> HostOutcome:
    host = run.env.hosts[0]
    return restart_host(run, host, check_of(conn, host.name, **kw), timeouts, 1, 1)


def test_a_host_passes_its_gates_in_order() -> None:
    """Lab: test_restart.py::test_restart_rolls_every_host_one_at_a_time."""
    run = FakeRun(
        environment(),
        sessions=[{"app.service": {backend(1), backend(2)}}, {"app.service": {backend(3)}}],
    )
    conn = ScriptedRemote("app1", healthy_host())
    outcome = run_host(conn, run)
    assert outcome.ok and outcome.gate is None, outcome
    assert [c.split()[0:3] for c in conn.sent] == [
        ["sudo", "-n", "systemctl"],
        ["systemctl", "show", "-p"],
        ["curl", "-fsS", "http://127.0.0.1:8080/health"],
        ["systemctl", "show", "-p"],
    ]
    assert list(outcome.gates) == [g for g in gates.GATES if g != "settle"]  # in order
    assert outcome.old_main_pid == 100 and outcome.new_main_pid == 200
    (done,) = run.of("host_done")
    assert done["units"][0]["new_invocation_id"] == "b" * 32
    (start,) = run.of("host_start")
    assert start["old_backends"] == [1, 2]
    assert run.slots_given_back == ["app1 restarts and refills its pool"]
    assert conn.finished()


def test_the_run_waits_from_when_the_host_has_the_restart_command() -> None:
    """The run's work off the critical path (the report's warm-up, RunContext.waiting)
    begins once the host has the restart command, not before the command is sent (it
    would compete with what leads to it) and not after the restart (the wait is then
    over)."""
    run = FakeRun(environment(), sessions=[{"app.service": set()}])
    conn = ScriptedRemote("app1", healthy_host())
    assert run_host(conn, run).ok
    restarting = next(i for i, s in enumerate(run.said) if "restarting" in s)
    assert run.said[restarting + 1] == "(waiting)"
    assert run.said.count("(waiting)") == 1  # the restart command alone


def test_a_simple_unit_must_settle_before_its_health_check() -> None:
    """Lab: test_systemd_units.py (Type=simple units settle)."""
    run = FakeRun(environment(), sessions=[{"app.service": set()}])
    conn = ScriptedRemote(
        "app1",
        [
            Expect(RESTART),
            Expect(SHOW, show(invocation="new", pid=200, type_="simple")),
            Expect(SHOW, show(invocation="new", pid=200, type_="simple"), sticky=True),
            Expect(HEALTH),
            Expect(SHOW, show(invocation="new", pid=200, type_="simple")),
        ],
    )
    outcome = run_host(conn, run, type_="simple")
    assert outcome.ok, outcome
    assert list(outcome.gates) == list(gates.GATES)
    assert any("must stay up" in s for s in run.said)


@pytest.mark.parametrize(
    ("gate", "script", "detail"),
    [
        (
            "restart",
            [
                Expect(RESTART, exit_code=1, stderr="Job for app.service failed."),
                Expect(
                    SHOW, show(active="failed", sub="failed", invocation="new", result="exit-code")
                ),
            ],
            "exited with status 1\nJob for app.service failed.\nservice app.service has failed",
        ),
        (
            "active",
            [Expect(RESTART), Expect(SHOW, show(), sticky=True)],
            "not active as a new invocation after",
        ),
        (
            "active",
            [
                Expect(RESTART),
                Expect(
                    SHOW, show(active="failed", sub="failed", invocation="new", result="exit-code")
                ),
            ],
            "the new invocation failed: service app.service has failed"
            " (failed/failed, Result=exit-code)",
        ),
        (
            "health",
            [
                Expect(RESTART),
                Expect(SHOW, show(invocation="new", pid=200)),
                Expect(HEALTH, exit_code=22, stderr="HTTP 503", sticky=True),
            ],
            "health check did not pass within 300ms",
        ),
        (
            "still_active",
            [
                Expect(RESTART),
                Expect(SHOW, show(invocation="new", pid=200)),
                Expect(HEALTH),
                Expect(SHOW, show(active="activating", sub="auto-restart", invocation="newer")),
            ],
            "after the gates: service app.service failed and waits for its first automatic"
            " restart (activating/auto-restart, Restart=no in 1s, Result=success)",
        ),
    ],
    ids=[
        "restart fails",
        "old invocation stays",
        "new invocation fails",
        "unhealthy",
        "dies after",
    ],
)
def test_each_gate_fails_the_host_saying_why(gate: str, script: list[Expect], detail: str) -> None:
    """Lab: test_restart.py::test_failed_restart_halts_and_later_hosts_keep_their_pid,
    test_systemd_units.py (a unit that fails or dies after its gates)."""
    run = FakeRun(environment(), sessions=[{"app.service": set()}])
    conn = ScriptedRemote(
        "app1",
        [Expect(s.contains, s.stdout, s.exit_code, s.error, s.stderr, s.sticky) for s in script],
    )
    outcome = run_host(conn, run)
    assert not outcome.ok and outcome.gate == gate, outcome
    assert detail in outcome.detail
    (failed,) = run.of("host_failed")
    assert failed["gate"] == gate and failed["detail"] == outcome.detail
    if gate in ("restart", "health"):
        assert failed["command"] in (RESTART, "curl -fsS http://127.0.0.1:8080/health")
        assert failed["exit_code"] in (1, 22)
    else:
        assert "command" not in failed
    assert any(f"FAILED at {gate}" in s for s in run.said)
    assert not run.of("host_done")


def test_the_database_gate_waits_for_old_sessions_and_the_pool_bound() -> None:
    """Lab: test_restart.py (the database gate: old sessions gone, at most the pool)."""
    old = {backend(1), backend(2)}
    lingering = FakeRun(
        environment(), sessions=[{"app.service": old}, {"app.service": {backend(2)}}]
    )
    outcome = run_host(ScriptedRemote("app1", healthy_host()[:3]), lingering)
    assert outcome.gate == "database" and "1 old session(s) still open" in outcome.detail
    crowded = FakeRun(
        environment(),
        sessions=[{"app.service": old}, {"app.service": {backend(5), backend(6), backend(7)}}],
    )
    outcome = run_host(ScriptedRemote("app1", healthy_host()[:3]), crowded)
    assert outcome.gate == "database"
    assert "3 sessions, more than its pool size 2" in outcome.detail
    overflow = FakeRun(
        environment(max_overflow=1),
        sessions=[{"app.service": old}, {"app.service": {backend(5), backend(6), backend(7)}}],
    )
    assert run_host(ScriptedRemote("app1", healthy_host()), overflow).ok


def test_a_restart_command_still_running_follows_the_unit() -> None:
    """A slow Type=notify start: systemctl outlives its timeout; the unit decides.
    Lab: test_systemd_units.py (a slow notify unit)."""
    run = FakeRun(environment(), sessions=[{"app.service": set()}])
    conn = ScriptedRemote(
        "app1",
        [Expect(RESTART, exit_code=None, error="timed out after 60s"), *healthy_host()[1:]],
    )
    assert run_host(conn, run).ok
    assert any("still running after" in s for s in run.said)


def test_ctrl_c_while_a_gate_waits() -> None:
    run = FakeRun(environment(), sessions=[{"app.service": set()}], interrupt_after=2)
    conn = ScriptedRemote("app1", [Expect(RESTART), Expect(SHOW, show(), sticky=True)])
    outcome = run_host(conn, run, GateTimeouts(active=30))
    assert outcome.gate == "active" and outcome.detail.endswith("interrupted")


def test_poll_says_what_it_waits_for_then_how_long() -> None:
    run = FakeRun(environment())
    answers = iter([(False, "not yet"), (False, "still not"), (True, "done")])
    ok, detail = gates.poll(run, lambda: next(answers), 5, "host 1/1 app1: health check")
    assert ok and detail == "done" and run.slept == 2
    (said,) = run.said  # once, not at every poll: the next only after 10 s
    assert said.startswith("host 1/1 app1: health check: waiting (")
    assert said.endswith(" of 5s): not yet")


# the roll: order, batches, halting


def scripted_roll(
    run: FakeRun, scripts: dict[str, list[Expect]], batch: int = 1, pause: float = 0
) -> tuple[Any, dict[str, ScriptedRemote]]:
    conns = {name: ScriptedRemote(name, script) for name, script in scripts.items()}
    targets = [h for h in run.env.hosts if h.name in scripts]
    started: list[str] = []

    def one(host: Any) -> HostOutcome:
        started.append(host.name)
        return restart_host(
            run,
            host,
            check_of(conns[host.name], host.name),
            FAST,
            targets.index(host) + 1,
            len(targets),
        )

    result = roll(run, targets, one, batch, pause, remote.parallel)
    return result, conns


def test_the_roll_takes_hosts_in_order_one_batch_at_a_time() -> None:
    """Lab: test_restart.py::test_restart_rolls_every_host_one_at_a_time."""
    run = FakeRun(environment(5), sessions=[{"app.service": set()}])
    result, conns = scripted_roll(
        run, {f"app{i}": healthy_host() for i in range(1, 6)}, batch=2, pause=0.01
    )
    assert result.ok and result.done == ["app1", "app2", "app3", "app4", "app5"]
    assert result.summary().startswith("restarted 5 host(s) in")
    assert all(c.finished() for c in conns.values())
    assert run.said.count("pause 10ms before the next host") == 2  # between 3 batches
    assert [[h.name for h in b] for b in batches(run.env.hosts, 2)] == [
        ["app1", "app2"],
        ["app3", "app4"],
        ["app5"],
    ]
    starts = [e["host"] for e in run.of("host_start")]
    assert set(starts[:2]) == {"app1", "app2"} and set(starts[2:4]) == {"app3", "app4"}
    assert starts[4] == "app5"


def test_the_first_failure_halts_the_roll_and_later_hosts_are_not_touched() -> None:
    """Lab: test_restart.py::test_failed_restart_halts_and_later_hosts_keep_their_pid."""
    run = FakeRun(environment(4), sessions=[{"app.service": set()}])
    failing = [Expect(RESTART, exit_code=1, stderr="denied"), Expect(SHOW, show())]
    result, conns = scripted_roll(
        run,
        {"app1": healthy_host(), "app2": failing, "app3": healthy_host(), "app4": healthy_host()},
    )
    assert not result.ok and result.why == "a host failed its gates"
    assert result.done == ["app1"] and result.failed == ["app2"]
    assert result.untouched == ["app3", "app4"]
    assert conns["app3"].sent == [] and conns["app4"].sent == []
    (halted,) = run.of("roll_halted")
    assert halted == {
        "event": "roll_halted",
        "reason": "a host failed its gates",
        "done": ["app1"],
        "failed": ["app2"],
        "untouched": ["app3", "app4"],
    }
    assert result.summary().startswith(
        "halted (a host failed its gates): done app1; failed app2 at restart:"
    )
    assert result.summary().endswith("; not touched app3, app4")


def test_a_failure_in_a_batch_lets_its_partner_finish_and_stops_the_next_batch() -> None:
    run = FakeRun(environment(4), sessions=[{"app.service": set()}])
    failing = [Expect(RESTART), Expect(SHOW, show(), sticky=True)]  # never a new invocation
    result, conns = scripted_roll(
        run,
        {"app1": failing, "app2": healthy_host(), "app3": healthy_host(), "app4": healthy_host()},
        batch=2,
    )
    assert result.done == ["app2"] and result.failed == ["app1"]
    assert result.untouched == ["app3", "app4"] and conns["app3"].sent == []


def test_ctrl_c_between_batches_stops_before_the_next_host() -> None:
    run = FakeRun(environment(3), sessions=[{"app.service": set()}], interrupt_after=0)
    result, conns = scripted_roll(run, {f"app{i}": healthy_host() for i in range(1, 4)})
    assert result.interrupted and result.done == [] and result.untouched == ["app1", "app2", "app3"]
    assert all(c.sent == [] for c in conns.values())


AUTO = {"active": "activating", "sub": "auto-restart", "restart": "on-failure"}


def test_a_failed_start_its_restart_policy_heals_is_waited_for_and_reported() -> None:
    """Lab: test_restart.py::test_a_start_failure_its_restart_policy_heals_is_waited_for."""
    run = FakeRun(environment(), sessions=[{"app": set()}])
    conn = ScriptedRemote(
        "app1",
        [
            Expect(RESTART, exit_code=1, stderr="Job for app.service failed."),
            Expect(SHOW, show(invocation="new", result="exit-code", **AUTO)),
            Expect(SHOW, show(invocation="newer", pid=300, restart="on-failure", restarts=1)),
            Expect(HEALTH),
            Expect(SHOW, show(invocation="newer", pid=300, restart="on-failure", restarts=1)),
        ],
    )
    outcome = run_host(conn, run)
    assert outcome.ok and outcome.healed, outcome
    assert outcome.healed.startswith("app.service: the restart command failed (app1:")
    assert "healed: active as a new invocation after 1 automatic restart(s)" in outcome.healed
    (done,) = [e for e in run.events if e["event"] == "host_done"]
    assert done["healed"] == outcome.healed


def test_a_failed_start_that_does_not_heal_fails_after_three_automatic_restarts() -> None:
    run = FakeRun(environment(), sessions=[{"app": set()}])
    looping = [
        Expect(SHOW, show(invocation=f"{n:032x}", result="exit-code", restarts=n, **AUTO))
        for n in range(0, 4)
    ]
    conn = ScriptedRemote(
        "app1",
        [Expect(RESTART, exit_code=1, stderr="Job for app.service failed."), *looping],
    )
    outcome = run_host(conn, run, GateTimeouts(active=5, health=0.3, database=0.3, settle=0.05))
    assert not outcome.ok and outcome.gate == "active"
    assert "it did not heal: still failing after 3 automatic restarts" in outcome.detail
    assert "is in a crash loop (activating/auto-restart, restarted 3 time(s)" in outcome.detail
    assert outcome.command == RESTART and outcome.exit_code == 1  # the cause, kept
    assert outcome.log_tail and "cannot connect to the cache" in outcome.log_tail
