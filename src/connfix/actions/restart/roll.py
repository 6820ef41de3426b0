"""The roll: hosts in batches, a batch's hosts at once, each batch only after the last
one passed every gate; the first failure halts it, and the hosts not reached are left
alone."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from connfix.actions.restart.gates import GateContext
from connfix.config.units import format_duration
from connfix.record.events import Event

if TYPE_CHECKING:
    from connfix.actions.restart.host import HostOutcome
    from connfix.config.inventory import Host


class RollControl(GateContext, Protocol):
    """What the roll needs of the run: progress, Ctrl-C-aware waits, the journal."""

    @property
    def interrupted(self) -> bool: ...

    def record(self, event: Event, **fields: Any) -> None: ...


@dataclass
class RollResult:
    """How a roll ended."""

    ok: bool
    done: list[str] = field(default_factory=list)
    failures: list[HostOutcome] = field(default_factory=list)
    untouched: list[str] = field(default_factory=list)
    why: str = ""  # why it halted
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def failed(self) -> list[str]:
        return [f.host for f in self.failures]

    def summary(self) -> str:
        if self.ok:
            return (
                f"restarted {len(self.done)} host(s) in {format_duration(self.seconds)}:"
                f" {', '.join(self.done)}"
            )
        text = f"halted ({self.why}): done {', '.join(self.done) or 'none'}"
        if self.failures:
            text += "; failed " + "; ".join(
                f"{f.host} at {f.gate}: {f.detail}" for f in self.failures
            )
        return text + f"; not touched {', '.join(self.untouched) or 'none'}"


def batches(targets: list[Host], size: int) -> list[list[Host]]:
    """Split the ordered targets into batches of `size`, order kept."""
    return [targets[i : i + size] for i in range(0, len(targets), size)]


def roll(
    ctx: RollControl,
    targets: list[Host],
    restart_one: Callable[[Host], HostOutcome],
    batch: int,
    pause: float,
    parallel: Callable[[list[Host], Callable[[Host], HostOutcome]], list[HostOutcome]],
) -> RollResult:
    """Restart the targets batch by batch (`parallel` runs one batch's hosts at once and
    returns their outcomes in order); halt at the first failure or on Ctrl-C."""
    done: list[str] = []
    started = time.monotonic()
    groups = batches(targets, batch)

    def halt(why: str, failures: list[HostOutcome] | None = None) -> RollResult:
        failed = {f.host for f in failures or []}
        untouched = [h.name for h in targets if h.name not in done and h.name not in failed]
        ctx.record(
            Event.ROLL_HALTED,
            reason=why,
            done=done,
            failed=[f.host for f in failures or []],
            untouched=untouched,
        )
        return RollResult(
            False,
            done,
            failures or [],
            untouched,
            why,
            interrupted=why == "interrupted",
            seconds=time.monotonic() - started,
        )

    for number, group in enumerate(groups, start=1):
        if ctx.interrupted:
            return halt("interrupted")
        outcomes = parallel(group, restart_one)
        done.extend(o.host for o in outcomes if o.ok)
        failures = [o for o in outcomes if not o.ok]
        if failures:
            return halt("a host failed its gates", failures)
        if pause and number < len(groups):
            ctx.progress(f"pause {format_duration(pause)} before the next host")
            if not ctx.sleep(pause):
                return halt("interrupted")
    return RollResult(True, done, seconds=time.monotonic() - started)
