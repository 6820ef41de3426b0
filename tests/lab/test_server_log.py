"""The refusals counted through SQL in a large log, on the real server: the server reads
only the part of each file in the window (found by a binary search on the lines'
times), a bounded piece at a time ending at a line's end, and the count is the one a
plain reading of the files gives; a role without pg_read_binary_file reads small files
whole and is told why a large one was left out."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import psycopg
import pytest

from connfix.db import server_log
from connfix.db.pg import Session
from tests.helpers import Lab
from tests.lab.test_postmortem import server_log as lab_log_file

CHUNK, PROBE = 32 * 1024, 2 * 1024  # small, so that a file of 700 KB takes many of each
HOURS = 24


def write_log(
    path: Path, now: datetime, count: int = 9000
) -> tuple[list[tuple[int, datetime]], int]:
    """A day of a server's log ending now: refusals among other FATAL lines, statements
    with multibyte characters, backslashes and a continuation line, a byte that is not
    UTF-8, a line longer than a probe. Return each line's (offset, time) and the
    longest line's length."""
    lines: list[bytes] = []
    began = now - timedelta(hours=HOURS)
    for i in range(count):
        when = began + timedelta(seconds=HOURS * 3600 * i / count)
        stamp = when.strftime("%Y-%m-%d %H:%M:%S.") + f"{when.microsecond // 1000:03d} UTC"
        if i % 37 == 0:
            lines.append(f"{stamp} [{i}] FATAL:  sorry, too many clients already".encode())
        elif i % 41 == 0:
            text = f"{stamp} [{i}] FATAL:  remaining connection slots are reserved for roles"
            lines.append(text.encode())
        elif i % 43 == 0:
            lines.append(f"{stamp} [{i}] LOG:  statement: SELECT 'hé\\llo ✓ wörld'".encode())
            lines.append(b"\tAND x = 'sorry, too many clients already' -- a query, not one")
        elif i % 47 == 0:
            lines.append(f"{stamp} [{i}] LOG:  application_name caf\xe9".encode("latin-1"))
        elif i == count // 2:
            lines.append(f"{stamp} [{i}] LOG:  statement: SELECT '{'x' * 3 * PROBE}'".encode())
        else:
            lines.append(f"{stamp} [{i}] FATAL:  terminating connection ({i})".encode())
    offsets: list[tuple[int, datetime]] = []
    at = 0
    for line in lines:
        when = server_log.line_time(line.decode("utf-8", "replace"), UTC)
        if when is not None:
            offsets.append((at, when))
        at += len(line) + 1
    path.write_bytes(b"\n".join(lines) + b"\n")
    return offsets, max(len(line) for line in lines) + 1


def counted_here(directory: Path, since: datetime, until: datetime) -> int:
    """The refusals in every file of the log directory, read here line by line."""
    total = 0
    for file in directory.iterdir():
        for raw in file.read_bytes().split(b"\n"):
            line = raw.decode("utf-8", "replace")
            if server_log._MATCH.search(line):
                when = server_log.line_time(line, UTC)
                total += when is not None and since <= when <= until
    return total


