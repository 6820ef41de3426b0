"""The incident journal: append-only JSON lines, flushed and fsynced as things happen.

The journal is the source of truth for a run: the report is rendered from it alone. No
secret may enter it: every line passes through the redactor before it is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import fields, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connfix import ConnfixError
from connfix.config.redact import mask_secrets
from connfix.record.events import Event

JOURNAL = "journal.jsonl"
MIN_SUBSTRING_SECRET = 8  # shorter secrets are redacted as whole values only
MEMO_CHARS, MEMO_ENTRIES = 200, 10_000  # the strings a Redactor remembers, how many


class JournalError(ConnfixError):
    """The journal cannot be created or written: the run stops before any change."""


def utc_now() -> str:
    """Return the current UTC time as ISO 8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Redactor:
    """Remove known secrets and anything that looks like a password.

    Secrets are replaced where they occur as values: a string that is the secret, and,
    for secrets of MIN_SUBSTRING_SECRET characters or more, any occurrence inside a
    string (a short secret such as `lab` or `true` would rewrite unrelated text).
    Anything shaped like `password=…`, `user:pass@` or SQL's `PASSWORD '…'` is masked
    whatever its value. `value` works on decoded JSON, so a journal line stays valid
    JSON whatever the secret is."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        # a run journals the same names and states over and over (1,000 sessions of one
        # application): each short string is redacted once (the secrets never change)
        self._done: dict[str, str] = {}

    def __call__(self, text: str) -> str:
        """Redact one string."""
        done = self._done.get(text)
        if done is not None:
            return done
        redacted = self._redact(text)
        if len(text) <= MEMO_CHARS:
            if len(self._done) >= MEMO_ENTRIES:
                self._done.clear()
            self._done[text] = redacted
        return redacted

    def _redact(self, text: str) -> str:
        if text in self.secrets:
            return "***"
        for secret in self.secrets:
            if len(secret) >= MIN_SUBSTRING_SECRET:
                text = text.replace(secret, "***")
        return mask_secrets(text)

    def value(self, value: Any) -> Any:
        """Redact every string in a decoded JSON value (keys are connfix's own)."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        return value


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        # one level: json.dumps comes back here for a dataclass inside (asdict would
        # deep-copy every value first, a third of journaling 1,000 operations)
        return {f.name: getattr(value, f.name) for f in fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    return str(value)


def _redacted_plain(value: Any, redact: Redactor) -> Any:
    """`value` as JSON would read it back, every string redacted: one pass over it
    (json.dumps with _plain, json.loads, then Redactor.value, as it was, took three).
    Keys become what JSON makes of them; a value JSON cannot hold goes through _plain
    and is converted again."""
    kind = type(value)
    if kind is str:
        return redact(value)
    if value is None or kind is int or kind is bool or kind is float:
        return value
    if isinstance(value, dict):
        return {
            k if type(k) is str else _json_key(k): _redacted_plain(v, redact)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redacted_plain(v, redact) for v in value]
    if isinstance(value, str):  # str.__str__: an enum's text, not its name (as JSON)
        return redact(str.__str__(value))
    if isinstance(value, int):  # an IntEnum: its number (bool is not subclassable)
        return int(value)
    if isinstance(value, float):
        return float(value)
    return _redacted_plain(_plain(value), redact)


def _json_key(key: Any) -> str:
    """A dict key as json.dumps writes it."""
    if isinstance(key, str):
        return str.__str__(key)
    if key is True:
        return "true"
    if key is False:
        return "false"
    if key is None:
        return "null"
    if isinstance(key, int):
        return int.__repr__(key)
    if isinstance(key, float):
        return json.dumps(float(key))
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


def incidents_base(flag: str | None, configured: str | None) -> Path:
    """Return where incidents go: --incidents-dir, the inventory, $CONNFIX_INCIDENTS_DIR."""
    from connfix.config.files import expand

    return expand(flag or configured or os.environ.get("CONNFIX_INCIDENTS_DIR") or "incidents")


def new_incident_dir(base: Path, environment: str) -> Path:
    """Create incidents/<UTC timestamp>-<env>/ (mode 0700), never reusing one."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    # a zero-setup run is named user@host:port/dbname: one path component, always
    environment = re.sub(r"[^A-Za-z0-9._@-]", "_", environment)
    try:
        from connfix.config.files import make_dir

        make_dir(base)
        for attempt in range(1, 100):
            suffix = "" if attempt == 1 else f"-{attempt}"
            path = base / f"{stamp}-{environment}{suffix}"
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:
                continue
            return path
    except OSError as exc:
        raise JournalError(
            f"cannot create an incident directory under {base}: {exc.strerror or exc};"
            " nothing was changed (choose another place with --incidents-dir)"
        ) from None
    raise JournalError(f"cannot create an incident directory under {base}: too many runs")


class Journal:
    """One incident's journal.jsonl, opened for appending with mode 0600."""

    def __init__(self, directory: Path, redactor: Redactor | None = None) -> None:
        self.directory = directory
        self.path = directory / JOURNAL
        self.redact = redactor or Redactor()
        self.seq = 0
        self._lock = threading.Lock()  # a rolling restart records from several threads
        # called with each entry recorded (as written: redacted), outside the lock
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.fchmod(fd, 0o600)
        except OSError as exc:
            raise JournalError(
                f"cannot write the journal {self.path}: {exc.strerror or exc}; nothing was changed"
            ) from None
        self._fd: int | None = fd

    def record(self, event: Event, **fields: Any) -> dict[str, Any]:
        """Append one event and make it durable before returning."""
        with self._lock:
            entry = self._record(event, fields)
        for listener in self.listeners:
            with contextlib.suppress(Exception):  # a listener never stops the journal
                listener(entry)
        return entry

    def record_many(self, events: list[tuple[Event, dict[str, Any]]]) -> None:
        """Append several events (one batch of operations) with one write and one fsync:
        each is still one complete line; all are durable before returning."""
        if events:
            with self._lock:
                self._write(b"".join(self._line(event, fields)[0] for event, fields in events))

    def _line(self, event: Event, fields: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
        """One event as its journal line, and as the line reads back (plain, redacted)."""
        if self._fd is None:
            raise JournalError(f"the journal {self.path} is closed")
        self.seq += 1
        entry = {"ts": utc_now(), "seq": self.seq, "event": event, **fields}
        plain: dict[str, Any] = _redacted_plain(entry, self.redact)
        return (json.dumps(plain, ensure_ascii=False) + "\n").encode("utf-8"), plain

    def _record(self, event: Event, fields: dict[str, Any]) -> dict[str, Any]:
        data, plain = self._line(event, fields)
        self._write(data)
        return plain

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            raise JournalError(f"the journal {self.path} is closed")
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(f"short write ({written} of {len(data)} bytes)")
            os.fsync(self._fd)
        except OSError as exc:
            raise JournalError(
                f"cannot write the journal {self.path}: {getattr(exc, 'strerror', None) or exc}"
            ) from None

    def close(self) -> None:
        """Close the file; later records fail."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_journal(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the events of a journal; a last line cut mid-write is skipped. A line that
    is not an event as connfix writes them (an object with a string `event` and `ts`)
    raises ValueError naming the line."""
    from connfix.config import files

    text = files.read_text(path, 200_000_000)
    # lines end at "\n" only: str.splitlines would also split inside a value at U+0085,
    # U+2028, \x1c… (an application name from the database may hold them)
    lines = text.split("\n")
    lines.pop()  # "" after the last newline; else the torn last write of a killed run
    for number, line in enumerate(lines, start=1):
        try:
            event = json.loads(line)
        except RecursionError:
            raise ValueError(f"line {number} is nested too deeply to be a journal event") from None
        if not (
            isinstance(event, dict)
            and isinstance(event.get("event"), str)
            and isinstance(event.get("ts"), str)
        ):
            raise ValueError(f"line {number} is not a connfix journal event")
        yield event


def journal_of(incident: Path) -> Path:
    """Accept an incident directory or its journal file; return the journal's path."""
    return incident / JOURNAL if incident.is_dir() else incident


def resume_state(incident: Path, environment: str) -> tuple[Path, dict[str, list[str]]]:
    """Read an earlier run's journal: what it finished, per action (hosts restarted)."""
    from connfix import InputError

    journal = journal_of(incident)
    if not journal.is_file():
        raise InputError(f"--resume {incident}: no journal there ({JOURNAL} not found)")
    try:
        events = list(read_journal(journal))
    except (OSError, ValueError) as exc:
        raise InputError(f"--resume {incident}: the journal cannot be read: {exc}") from None
    start = next((e for e in events if e.get("event") == Event.RUN_START), None)
    if start is None or start.get("environment") != environment:
        found = start.get("environment") if start else None
        raise InputError(
            f"--resume {incident}: that run was for environment {found!r}, not {environment!r}"
        )
    earlier = start.get("resume_done")
    hosts = earlier.get("rolling_restart") if isinstance(earlier, dict) else None
    done: dict[str, list[str]] = {"rolling_restart": []}
    for number, host in enumerate(
        [
            *(hosts if isinstance(hosts, list) else []),
            *(e.get("host") for e in events if e.get("event") == Event.HOST_DONE),
        ]
    ):
        if not isinstance(host, str) or not host:
            raise InputError(
                f"--resume {incident}: the journal does not have the shape connfix writes"
                f" (a host done without a host name, entry {number + 1}); was it edited?"
            )
        if host not in done["rolling_restart"]:
            done["rolling_restart"].append(host)
    return journal.parent, done


RECENT_JOURNALS = 50  # how many of an environment's newest incidents last_change reads


def last_change(incidents_dir: Path, environment: str) -> float | None:
    """When a run of `environment` last changed something (epoch seconds), read from
    the newest journals in the incidents directory — so every runner sees it: `connfix
    serve` after a restart, and operators' `--yes` runs writing to the same directory.
    A change: a session ended or cancelled, a PgBouncer command answered, a host whose
    restart began. None: no such run is journaled there."""
    suffix = "-" + re.sub(r"[^A-Za-z0-9._@-]", "_", environment)
    try:
        names = sorted(
            (p for p in incidents_dir.iterdir() if p.name.endswith(suffix)),
            key=lambda p: p.name,
            reverse=True,
        )[:RECENT_JOURNALS]
    except OSError:
        return None
    for incident in names:
        try:
            events = list(read_journal(incident / JOURNAL))
        except (OSError, ValueError):
            continue
        changes = [
            e["ts"]
            for e in events
            if e.get("event") == Event.HOST_START
            or (
                e.get("event") == Event.OPERATION
                and (e.get("ok") is True or e.get("result") in ("terminated", "cancelled"))
            )
        ]
        if changes:
            try:
                return datetime.fromisoformat(changes[-1].replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None
