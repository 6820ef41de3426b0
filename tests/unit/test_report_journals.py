"""The report is never lost: journals of every shape a run can leave, rendered.

Each journal is written through the real Journal, from the real event schemas: the
shipped runbook's steps and actions; diagnoses computed by the real analysis (direct,
or behind a PgBouncer whose clients are idle the 1.18 way or the 1.25 way); the pool
advice from the real sizing; operations of the shapes terminate and the PgBouncer steps
write (events.SessionOperation / PoolerOperation, with any values hypothesis finds);
rolling restarts whose hosts end done, failed, or not at all. Any step may be skipped,
refused, only planned (dry run) or applied; the run may end any way, or be killed at any
event (no run_end). The shipped template must render every one of them — the minimal
fallback is for what no test foresaw, not for these."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connfix.actions.base import Operation
from connfix.db.pg import ServerInfo
from connfix.db.pgbouncer_console import BouncerClient, BouncerServer, BouncerState
from connfix.diagnosis.analysis import analyse
from connfix.diagnosis.pool_sizing import size_pools
from connfix.engine.run import RunStatus
from connfix.engine.runbook import parse_runbook
from connfix.record import report
from connfix.record.events import Event, PoolerOperation, SessionOperation
from connfix.record.journal import Journal, Redactor
from tests.builders import backend, environment

RUNBOOK = parse_runbook(
    resources.files("connfix.engine").joinpath("runbooks", "too-many-connections.yaml").read_text(),
    Path("connfix:runbooks/too-many-connections.yaml"),
)
STATES = ("idle", "active", "idle in transaction", "idle in transaction (aborted)", None)
FATES = ("skipped", "refused", "planned", "nothing", "applied")
text = st.text(max_size=30)


@st.composite
def diagnosis(draw: st.DrawFn, env: Any, pooler: str | None) -> dict[str, Any]:
    """A diagnosis as connfix takes it, of drawn sessions (and PgBouncer clients)."""
    now = time.time()
    rows = [
        backend(
            100 + i,
            draw(st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.9.9.9", None])),
            draw(st.sampled_from(STATES)),
            xact=draw(st.floats(0, 5000)),
        )
        for i in range(draw(st.integers(0, 25)))
    ]
    bouncers = []
    if pooler is not None:
        clients = [
            BouncerClient(
                "app",
                "app",
                pooler if draw(st.booleans()) else "waiting",
                draw(st.sampled_from(["10.0.0.1", "10.0.0.2", None])),
                40000 + n,
                draw(st.sampled_from(["web", "", "psql"])),
                now - draw(st.floats(0, 9000)),
                now - draw(st.floats(0, 9000)),
                f"c{n}",
                "s1" if n == 0 and draw(st.booleans()) else "",
                id=n,
            )
            for n in range(draw(st.integers(0, 12)))
        ]
        error = draw(st.sampled_from([None, "cannot read PgBouncer pgb: refused"]))
        bouncers.append(
            BouncerState(
                "pgb",
                "connfix@pgb:6432/pgbouncer",
                "" if error else f"PgBouncer {'1.25.2' if pooler == 'idle' else '1.24.1'}",
                [],
                [BouncerServer("app", "app", "active", 100, "s1", "c0")],
                [] if error else clients,
                error=error,
                read_at=now,
            )
        )
    max_connections = draw(st.integers(5, 60))
    info = ServerInfo("connfix", False, True, True, "x", 150004, max_connections, 3, 0, 1, "app")
    return analyse("prod", env, info, rows, [], bouncers=bouncers).to_json()


@st.composite
def journal_events(draw: st.DrawFn) -> tuple[list[tuple[Event, dict[str, Any]]], bool]:
    """The events of one run, in order, and whether it was a dry run."""
    pooler = draw(st.sampled_from([None, "active", "idle"]))  # none, ≤ 1.24, ≥ 1.25
    env = environment() if pooler else environment(pgbouncers=[])
    dry_run = draw(st.booleans())
    hosts = [h.name for h in env.hosts]
    out: list[tuple[Event, dict[str, Any]]] = [
        (
            Event.RUN_START,
            {
                "environment": "prod",
                "operator": draw(text),
                "hostname": "ops1",
                "connfix_version": "0.1.0",
                "runbook": {
                    "name": RUNBOOK.name,
                    "source": "connfix:runbooks/too-many-connections.yaml",
                    "sha256": RUNBOOK.sha256,
                    "shadows": None,
                    "healthy": RUNBOOK.healthy,
                    "steps": [s.id for s in RUNBOOK.steps],
                },
                "inventory": "inventory.yaml",
                "flags": {"dry_run": dry_run, "yes": True, "interactive": False, "mode": "triage"},
                "pid": 4242,
                "resumed_from": None,
                "resume_done": {},
            },
        )
    ]
    if draw(st.booleans()):
        out.append((Event.ERROR, {"phase": "connect", "message": draw(text)}))
        return out, dry_run
    out.append(
        (
            Event.CONNECTED,
            {
                "via": draw(st.sampled_from(["primary", "reserved", "admin"])),
                "refusal": draw(st.none() | text),
                "role": "connfix",
                "is_superuser": False,
                "server_version": "15.18",
                "server_version_num": 150018,
            },
        )
    )
    latest = None
    for step in RUNBOOK.steps:
        fate = draw(st.sampled_from(FATES))
        if step.action == "diagnose" or latest is None:
            latest = draw(diagnosis(env, pooler))
            out += [(Event.STEP_START, {"step": step.id, "action": step.action})]
            out += [(Event.DIAGNOSIS, {"step": step.id, "diagnosis": latest})]
            continue
        tag = {"step": step.id}
        if fate == "skipped":
            out.append((Event.STEP_SKIPPED, {**tag, "condition": step.when or "true"}))
            continue
        out.append((Event.STEP_START, {**tag, "action": step.action, "mutating": True}))
        targets = draw(st.lists(st.sampled_from(hosts), unique=True))
        operations = [
            Operation("ssh", f"restart {h}", h, "sudo -n systemctl restart app.service")
            for h in targets
        ]
        out.append(
            (
                Event.PLAN,
                {
                    **tag,
                    "summary": draw(text),
                    "operations": operations if step.action == "rolling_restart" else [],
                    "dry_run": dry_run,
                    "details": {},
                    "blocked": draw(text) if fate == "refused" else None,
                },
            )
        )
        if fate in ("refused", "planned", "nothing") or dry_run:
            out.append((Event.STEP_END, {**tag, "ok": fate != "refused", "summary": draw(text)}))
            continue
        if step.action == "advise":
            sizing = size_pools(env, analyse_again(env))
            out.append((Event.ADVICE, {**tag, "sizing": sizing.to_json(), "pgbouncer": True}))
        elif step.action == "terminate":
            for op in draw(st.lists(st.from_type(SessionOperation), max_size=4)):
                out.append((Event.OPERATION, {**tag, **op}))
        elif step.action.startswith("pgbouncer"):
            for pop in draw(st.lists(st.from_type(PoolerOperation), max_size=4)):
                out.append((Event.OPERATION, {**tag, **pop}))
        elif step.action == "rolling_restart":
            for h in targets:
                out.append((Event.HOST_START, {**tag, "host": h, "old_main_pid": 10}))
                ending = draw(st.sampled_from(["done", "failed", "killed"]))
                if ending == "killed":
                    return out, dry_run  # SIGKILL while this host restarts: nothing more
                common = {"host": h, "old_main_pid": 10, "units": [], "gates": {"restart": 0.4}}
                if ending == "done":
                    out.append((Event.HOST_DONE, {**tag, **common, "ok": True, "new_main_pid": 11}))
                else:
                    out.append(
                        (
                            Event.HOST_FAILED,
                            {**tag, **common, "ok": False, "gate": "health", "detail": draw(text)},
                        )
                    )
                    break
        if draw(st.booleans()):
            latest = draw(diagnosis(env, pooler))
            out.append((Event.DIAGNOSIS, {**tag, "diagnosis": latest}))
        out.append(
            (
                Event.STEP_END,
                {**tag, "ok": draw(st.booleans()), "summary": draw(text), "details": {}},
            )
        )
        if draw(st.integers(0, 20)) == 0:
            return out, dry_run  # killed between steps
    status = draw(st.sampled_from(list(RunStatus)))
    out.append(
        (
            Event.RUN_END,
            {"status": status.value, "exit_status": 1, "message": draw(text), "dry_run": dry_run},
        )
    )
    return out, dry_run


def analyse_again(env: Any) -> Any:
    info = ServerInfo("connfix", False, True, True, "x", 150004, 40, 3, 0, 1, "app")
    return analyse("prod", env, info, [], [])


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(run=journal_events())
def test_every_journal_renders_with_the_shipped_template(
    run: tuple[list[tuple[Event, dict[str, Any]]], bool], tmp_path_factory: Any
) -> None:
    events, dry_run = run
    incident = tmp_path_factory.mktemp("incident")
    journal = Journal(incident, Redactor())
    for event, fields in events:
        journal.record(event, **fields)
    journal.close()
    written = report.write(incident)
    assert written.degraded is None, written.degraded
    text = written.path.read_text()
    assert text.count("\n# Incident report: prod — ") + text.startswith("# Incident") == 1
    assert ("> **DRY RUN**" in text) is dry_run
    # every host a roll planned or touched is named, with what became of it
    planned = {
        op.target
        for event, fields in events
        if event is Event.PLAN and fields.get("blocked") is None and not dry_run
        for op in fields["operations"]
    }
    section = text.split("### Hosts restarted", 1)[1].split("## Before and after", 1)[0]
    for host in planned:
        assert f"| {host} | " in section, (host, section)
    assert ("restart sent, outcome unknown" in section) is any(
        e is Event.HOST_START for e, _ in events[-1:]
    )


def test_a_journal_the_template_cannot_render_still_gets_a_minimal_report(
    tmp_path: Path,
) -> None:
    """A journal of a shape nothing writes (a diagnosis without its figures): the full
    report fails, a minimal one (outcome and timeline) is written, and says why."""
    journal = Journal(tmp_path, Redactor())
    journal.record(
        Event.RUN_START,
        environment="prod",
        operator="me",
        hostname="h",
        runbook={"name": "x"},
        flags={"dry_run": False},
    )
    journal.record(Event.DIAGNOSIS, diagnosis={"severity": "critical"})
    journal.record(Event.RUN_END, status="halted", exit_status=1, message="step x failed")
    journal.close()
    written = report.write(tmp_path)
    assert written.degraded and "does not have the shape connfix writes" in written.degraded
    text = written.path.read_text()
    assert text.startswith("# Incident report: prod — halted")
    assert "The full report could not be rendered" in text and "journal is intact" in text
    assert "| Time | Event |" in text and "run ended: halted — step x failed" in text

    # `connfix report` writes it too, says so, and exits 1
    from click.testing import CliRunner

    from connfix.cli import cli

    result = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "a minimal report (outcome and timeline, from the journal) was written" in result.output


# The sessions' table as the template's loop wrote it, cell by cell, before its rows
# were built in Python (report._session_rows): the reference they must equal.
_LOOP = """{% for o in operations %}
| {{ o.pid }} | {{ o.usename }} | {{ o.application_name or "(none)" }} | {{ o.host or o.client_addr }} | {{ o.state }} | {{ age(o.idle_seconds) }} | {{ o.result }} | {{ o.reason or None }} |
{% endfor %}"""  # noqa: E501
_JSON = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(), st.just(""),
    st.floats(allow_nan=True, allow_infinity=True),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "pid": st.one_of(st.integers(0, 2**31), _JSON),
                "usename": _JSON,
                "application_name": _JSON,
                "host": _JSON,
                "client_addr": _JSON,
                "state": _JSON,
                "idle_seconds": _JSON,
                "result": _JSON,
                "reason": _JSON,
            }
        ),
        min_size=1,
        max_size=8,
    )
)
def test_the_sessions_rows_are_what_the_template_loop_wrote(rows: list[dict[str, Any]]) -> None:
    loop = report._compiled(_LOOP).render(operations=rows, age=report._age)
    assert report._session_rows(rows) + "\n" == loop