@pytest.fixture
def big_log(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A day of log in the server's log directory, read in small pieces and probes."""
    monkeypatch.setattr(server_log, "CHUNK_BYTES", CHUNK)
    monkeypatch.setattr(server_log, "PROBE_BYTES", PROBE)
    directory = lab_log_file(lab).parent
    path = directory / f"connfix-test-{uuid.uuid4().hex[:8]}.log"
    now = datetime.now(UTC)
    # larger than every other file there (the test of the grants relies on it)
    others = max((f.stat().st_size for f in directory.iterdir()), default=0)
    offsets, longest = write_log(path, now, max(9000, others // 40 + 100))
    owner = directory.stat()
    os.chown(path, owner.st_uid, owner.st_gid)
    try:
        yield {"path": path, "now": now, "offsets": offsets, "longest": longest}
    finally:
        path.unlink()


def scans_of(conn: psycopg.Connection[Any], name: str) -> list[tuple[int, int]]:
    """Record the (offset, length) of each piece of `name` the server is asked to scan."""
    seen: list[tuple[int, int]] = []
    execute = conn.execute

    def spy(query: Any, params: Any = None, **kwargs: Any) -> Any:
        if query == server_log._SCAN and params["name"] == name:
            seen.append((params["offset"], params["length"]))
        return execute(query, params, **kwargs)

    conn.execute = spy  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize("hours", [1, HOURS + 1])
def test_a_large_log_is_read_from_its_window_in_bounded_pieces(
    lab: Lab, big_log: dict[str, Any], hours: int
) -> None:
    path: Path = big_log["path"]
    since, until = big_log["now"] - timedelta(hours=hours), datetime.now(UTC) + timedelta(seconds=5)
    with lab.superuser() as conn:
        scans = scans_of(conn, path.name)
        found = server_log.through_sql(Session(conn, "primary", None), since, until)
    assert found.unknown is None and not found.skipped, found
    assert path.name in found.files
    assert found.refused == counted_here(path.parent, since, until) > 0
    size = path.stat().st_size
    # the pieces follow one another to the file's end, each bounded
    assert scans[-1][0] + scans[-1][1] == size
    for (offset, length), (after, _) in pairwise(scans):
        assert offset + length == after
    assert all(length <= CHUNK + big_log["longest"] for _, length in scans), scans
    first = scans[0][0]
    cutoff = since - server_log.SLACK
    in_window = [at for at, when in big_log["offsets"] if when >= cutoff]
    if hours > HOURS:  # the file began inside the window: all of it
        assert first == 0
    else:  # read from just before the window, every line of it, little else
        assert first <= min(at for at, when in big_log["offsets"] if when >= since)
        assert first >= in_window[0] - 2 * PROBE - big_log["longest"], (first, in_window[0])
        assert sum(length for _, length in scans) < size / 10


@pytest.fixture
def log_reader(lab: Lab) -> Iterator[str]:
    """A role that may list the log directory (pg_monitor) and nothing else yet."""
    with lab.superuser() as conn:
        conn.execute("DROP ROLE IF EXISTS cfx_logreader")
        conn.execute("CREATE ROLE cfx_logreader LOGIN IN ROLE pg_monitor")
    socket_dir = lab.paths.lab_dir() / "pg" / "run"
    yield f"host={socket_dir} port={lab.paths.pg_port()} dbname=postgres user=cfx_logreader"
    with lab.superuser() as conn:
        conn.execute("REVOKE ALL ON FUNCTION pg_read_file(text) FROM cfx_logreader")
        conn.execute(
            "REVOKE ALL ON FUNCTION pg_read_binary_file(text, bigint, bigint) FROM cfx_logreader"
        )
        conn.execute("DROP ROLE cfx_logreader")


def test_each_grant_reads_what_it_can_and_says_what_it_left_out(
    lab: Lab, big_log: dict[str, Any], log_reader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path: Path = big_log["path"]
    # between the others' sizes (which grow: a refused read is logged) and this one's
    others = max((f.stat().st_size for f in path.parent.iterdir() if f != path), default=0)
    assert path.stat().st_size > 2 * others
    monkeypatch.setattr(server_log, "WHOLE_FILE_BYTES", (others + path.stat().st_size) // 2)
    since, until = big_log["now"] - timedelta(hours=2), datetime.now(UTC) + timedelta(seconds=5)

    def count() -> server_log.Refusals:
        with psycopg.connect(log_reader, autocommit=True) as conn:
            return server_log.through_sql(Session(conn, "primary", None), since, until)

    refused = count()  # pg_monitor alone: the files are listed, none may be read
    assert refused.refused is None or refused.unknown, refused
    assert "pg_read_binary_file(text, bigint, bigint)" in (refused.unknown or ""), refused
    with lab.superuser() as conn:
        conn.execute("GRANT EXECUTE ON FUNCTION pg_read_file(text) TO cfx_logreader")
    whole = count()  # small files whole; this one is too large to be read whole
    assert whole.unknown is None, whole
    assert path.name not in whole.files
    (said,) = [s for s in whole.skipped if s.startswith(path.name)]
    assert "without EXECUTE on pg_read_binary_file(text, bigint, bigint)" in said, said
    with lab.superuser() as conn:
        conn.execute(
            "GRANT EXECUTE ON FUNCTION pg_read_binary_file(text, bigint, bigint) TO cfx_logreader"
        )
    pieces = count()
    assert pieces.unknown is None and not pieces.skipped, pieces
    assert path.name in pieces.files
    assert pieces.refused == counted_here(path.parent, since, until) > 0
