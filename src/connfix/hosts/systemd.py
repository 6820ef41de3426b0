"""systemd as it really behaves, in one place: `systemctl show` read by property name.

`systemctl show -p A -p B UNIT` prints `KEY=VALUE` lines in systemd's own property order,
not in the order asked (and `--value` drops the keys), so connfix always asks without
`--value` and reads the answer by name. Several units give several blocks separated by
a blank line, in the order of the units on the command line.
"""

from __future__ import annotations

import fnmatch
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from connfix.hosts.remote import CommandResult, Remote

# What connfix reads of a service, for the preflight, the gates and `inventory check`.
PROPERTIES = (
    "Id",
    "LoadState",
    "ActiveState",
    "SubState",
    "Type",
    "MainPID",
    "InvocationID",
    "ExecMainStartTimestampMonotonic",
    "Result",
    "TimeoutStartUSec",
    "TimeoutStopUSec",
    "NRestarts",
    "RemainAfterExit",
    "Restart",
    "RestartUSec",
)


def parse_show(text: str) -> list[dict[str, str]]:
    """Parse `systemctl show` output: one dict per unit block, keys as systemd prints."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition("=")
        if sep:
            current[key] = value
    if current:
        blocks.append(current)
    return blocks


def show_command(units: list[str], properties: tuple[str, ...] = PROPERTIES) -> str:
    """Return the read-only command that shows these properties of these units."""
    return (
        "systemctl show -p "
        + ",".join(properties)
        + " -- "
        + " ".join(shlex.quote(u) for u in units)
    )


def usec(value: str) -> float | None:
    """Return a systemd time span (`TimeoutStartUSec=1min 30s`, or `infinity`) in
    seconds; None for infinity or an empty value."""
    value = value.strip()
    if not value or value == "infinity":
        return None
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
    total = 0.0
    for word in value.split():
        number = word.rstrip("abcdefghijklmnopqrstuvwxyz")
        suffix = word[len(number) :] or "s"
        if suffix not in units or not number:
            raise ValueError(f"not a systemd time span: {value!r}")
        total += float(number) * units[suffix]
    return total


@dataclass(frozen=True)
class UnitState:
    """One unit as `systemctl show` describes it."""

    id: str
    load_state: str
    active_state: str
    sub_state: str
    type: str
    main_pid: int
    invocation_id: str
    started_monotonic: int  # ExecMainStartTimestampMonotonic, µs; 0 if never started
    result: str
    start_timeout: float | None  # seconds; None: infinity
    stop_timeout: float | None
    restarts: int  # NRestarts: automatic restarts since the unit was last started by hand
    restart_policy: str = ""  # Restart=: no, on-failure, always, …
    restart_sec: float | None = None  # RestartUSec, seconds

    @property
    def auto_restarting(self) -> bool:
        """Failed, and waiting for its Restart= policy to start it again (RestartSec)."""
        return self.active_state == "activating" and self.sub_state == "auto-restart"

    @property
    def restarts_itself(self) -> bool:
        """Whether systemd starts it again after a failure (Restart= other than no)."""
        return self.restart_policy not in ("", "no")

    @classmethod
    def from_show(cls, props: dict[str, str], asked: str = "") -> UnitState:
        """Build from one block of `systemctl show`; missing properties read as empty."""

        def number(key: str) -> int:
            raw = props.get(key, "").strip()
            return int(raw) if raw.isdigit() else 0

        def span(key: str) -> float | None:
            try:
                return usec(props.get(key, ""))
            except ValueError:
                return None

        return cls(
            id=props.get("Id", "") or asked,
            load_state=props.get("LoadState", ""),
            active_state=props.get("ActiveState", ""),
            sub_state=props.get("SubState", ""),
            type=props.get("Type", ""),
            main_pid=number("MainPID"),
            invocation_id=props.get("InvocationID", ""),
            started_monotonic=number("ExecMainStartTimestampMonotonic"),
            result=props.get("Result", ""),
            start_timeout=span("TimeoutStartUSec"),
            stop_timeout=span("TimeoutStopUSec"),
            restarts=number("NRestarts"),
            restart_policy=props.get("Restart", ""),
            restart_sec=span("RestartUSec"),
        )

    @property
    def loaded(self) -> bool:
        """Tell whether systemd knows the unit (its file was found and parsed)."""
        return self.load_state == "loaded"

    @property
    def label(self) -> str:
        """Return `LoadState/ActiveState`, as the preflight table shows it."""
        return f"{self.load_state or '?'}/{self.active_state or '?'}"

    def verdict(self) -> str:
        """Say in words what state the unit is in, for a refusal or a table."""
        if self.load_state == "not-found":
            return f"service {self.id} not found (LoadState=not-found)"
        if self.load_state == "masked":
            return f"service {self.id} is masked"
        if not self.loaded:
            return f"service {self.id} is not loaded (LoadState={self.load_state or '?'})"
        state = f"{self.active_state}/{self.sub_state}" if self.sub_state else self.active_state
        if self.active_state == "failed":
            return f"service {self.id} has failed ({state}, Result={self.result or '?'})"
        if self.auto_restarting:
            # NRestarts counts the restarts done: the one it waits for is not in it yet
            wait = f" in {self.restart_sec:g}s" if self.restart_sec else ""
            if self.restarts:
                return (
                    f"service {self.id} is in a crash loop ({state}, restarted"
                    f" {self.restarts} time(s) by systemd and failing again,"
                    f" Result={self.result or '?'}; its next start{wait})"
                )
            return (
                f"service {self.id} failed and waits for its first automatic restart"
                f" ({state}, Restart={self.restart_policy or '?'}{wait},"
                f" Result={self.result or '?'})"
            )
        if self.active_state in ("activating", "deactivating", "reloading"):
            return f"service {self.id} is {self.active_state} ({state}), not settled"
        if self.active_state == "inactive":
            return f"service {self.id} is inactive ({state}), not active"
        return f"service {self.id} is {state}"

    def started_since(self, before: UnitState) -> bool:
        """Tell whether this is a new invocation of the service compared with `before`.

        InvocationID changes with every start (pids are reused, and a oneshot service
        has no main pid at all); ExecMainStartTimestampMonotonic is the fallback."""
        if self.invocation_id and before.invocation_id:
            return self.invocation_id != before.invocation_id
        if self.started_monotonic and before.started_monotonic:
            return self.started_monotonic != before.started_monotonic
        return self.main_pid not in (0, before.main_pid)


GLOB_CHARS = frozenset("*?[")


def is_pattern(spec: str) -> bool:
    """Tell whether a unit spec is a glob pattern (resolved on each host)."""
    return any(c in GLOB_CHARS for c in spec)


def list_units_command(patterns: list[str]) -> str:
    """Return the read-only command listing the loaded units matching these patterns."""
    quoted = " ".join(shlex.quote(p) for p in patterns)
    return f"systemctl list-units --all --plain --no-legend --full -- {quoted}"


def parse_list_units(text: str) -> list[str]:
    """Return the unit names of `systemctl list-units --plain --no-legend` output."""
    names = []
    for line in text.splitlines():
        words = line.replace("●", " ").split()
        if words:
            names.append(words[0])
    return names


def resolve_units(conn: Remote, specs: list[str]) -> tuple[list[str], str | None]:
    """Return the host's unit names for the inventory's names and patterns, or an error."""
    patterns = [s for s in specs if is_pattern(s)]
    matched: list[str] = []
    if patterns:
        listed = conn.run(list_units_command(patterns))
        if not listed.ok:
            return [], listed.describe()
        matched = parse_list_units(listed.stdout)
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in matched):
                return [], f"no unit on this host matches {pattern!r}"
    names = [s for s in specs if not is_pattern(s)]
    return list(dict.fromkeys([*names, *matched])), None


def show_units(conn: Remote, units: list[str]) -> tuple[list[UnitState], str | None]:
    """Read the units' state by property name; return them in order, or an error."""
    return read_units(conn.run(show_command(units)), units)


