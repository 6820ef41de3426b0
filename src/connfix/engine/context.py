"""What actions see of a run (`RunContext`): the environment, the database session
(reconnected once if lost, the environment's advisory lock taken again), the journal,
the latest diagnosis, Ctrl-C, and the helpers actions share."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from connfix import ConnfixError
from connfix.config.units import format_duration
from connfix.engine import expressions
from connfix.record.events import Event
from connfix.record.journal import Journal

if TYPE_CHECKING:
    from connfix.config.inventory import Environment, Host, Service
    from connfix.db.pg import BackendId, Session
    from connfix.diagnosis.model import Diagnosis
    from connfix.engine.interrupt import Interrupt
    from connfix.engine.runbook import Runbook, Step
    from connfix.engine.ui import UI


class LockLost(ConnfixError):
    """The environment's lock went with a lost connection, and someone else took it."""


def take_lock(session: Session, environment: str, journal: Journal) -> str | None:
    """Take the environment's advisory lock and journal it; else say who holds it."""
    from connfix.db import pg

    holder = pg.try_environment_lock(session, environment)
    if holder is None:
        journal.record(
            Event.LOCK_ACQUIRED,
            key=pg.database_lock_key(session.info.database),
            database=session.info.database,
        )
        return None
    journal.record(Event.LOCK_REFUSED, holder=holder)
    run = pg.RUN_TAG.search(holder.query or "")
    if run is not None:  # another connfix run: its statements say whose it is
        held = ""
        with contextlib.suppress(ValueError):
            since = datetime.fromisoformat(run["since"])
            held = (
                f", holding it for {format_duration((datetime.now(UTC) - since).total_seconds())}"
            )
        return (
            f"another connfix run holds environment {environment!r} (the lock of its"
            f" database {session.info.database!r}, whatever environment names it): operator"
            f" {run['operator']} on {run['host']} (its pid {run['pid']}), writing"
            f" {run['incident']}{held} (since {run['since']}); refusing to run at the same"
            " time. Wait for it, or ask its operator"
        )
    who = (
        f"pid {holder.pid}, user {holder.usename}, from"
        f" {holder.client_addr or 'the local socket'}, application"
        f" {holder.application_name!r}"
    )
    if holder.held_seconds is not None:
        who += f", connected {holder.held_seconds:.0f}s ago"
    return (
        f"another session holds environment {environment!r}'s lock (of database"
        f" {session.info.database!r}; {who}); refusing to run at the same time"
    )


FOLLOW_WAIT_S = 20.0  # how long a run waits for Patroni to name a new leader
REJOIN_WAIT_S = 30.0  # at a run's end, how long it waits for a node that changed role


@dataclass
class Follow:
    """Of several database nodes: the one a run acts on and the role it has, and the
    whole environment (its Patroni, every node) to find the roles again."""

    node: str
    role: str
    cluster: Environment
    # nodes whose role changed during the run (the old primary rejoining as a standby
    # restarts): at the end of the run they are waited for, not judged at once
    changed: set[str] = field(default_factory=set)


