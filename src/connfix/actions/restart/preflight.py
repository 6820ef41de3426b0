"""The rolling restart's preflight: every target host checked read-only, in parallel,
before anything is restarted — SSH and host key, each unit loaded and in a state that
may be restarted, and the restart command permitted (`sudo -n -l`)."""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from connfix.hosts import systemd
from connfix.hosts.systemd import UnitState

if TYPE_CHECKING:
    from connfix.config.inventory import Environment, Host, Service
    from connfix.hosts.remote import CommandResult, Remote


@dataclass
class Preflight:
    """What the read-only preflight found on one host."""

    host: str
    ok: bool = False
    reachable: bool = False
    host_key: str = "n/a"
    unit: str = "n/a"  # LoadState/ActiveState of each unit
    main_pid: int = 0
    permitted: bool | None = False  # None: sudo cannot tell without a password
    probed: bool = False  # the restart permission was checked (the units were fine)
    detail: str = ""
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    units: list[UnitState] = field(default_factory=list)
    unit_services: dict[str, str] = field(default_factory=dict)  # unit → its service
    at: float = field(default_factory=time.monotonic)
    remote: Remote | None = field(default=None, repr=False)

    def journal(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k not in ("remote", "at", "units")}
        data["units"] = [u.__dict__ for u in self.units]
        return data


# sudo's options that take an argument (sudo 1.9), short and long
_SUDO_ARG_SHORT = frozenset("CDghpRrtTUu")
_SUDO_ARG_LONG = frozenset(
    {
        "--close-from",
        "--chdir",
        "--group",
        "--host",
        "--prompt",
        "--chroot",
        "--role",
        "--type",
        "--command-timeout",
        "--other-user",
        "--user",
    }
)
# of those, the ones that choose whom the command runs as: the probe keeps them
_SUDO_TARGET = {"u": "-u", "g": "-g", "--user": "-u", "--group": "-g"}


def permission_probe(restart_command: str) -> str:
    """Return a read-only command telling whether the restart command may run.

    For `sudo [OPTIONS] COMMAND…`: `sudo -n -l [-u USER] [-g GROUP] -- COMMAND…`, as
    the same target user and group; sudo's own options are skipped with their
    arguments (`-u USER`, `-uUSER`, `--user=USER`, `-C 3`…). Otherwise: whether the
    command exists (`command -v`)."""
    words = shlex.split(restart_command)
    if not words or words[0] != "sudo":
        return "command -v " + shlex.quote(words[0]) if words else "false"
    target: list[str] = []
    rest = words[1:]
    while rest and rest[0].startswith("-") and rest[0] != "-":
        word = rest.pop(0)
        if word == "--":
            break
        if word.startswith("--"):
            name, eq, value = word.partition("=")
            if name in _SUDO_ARG_LONG and not eq:
                value = rest.pop(0) if rest else ""
            if name in _SUDO_TARGET:
                target += [_SUDO_TARGET[name], value]
            continue
        letters = word[1:]
        for position, letter in enumerate(letters):
            if letter in _SUDO_ARG_SHORT:
                value = letters[position + 1 :] or (rest.pop(0) if rest else "")
                if letter in _SUDO_TARGET:
                    target += [_SUDO_TARGET[letter], value]
                break
    probe = ["sudo", "-n", "-l", *target, "--", *rest]
    return " ".join(shlex.quote(w) for w in probe)


def probe_verdict(result: CommandResult) -> tuple[bool | None, str]:
    """Read the permission probe: (True, "") permitted, (False, why) not permitted,
    (None, why) sudo cannot tell without a password (`listpw=always`, say)."""
    if result.ok:
        return True, ""
    output = result.output_tail
    if result.exit_code is not None and "password is required" in output:
        return None, (
            "cannot check without a password: sudo asks for one to list permissions"
            " (its listpw setting); the restart itself runs with -n and fails at once"
            " if it needs one"
        )
    return False, (
        f"the restart command is not permitted: {result.command} exited"
        f" {result.exit_code}" + (f": {output}" if output else "")
    )


def unit_refusal(unit: UnitState, include_failed: bool) -> str | None:
    """Return why the preflight refuses to restart this unit, or None.

    active: restart. failed, or a crash loop (activating/auto-restart): refused unless
    include_failed, because restarting may be the fix but the operator decides.
    activating, deactivating, reloading: refused, never restart a unit mid-transition.
    inactive: refused, someone stopped it; connfix does not start stopped services."""
    if not unit.loaded:
        return unit.verdict()
    if unit.active_state == "active":
        return None
    broken = unit.active_state == "failed" or (
        unit.active_state == "activating" and unit.sub_state == "auto-restart"
    )
    if broken:
        if include_failed:
            return None
        return unit.verdict() + "; restarting it may be the fix: rerun with --include-failed"
    if unit.active_state == "inactive":
        return unit.verdict() + " (stopped, not failed: connfix does not start it)"
    return unit.verdict() + ": wait for it to settle, then retry"