def read_units(shown: CommandResult, units: list[str]) -> tuple[list[UnitState], str | None]:
    """The units' state from what show_command(units) printed, in order, or an error."""
    if not shown.ok:
        return [], shown.describe()
    blocks = parse_show(shown.stdout)
    if len(blocks) != len(units):
        return [], (
            f"`{shown.command}` described {len(blocks)} unit(s), not {len(units)}:"
            f" {' / '.join(shown.stdout.strip().splitlines()[-3:])}"
        )
    return [UnitState.from_show(b, asked) for b, asked in zip(blocks, units, strict=True)], None


LOG_LINES = 20


def log_command(unit: str, sudo: bool = True) -> str:
    """The read-only command that prints a unit's last log lines (journalctl, through
    sudo: the rule docs/commands.md documents; or as the user, in group systemd-journal)."""
    command = f"journalctl -u {shlex.quote(unit)} -n {LOG_LINES} --no-pager -o short-iso"
    return f"sudo -n {command}" if sudo else command


def log_tail(conn: Remote, unit: str) -> str:
    """A unit's last log lines, or why they could not be read. Never raises."""
    tried = []
    for sudo in (True, False):
        result = conn.run(log_command(unit, sudo), timeout=10)
        if result.ok and result.stdout.strip() and "No entries" not in result.stdout:
            return result.stdout.strip()
        tried.append(" ".join(result.describe().split())[:300])
    return "(its log could not be read: " + "; ".join(tried) + ")"