@dataclass
class RunContext:
    """What actions see of a run: the environment, the session, the journal, the state."""

    environment: str
    env: Environment
    runbook: Runbook
    journal: Journal
    session: Session
    dry_run: bool
    interrupt: Interrupt
    ui: UI
    latest: Diagnosis | None = None
    step: Step | None = None
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)  # what the run changed so far
    db_lock: threading.Lock = field(default_factory=threading.Lock)  # one session, many threads
    resume_done: dict[str, list[str]] = field(default_factory=dict)  # action → done items
    health_checks: bool = True  # run the hosts' health checks with each diagnosis
    max_restart_hosts: int | None = None  # an alert policy's cap on hosts one run restarts
    remotes: dict[str, Any] = field(default_factory=dict)  # host → its health-check SSH
    # of several database nodes: the one the run acts on, its role, and every node
    follow: Follow | None = None
    _handoff: threading.Condition = field(default_factory=threading.Condition)
    _handoff_inside: int = 0
    _handoff_released: bool = False
    _names: tuple[Diagnosis, tuple[tuple[str, int], ...], dict[str, Any]] | None = None

    @contextlib.contextmanager
    def slot_given_back(self, why: str) -> Iterator[None]:
        """While a restarted app refills its pool, hold no privileged slot.

        Entered through the admin (superuser-reserved) or reserved-role way because the
        server was full, connfix's own session takes one of the slots the restarted pool
        needs: on a server exactly full the new pool comes up one short and the host
        stays down. So the session is closed for the time (its environment lock with it)
        and opened again afterwards: the ordinary way when it fits, else the privileged
        one, the lock taken again. Batches share it: closed by the first host to enter,
        opened again when the last leaves. Over the ordinary connection: nothing to do."""
        with self._handoff:
            if self._handoff_inside == 0 and self.session.via != "primary":
                self.record(Event.SLOT_GIVEN_BACK, via=self.session.via, why=why)
                self.ui.note(
                    f"giving back the {self.session.via} connection's slot while {why}"
                    " (connfix's own session would take one the new pool needs)"
                )
                with contextlib.suppress(Exception):
                    self.session.close()
                self._handoff_released = True
            self._handoff_inside += 1
        try:
            yield
        finally:
            with self._handoff:
                self._handoff_inside -= 1
                if self._handoff_inside == 0 and self._handoff_released:
                    try:
                        self._reopen()
                    finally:
                        self._handoff_released = False
                        self._handoff.notify_all()
                else:
                    self._handoff.wait_for(lambda: not self._handoff_released, timeout=3600)

    def _reopen(self) -> None:
        from connfix.db import pg

        self.session = pg.open_session(self.env.database)
        self.cleanups.append(self.session.close)
        self.record(Event.SESSION_REOPENED, via=self.session.via, refusal=self.session.refusal)
        self.ui.note(f"connected again, via the {self.session.via} connection")
        if not self.dry_run:
            refused = take_lock(self.session, self.environment, self.journal)
            if refused is not None:
                raise LockLost(f"after giving the slot back, {refused}")

    def host_health(self) -> dict[str, dict[str, Any]]:
        """Run every host's health check, in parallel (read-only), on connections kept for
        the run; {} when the inventory has none. A check already run ahead on the run's
        early login (engine.start), begun at most HEALTH_AHEAD_FRESH_S ago, is taken as
        it ended instead of being run again: that is the first diagnosis's."""
        from connfix.config.defaults import HEALTH_AHEAD_FRESH_S, HEALTH_CHECK_S
        from connfix.hosts import remote

        if not any(s.health_check for s in self.env.all_services()):
            return {}

        def one(host: Host) -> tuple[str, dict[str, Any]]:
            conn = self.remotes.get(host.name)
            if conn is None:
                conn = self.remotes[host.name] = remote.Remote(host, self.env.ssh)
                self.cleanups.append(conn.close)
            failing, details = [], []
            for service in self.env.services_on(host):
                if not service.health_check:
                    continue
                result = conn.take_ahead(service.health_check, HEALTH_AHEAD_FRESH_S)
                if result is None:
                    result = conn.run(service.health_check, timeout=HEALTH_CHECK_S)
                if not result.ok:
                    failing.append(service.label)
                    details.append(result.describe())
            return host.name, {
                "ok": not failing,
                "detail": "; ".join(details) or "ok",
                "failing": failing,
            }

        return dict(remote.parallel(self.env.hosts, one))

    @property
    def interrupted(self) -> bool:
        """Tell whether the operator pressed Ctrl-C."""
        return self.interrupt.requested

    def backends(self, addr: str, service: Service) -> set[BackendId]:
        """Return the sessions of one service from one client address, now."""
        from connfix.db import pg

        with self.db_lock:  # one session, shared by a batch's threads
            return pg.host_backends(self.session, addr, service.application_name, service.user)

    def progress(self, message: str) -> None:
        """Tell the operator how a long step is going (not journaled)."""
        self.ui.note(message)

    def planned(self, action: Any, params: Any) -> Any:
        """A step's plan from the latest diagnosis, journaled (`plan`) as every plan is."""
        plan = action.plan(self, params)
        self.record(
            Event.PLAN,
            summary=plan.summary,
            operations=plan.operations,
            dry_run=self.dry_run,
            details=plan.details,
            blocked=plan.blocked,
        )
        return plan

    def record(self, event: Event, **fields: Any) -> None:
        """Append an event to the journal, tagged with the current step."""
        if self.step is not None:
            fields.setdefault("step", self.step.id)
        self.journal.record(event, **fields)

    def record_many(self, events: list[tuple[Event, dict[str, Any]]]) -> None:
        """Append a batch of events with one fsync, each tagged with the current step."""
        if self.step is not None:
            for _, fields in events:
                fields.setdefault("step", self.step.id)
        self.journal.record_many(events)

    def diagnose(self) -> Diagnosis:
        """Take a fresh diagnosis, journal it, and make it the latest."""
        from connfix import ConnectionLost
        from connfix.diagnosis.analysis import take_snapshot

        # the hosts' health checks (SSH; the first also imports paramiko) run while the
        # database answers the snapshot's queries, not after them
        health_of = _in_background(self.host_health) if self.health_checks else None
        try:
            snapshot = take_snapshot(self.session, self.environment, self.env)
        except ConnectionLost as exc:
            if not self._followed(str(exc)):
                self.reconnect(str(exc))
            snapshot = take_snapshot(self.session, self.environment, self.env)
        follow = self.follow
        if (
            follow is not None
            and snapshot.role != follow.role
            and self._followed(f"{follow.node} is a {snapshot.role} now", snapshot.role)
        ):
            snapshot = take_snapshot(self.session, self.environment, self.env)
        health = health_of() if health_of is not None else {}
        unhealthy = [name for name, h in health.items() if not h["ok"]]
        reasons = list(snapshot.severity_reasons)
        if unhealthy:
            reasons.append(f"health check failing on {', '.join(unhealthy)}")
        self.latest = dataclasses.replace(
            snapshot, host_health=health, unhealthy_hosts=unhealthy, severity_reasons=reasons
        )
        self.record(Event.DIAGNOSIS, diagnosis=self.latest.to_json())
        return self.latest

    def _followed(self, why: str, role_now: str | None = None) -> bool:
        """Of several nodes: after a lost connection or a role seen changed, ask Patroni
        where the roles are now. The node's new role is journaled and shown; when the
        node was the primary and another one is now, the run follows the primary there
        (connects to it, takes the lock there) and nothing more is done on the old one.
        Return whether the run is connected to the node to act on (else the caller
        reconnects as usual)."""
        from connfix.diagnosis.cluster import PatroniUnavailable, topology

        follow = self.follow
        if follow is None or follow.cluster.database.patroni is None:
            return False
        # a lost primary: Patroni names the new leader within its ttl (a switchover takes
        # about 2 s); until then the old one may still be listed as leader
        deadline = time.monotonic() + (FOLLOW_WAIT_S if role_now is None else 0)
        while True:
            try:
                members = topology(follow.cluster).members
            except PatroniUnavailable:
                return False
            roles = {m.node.name: m.ha_role for m in members}
            leader = next((n for n, r in roles.items() if r == "leader"), None)
            moved = leader is not None and leader != follow.node
            if moved or follow.role != "primary" or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        now = role_now or ("primary" if roles.get(follow.node) == "leader" else "standby")
        if now == follow.role and role_now is None:
            return False  # the same role: a plain reconnect to the same node
        target = leader if follow.role == "primary" and leader and leader != follow.node else None
        message = (
            f"following the primary to {target}: nothing more is done on {follow.node}"
            if target
            else f"the run goes on against {follow.node} as a {now}"
        )
        self.record(
            Event.ROLE_CHANGED,
            node=follow.node,
            was=follow.role,
            now=now,
            message=message,
            roles={n: r or "unknown" for n, r in roles.items()},
        )
        self.ui.note(f"{why}: {follow.node} was the {follow.role}, is a {now} now; {message}")
        follow.changed.add(follow.node)
        if target is None:
            follow.role = now
            return False
        node = next(m.node for m in members if m.node.name == target)
        self.env = self.env.replace(database=follow.cluster.database.of_node(node))
        follow.node, follow.role = target, "primary"
        self.reconnect(f"switchover: {target} is the primary now")
        return True

    def reconnect(self, why: str) -> None:
        """Connect again once after losing the database (it restarted?), and take the
        environment's lock again: a restart released it."""
        from connfix.db import pg

        self.record(Event.CONNECTION_LOST, message=why)
        self.ui.note(f"{why}; connecting again")
        with contextlib.suppress(Exception):
            self.session.close()
        self.session = pg.open_session(self.env.database)
        self.cleanups.append(self.session.close)
        self.record(Event.RECONNECTED, via=self.session.via, refusal=self.session.refusal)
        if not self.dry_run:
            refused = take_lock(self.session, self.environment, self.journal)
            if refused is not None:
                raise LockLost(f"after reconnecting, {refused}")

    def names(self, d: Diagnosis) -> dict[str, Any]:
        """Return the names an expression sees for a diagnosis: built once per diagnosis
        and totals (a step's conditions and the healthy check see the same picture; the
        sandbox lets no expression change them)."""
        key = (d, tuple(sorted(self.totals.items())))
        if self._names is None or self._names[0] is not key[0] or self._names[1] != key[1]:
            built = expressions.context(
                d, [h.name for h in self.env.hosts], self.env.thresholds.dump(), self.totals
            )
            self._names = (key[0], key[1], built)
        return self._names[2]

    def holds(self, condition: str, d: Diagnosis) -> bool:
        """Evaluate a runbook expression over a diagnosis."""
        return expressions.evaluate(condition, self.names(d))

    def healthy(self) -> bool:
        """Tell whether the runbook's healthy condition holds for the latest diagnosis."""
        return self.latest is not None and self.holds(self.runbook.healthy, self.latest)

    def healthy_or_none(self) -> bool | None:
        """healthy(), or None when the condition cannot be evaluated (for run_end)."""
        try:
            return self.healthy()
        except expressions.ExpressionError:
            return None

    def waiting(self) -> None:
        """The step's change is under way and the run waits on the outside (a host
        restarting, backends exiting): begin the report's warm-up (once a run), which
        would otherwise compete for the interpreter with the run's own work or wait
        until its end."""
        from connfix.record import report

        with contextlib.suppress(RuntimeError):  # no thread to be had: the report pays at the end
            report.warm_up()

    def sleep(self, seconds: float) -> bool:
        """Sleep, waking early on Ctrl-C; return False if interrupted."""
        deadline = time.monotonic() + seconds
        while not self.interrupt.requested:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            time.sleep(min(0.1, remaining))
        return False

    @staticmethod
    def describe(d: Diagnosis) -> str:
        """Summarise a diagnosis in one line."""
        text = (
            f"{d.client_backends} of {d.usable_connections} usable"
            f" ({d.utilization:.0%}), severity {d.severity}"
        )
        if d.suspects:
            text += f", suspects: {', '.join(d.suspects)}"
        return text


def _in_background(work: Callable[[], Any]) -> Callable[[], Any]:
    """Start `work` in a daemon thread; return the call that waits for its result (or
    raises what it raised). A daemon: a run that ends on an error before waiting does
    not wait for it either."""
    from concurrent.futures import Future

    done: Future[Any] = Future()

    def run() -> None:
        try:
            done.set_result(work())
        except BaseException as exc:  # handed to the caller, which raises it
            done.set_exception(exc)

    threading.Thread(target=run, name="connfix-health", daemon=True).start()
    return done.result
