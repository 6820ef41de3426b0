"""A scripted SSH layer, for unit tests of the restart gates without the lab.

Like fabric's own `MockRemote`, a `ScriptedRemote` answers the commands it is sent from
a script of expected commands and canned results, in order, and fails the test on a
command it did not expect. The lab tests stay the end-to-end proof on real systemd;
this is for ordering, batching, halting and each gate's failure, cheaply."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from connfix.config.inventory import Environment
from connfix.hosts.remote import CommandResult
from connfix.record.events import Event

INVOCATIONS = {"old": "a" * 32, "new": "b" * 32, "newer": "c" * 32}
LOG = "2026-12-04T02:00:01+0000 app1 app[200]: cannot connect to the cache\n"


def show(
    unit: str = "app.service",
    active: str = "active",
    sub: str = "running",
    invocation: str = "old",
    pid: int = 100,
    type_: str = "notify",
    result: str = "success",
    restart: str = "no",
    restarts: int = 0,
) -> str:
    """`systemctl show` output for one unit, properties in systemd's own order."""
    return (
        f"Type={type_}\nRestart={restart}\nRestartUSec=1s\nMainPID={pid}\nResult={result}\n"
        f"NRestarts={restarts}\n"
        f"TimeoutStartUSec=1min 30s\nTimeoutStopUSec=1min 30s\n"
        f"ExecMainStartTimestampMonotonic={pid * 1000}\n"
        f"InvocationID={INVOCATIONS.get(invocation, invocation)}\nId={unit}\n"
        f"LoadState=loaded\nActiveState={active}\nSubState={sub}\nRemainAfterExit=no\n"
    )


@dataclass
class Expect:
    """One expected command (matched by a substring) and what it returns. A `sticky`
    expectation answers every matching command until the script moves past it."""

    contains: str
    stdout: str = ""
    exit_code: int | None = 0
    error: str | None = None
    stderr: str = ""
    sticky: bool = False


@dataclass
class ScriptedRemote:
    """A stand-in for `connfix.hosts.remote.Remote` in gate tests: see the module docstring."""

    host: str
    script: list[Expect]
    sent: list[str] = field(default_factory=list)
    reconnects: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(
        self,
        command: str,
        timeout: float | None = None,
        sent: Callable[[], None] | None = None,
    ) -> CommandResult:
        result = self._answer(command)
        if sent is not None and result.error is None:
            sent()  # as the real one calls it: the host has the command
        return result

    def _answer(self, command: str) -> CommandResult:
        with self.lock:
            self.sent.append(command)
            if "journalctl" in command:  # a failed unit's log, read after any failure
                return CommandResult(self.host, command, 0, LOG, "", 0.01)
            while self.script:
                step = self.script[0]
                if step.contains in command:
                    if not step.sticky:
                        self.script.pop(0)
                    return CommandResult(
                        self.host,
                        command,
                        step.exit_code,
                        step.stdout,
                        step.stderr,
                        0.01,
                        step.error,
                    )
                if step.sticky and len(self.script) > 1:
                    self.script.pop(0)  # a sticky step ends when the next one is asked
                    continue
                break
            expected = repr(self.script[0].contains) if self.script else "nothing more"
            raise AssertionError(
                f"{self.host}: unexpected command {command!r}; the script expects {expected}"
            )

    def close(self) -> None:
        pass

    def finished(self) -> bool:
        return all(s.sticky for s in self.script)


@dataclass
class FakeRun:
    """The run as gates, a host's restart and the roll see it: progress lines, journal
    events, Ctrl-C, and the database's sessions per host and service, all scripted."""

    env: Environment
    sessions: list[dict[str, set[Any]]] = field(default_factory=list)  # answers in order
    interrupt_after: int | None = None  # sleeps before a Ctrl-C is "pressed"
    said: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    slept: int = 0
    slots_given_back: list[str] = field(default_factory=list)

    @property
    def interrupted(self) -> bool:
        return self.interrupt_after is not None and self.slept >= self.interrupt_after

    def progress(self, message: str) -> None:
        self.said.append(message)

    def sleep(self, seconds: float) -> bool:
        self.slept += 1
        return not self.interrupted

    def waiting(self) -> None:
        self.said.append("(waiting)")

    def record(self, event: Event, **fields: Any) -> None:
        self.events.append({"event": event, **fields})

    @contextlib.contextmanager
    def slot_given_back(self, why: str) -> Iterator[None]:
        self.slots_given_back.append(why)
        yield

    def backends(self, addr: str, service: Any) -> set[Any]:
        answer = self.sessions.pop(0) if len(self.sessions) > 1 else self.sessions[0]
        return answer.get(service.label, set())

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]


def environment(hosts: int = 3, **service: Any) -> Environment:
    """A small inventory environment: app1…appN, one service."""
    return Environment.validate(
        {
            "database": {"dsn": "host=db dbname=app user=connfix"},
            "service": {
                "unit": "app.service",
                "pool_size": 2,
                "health_check": "curl -fsS http://127.0.0.1:8080/health",
                **service,
            },
            "hosts": [
                {"name": f"app{i}", "ssh_address": f"10.0.0.{i}"} for i in range(1, hosts + 1)
            ],
        }
    )