WATCH_MIN_S, WATCH_MAX_S = 1.0, 5.0  # how long an active unit with NRestarts > 0 is watched


def crash_loops(conn: Remote, result: Preflight) -> list[str]:
    """Watch the active units systemd has restarted by itself (NRestarts > 0) for a
    short while: a crash-looping `Type=simple` unit reads `active` between two crashes.
    Return a refusal for each one restarted again (or gone from active) meanwhile; a
    unit that stays up keeps a warning saying its NRestarts. `result.units` is updated
    to the last state seen."""
    watched = [u for u in result.units if u.active_state == "active" and u.restarts > 0]
    if not watched:
        return []
    longest = max((u.restart_sec or 0.1) for u in watched)
    window = min(WATCH_MAX_S, max(WATCH_MIN_S, 2 * longest + 1))
    deadline = time.monotonic() + window
    first = {u.id: u for u in watched}
    changed: dict[str, UnitState] = {}
    while time.monotonic() < deadline and len(changed) < len(watched):
        time.sleep(0.2)
        now, error = systemd.show_units(conn, list(first))
        if error is not None:
            break
        for unit in now:
            was = first[unit.id]
            if unit.id not in changed and (
                unit.started_since(was)
                or unit.restarts > was.restarts
                or unit.active_state != "active"
            ):
                changed[unit.id] = unit
    refusals = []
    for unit in watched:
        if unit.id in changed:
            later = changed[unit.id]
            refusals.append(
                f"service {unit.id} is in a crash loop: it read {unit.active_state} between two"
                f" crashes, and within {window:g}s systemd restarted it again (NRestarts"
                f" {unit.restarts} → {later.restarts}; now {later.active_state}/{later.sub_state},"
                f" Result={later.result or '?'})"
            )
        else:
            result.warnings.append(
                f"{unit.id}: NRestarts={unit.restarts} (systemd restarted it by itself since it"
                f" was last started by hand); up for the {window:g}s it was watched"
            )
    result.units = [changed.get(u.id, u) for u in result.units]
    return refusals


def preflight(
    host: Host,
    env: Environment,
    include_failed: bool = False,
    services: list[Service] | None = None,
    opened: Remote | None = None,
) -> Preflight:
    """Check one host read-only: SSH, host key, the units of its services (all of the
    host's, or these) loaded and active, the restart of each allowed. `opened` is the
    run's connection to the host (its health checks), used when it is still up: one SSH
    login fewer per host; its host key was checked when it was opened."""
    from connfix.hosts import remote

    started = time.monotonic()
    result = Preflight(host.name)
    if opened is not None and opened.conn.is_connected:
        conn, result.reachable, result.host_key, error = opened, True, "known", None
    else:
        conn, result.reachable, result.host_key, error = remote.open_checked(host, env.ssh)
    result.remote = conn
    if error is not None:
        result.detail = error
        return _done(result, started)
    chosen = services if services is not None else env.services_on(host)
    if not chosen:
        result.detail = "no service of this host to restart"
        return _done(result, started)
    by_label = {s.label: s for s in chosen}
    for service in chosen:
        names, error = systemd.resolve_units(conn, service.unit_specs())
        if error is not None:
            result.detail = error if len(chosen) == 1 else f"{service.label}: {error}"
            return _done(result, started)
        for name in names:
            result.unit_services.setdefault(name, service.label)
    # The permission probes are read-only and need only the units' names: they run on
    # the same connection while systemd is asked for the units' state (one round trip a
    # host instead of two); they are read only for units that pass.
    units = list(result.unit_services)
    probes = {
        name: permission_probe(by_label[result.unit_services[name]].restart_argv(name))
        for name in units
    }
    asked = [systemd.show_command(units), *dict.fromkeys(probes.values())]
    answers = dict(zip(asked, remote.parallel(asked, conn.run), strict=True))
    result.units, error = systemd.read_units(answers[asked[0]], units)
    if error is not None:
        result.detail = error
        return _done(result, started)
    result.unit = ", ".join(
        (u.label if len(result.units) == 1 else f"{u.id} {u.label}") for u in result.units
    )
    result.main_pid = result.units[0].main_pid
    looping = crash_loops(conn, result)
    refusals = [r for u in result.units if (r := unit_refusal(u, include_failed))]
    if not include_failed:
        refusals += [
            f"{why}; restarting it may be the fix: rerun with --include-failed" for why in looping
        ]
    if refusals:
        result.detail = "; ".join(refusals)
        return _done(result, started)
    result.probed, result.permitted = True, True
    for unit in result.units:
        allowed, why = probe_verdict(answers[probes[unit.id]])
        if allowed is False:
            result.permitted, result.detail = False, why
            return _done(result, started)
        if allowed is None:
            result.permitted = None
            result.warnings.append(why)
    result.ok = True
    result.detail = "; ".join(result.warnings) or "ok"
    return _done(result, started)


def _done(result: Preflight, started: float) -> Preflight:
    result.seconds = round(time.monotonic() - started, 3)
    return result
