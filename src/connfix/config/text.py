"""Text from outside (the database, the hosts, runbooks) made safe for a terminal.

A query text, an application name, a host's command output or a runbook's description
may carry terminal control sequences: ESC (colours, cursor moves, a rewritten screen,
an OSC 52 clipboard write), BEL, C1 controls, or Unicode bidi overrides that show text
in another order than it is. They are shown visibly instead (`\\x1b`, `<U+202E>`); tabs
and newlines stay."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_BIDI = re.compile(r"[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def defang(text: str) -> str:
    """Show control characters and bidi overrides visibly."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return _BIDI.sub(lambda m: f"<U+{ord(m.group()):04X}>", text)
