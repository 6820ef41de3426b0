"""Durations as operators write them: 500ms, 30s, 10m, 2h, 1d."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from connfix.config.records import Rule

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_FACTOR = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_DURATION_S = 7 * 86400.0


def parse_duration(value: object) -> float:
    """Return seconds for a duration such as '10m'; raise ValueError with the reason."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a duration such as '30s' or '10m', got {value!r}")
    if isinstance(value, int | float):
        raise ValueError(
            f"a duration needs a unit (ms, s, m, h, d): write '{value}s', not {value!r}"
        )
    match = _DURATION.match(value)
    if not match:
        raise ValueError(
            f"not a duration: {value!r} (use a number and a unit: 500ms, 30s, 10m, 2h, 1d)"
        )
    seconds = float(match.group(1)) * _FACTOR[match.group(2)]
    if seconds > MAX_DURATION_S:
        raise ValueError(f"duration {value!r} is out of range (at most 7d)")
    return seconds


def format_duration(seconds: float) -> str:
    """Render seconds compactly: 0.4s, 42s, 3m05s, 2h10m."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 10:
        return f"{seconds:.0f}s" if float(seconds).is_integer() else f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{(whole % 3600) // 60:02d}m"


def duration_text(seconds: float) -> str:
    """Render seconds exactly, in a form parse_duration reads back: 500ms, 3s, 10m, 2h."""
    millis = round(seconds * 1000)
    for unit, factor in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if millis and millis % factor == 0:
            return f"{millis // factor}{unit}"
    return f"{millis}ms"


def check_between(seconds: float, low: float, high: float) -> float:
    """Return seconds if within [low, high]; raise ValueError saying the bounds."""
    if not low <= seconds <= high:
        raise ValueError(f"must be between {format_duration(low)} and {format_duration(high)}")
    return seconds


def duration(check: Callable[[float], float] | None = None, **constraints: Any) -> Rule:
    """A duration field's rule: seconds, or a text such as "5s", "2m", then `check` and
    pydantic.Field's `constraints` (connfix.config.records)."""
    return Rule(check, before=parse_duration, **constraints)


def between(low: float, high: float) -> Rule:
    """A duration field bounded to [low, high], its error saying the bounds."""
    return duration(lambda seconds: check_between(seconds, low, high))
