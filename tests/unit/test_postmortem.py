"""The postmortem's parts on their own: reading refusals from log lines of every format
PostgreSQL writes, the onset in a history, the timeline from onset, the chart from a
journal (the lab tests, tests/lab/test_postmortem.py, run them on real servers and a
real renderer)."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connfix.db import server_log
from connfix.engine.postmortem import onset
from connfix.record import chart, history, postmortem, report
from connfix.record.events import Event
from connfix.record.journal import Journal

PARIS = ZoneInfo("Europe/Paris")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("2026-12-05 02:13:22.123 UTC [77] FATAL:  sorry, too many clients already",
         datetime(2026, 12, 5, 2, 13, 22, 123000, UTC)),
        ("2026-12-05 03:13:22 CET [77] app@appdb FATAL:  remaining connection slots are"
         " reserved for roles with the SUPERUSER attribute",
         datetime(2026, 12, 5, 2, 13, 22, tzinfo=UTC)),
        ("2026-12-05 04:13:22.5 +02 [77] FATAL:  sorry, too many clients already",
         datetime(2026, 12, 5, 2, 13, 22, 500000, UTC)),
        ('2026-12-05 02:13:22.123 UTC,"app","appdb",77,"127.0.0.1:5000",,,,FATAL,53300,'
         '"sorry, too many clients already"', datetime(2026, 12, 5, 2, 13, 22, 123000, UTC)),
        ('{"timestamp":"2026-12-05 02:13:22.123 UTC","pid":77,"error_severity":"FATAL",'
         '"message":"sorry, too many clients already"}',
         datetime(2026, 12, 5, 2, 13, 22, 123000, UTC)),
        ("[77] FATAL:  sorry, too many clients already", None),
    ],
    ids=["stderr-utc", "abbreviation-log-timezone", "offset", "csvlog", "jsonlog", "no-time"],
)  # fmt: skip
def test_a_log_lines_time_in_every_format(line: str, expected: datetime | None) -> None:
    assert server_log.line_time(line, PARIS) == expected


def write_log(path: Path, base: datetime) -> None:
    secret = "password=hunter2hunter2"
    lines = [
        f"{base - timedelta(minutes=5):%Y-%m-%d %H:%M:%S}.000 UTC [1] FATAL:  sorry, too many"
        " clients already",  # before the window
        f"{base:%Y-%m-%d %H:%M:%S}.100 UTC [2] LOG:  statement: SELECT '{secret}'",
        f"{base:%Y-%m-%d %H:%M:%S}.200 UTC [3] FATAL:  sorry, too many clients already",
        f"{base:%Y-%m-%d %H:%M:%S}.300 UTC [4] FATAL:  remaining connection slots are reserved"
        " for non-replication superuser connections",
        f"{base:%Y-%m-%d %H:%M:%S}.400 UTC [5] FATAL:  password authentication failed",
        "[6] FATAL:  sorry, too many clients already",  # no time: said, not counted
        f"{base + timedelta(seconds=1):%Y-%m-%d %H:%M:%S}.000 UTC [7] FATAL:  sorry, too many"
        " clients already",
        f"{base + timedelta(minutes=5):%Y-%m-%d %H:%M:%S}.000 UTC [8] FATAL:  sorry, too many"
        " clients already",  # after it
    ]
    path.write_text("\n".join(lines) + "\n")


def test_refusals_in_log_files_are_counted_in_the_window_and_nothing_else_is_kept(
    tmp_path: Path,
) -> None:
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    write_log(tmp_path / "postgresql-1.log", base)
    found = server_log.from_files(
        str(tmp_path / "postgresql-*.log"), base - timedelta(seconds=1), base + timedelta(minutes=1)
    )
    assert found.unknown is None and found.refused == 3 and found.undated == 1
    assert found.by_kind == {"too many clients": 2, "reserved slots": 1}
    assert found.first == base + timedelta(milliseconds=200)
    assert found.last == base + timedelta(seconds=1)
    text = json.dumps(found.fields())
    assert "hunter2" not in text and "SELECT" not in text and "authentication" not in text


def test_no_log_file_is_unknown_with_the_reason(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    found = server_log.from_files(str(tmp_path / "none-*.log"), now, now)
    assert found.refused == 0 and found.unknown and "no file matches" in found.unknown
    assert found.fields()["refused"] is None  # unknown is not zero


_LOG_LINES = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=400),  # seconds since the previous entry
        st.integers(min_value=-120, max_value=0),  # written this much out of order
        st.integers(min_value=10, max_value=700),  # the entry's length
        st.integers(min_value=0, max_value=2),  # continuation lines (no time)
    ),
    min_size=1,
    max_size=300,
)


def _log(entries: list[tuple[int, int, int, int]], began: datetime) -> tuple[bytes, list[Any]]:
    """A log of stamped entries (each maybe with continuation lines); its bytes and each
    stamped line's (offset, time)."""
    out, stamped, at, when = [], [], 0, began
    for gap, skew, length, more in entries:
        when += timedelta(seconds=gap)
        written = when + timedelta(seconds=skew)
        line = f"{written:%Y-%m-%d %H:%M:%S}.000 UTC [1] LOG:  ".encode() + b"x" * length
        stamped.append((at, written))
        for text in (line, *([b"\tcontinued"] * more)):
            out.append(text + b"\n")
            at += len(text) + 1
    return b"".join(out), stamped


@settings(max_examples=300, deadline=None)
@given(entries=_LOG_LINES, pick=st.floats(min_value=-0.1, max_value=1.1))
def test_the_window_of_a_log_starts_before_its_first_line_and_not_much_before(
    entries: list[tuple[int, int, int, int]], pick: float
) -> None:
    """window_start, on files where connfix runs: the offset is a line's start, no line
    from `since` on is before it, and what is read before the window is at most the
    SLACK's lines and two probes."""
    import io

    began = datetime(2026, 12, 5, tzinfo=UTC)
    data, stamped = _log(entries, began)
    span = (stamped[-1][1] - began).total_seconds()
    since = began + timedelta(seconds=span * pick)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(server_log, "PROBE_BYTES", 1024)
        raw = io.BytesIO(data)
        start = server_log.window_start(server_log._local_probe(raw, UTC), len(data), since)
    assert start == 0 or data[start - 1 : start] == b"\n"
    assert all(at >= start for at, when in stamped if when >= since)
    cutoff = since - server_log.SLACK - timedelta(seconds=120)  # and the skew
    early = [at for at, when in stamped if when >= cutoff]
    if early and start:
        assert start >= early[0] - 2 * 1024 - 800


def test_a_large_local_log_is_read_from_its_window(tmp_path: Path) -> None:
    """A day of log where connfix runs, refusals all along it: the last hour's are
    counted as a plain reading counts them, and the reading began near the window."""
    began = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=24)
    lines = []
    for i in range(20_000):
        when = began + timedelta(seconds=24 * 3600 * i / 20_000)
        what = "sorry, too many clients already" if i % 7 == 0 else "terminating connection"
        lines.append(f"{when:%Y-%m-%d %H:%M:%S}.000 UTC [{i}] FATAL:  {what}")
    path = tmp_path / "postgresql.log"
    path.write_text("\n".join(lines) + "\n")
    since, until = datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC)
    plain = sum(
        1
        for line in lines
        if "sorry" in line and since <= (server_log.line_time(line, UTC) or began) <= until
    )
    starts: list[int] = []
    window_start = server_log.window_start

    def spy(*args: Any) -> int:
        starts.append(window_start(*args))
        return starts[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(server_log, "CHUNK_BYTES", 64 * 1024)
        patch.setattr(server_log, "window_start", spy)
        found = server_log.from_files(str(path), since, until)
    assert found.refused == plain > 100
    offsets = list(accumulate((len(line) + 1 for line in lines), initial=0))
    times = [server_log.line_time(line, UTC) or began for line in lines]
    first = next(at for at, when in zip(offsets, times, strict=False) if when >= since)
    slack = next(
        at for at, when in zip(offsets, times, strict=False) if when >= since - server_log.SLACK
    )
    assert starts and slack - 2 * server_log.PROBE_BYTES <= starts[0] <= first, (starts, slack)
    assert starts[0] > offsets[-1] * 0.9  # a tenth of the file read, at most


def points(values: list[float], limit: float = 10) -> dict[str, Any]:
    return {
        "series": {
            "connections": [[100.0 + i, v] for i, v in enumerate(values)],
            "limit": [[100.0 + i, limit] for i in range(len(values))],
        }
    }


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([5, 6, 8, 9, 9], 102.0),  # crossed at 8 (80%) and stayed
        ([5, 8, 5, 8, 9], 103.0),  # a blip, then the real crossing
        ([5, 6, 7], None),  # never
        ([9, 9, 7], None),  # over, but back under before the run
    ],
)
def test_the_onset_is_the_start_of_the_last_stretch_above_warning(
    values: list[float], expected: float | None
) -> None:
    assert onset(points(values), 0.8) == expected


def journal(tmp_path: Path, with_history: bool) -> Path:
    """A journal as a real run writes it: a run start (from an alert), the history, a
    warning diagnosis, a restart, an ok diagnosis, the impact, the end."""
    folder = tmp_path / "20261205T021500Z-lab"
    folder.mkdir()
    j = Journal(folder)
    j.record(
        Event.RUN_START, environment="lab", operator="root", hostname="vm",
        trigger="alert PostgresTooManyConnections",
        alert_starts_at=(datetime.now(UTC) - timedelta(seconds=5)).isoformat(),
    )  # fmt: skip
    now = time.time()
    if with_history:
        found = {
            "source": "prometheus", "url": "http://127.0.0.1:9090", "start": now - 60,
            "end": now, "step": 1, "errors": {}, "warning": 0.8,
            **points([9, 10, 14, 15, 15]),
            "hosts": {"app2": [[100.0 + i, v] for i, v in enumerate([0, 1, 5, 6, 6])]},
        }  # fmt: skip
        for series in found["series"].values():
            for i, p in enumerate(series):
                p[0] = now - 30 + i  # the onset (at 14 of 17) 28 s before the run
        found["limit"] = 17
        found["onset"] = onset(found, 0.8)
        j.record(Event.HISTORY, **found)
    usage = [{"host": "app2", "count": 6, "suspect": True}]
    j.record(Event.DIAGNOSIS, diagnosis={"client_backends": 15, "usable_connections": 17,
                                         "severity": "warning", "by_host": usage})  # fmt: skip
    j.record(Event.STEP_START, step="restart", action="rolling_restart", mutating=True)
    j.record(Event.STEP_END, step="restart", ok=True, summary="restarted app2")
    j.record(Event.DIAGNOSIS, diagnosis={"client_backends": 9, "usable_connections": 17,
                                         "severity": "ok", "by_host": []})  # fmt: skip
    j.close()
    return folder / "journal.jsonl"


def events_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_timeline_runs_from_the_onset_in_order(tmp_path: Path) -> None:
    events = events_of(journal(tmp_path, with_history=True))
    found = postmortem.from_onset(events)
    kinds = [what.split(":")[0].split(" (")[0] for _, what, _ in found["rows"]]
    assert kinds == ["onset", "alert fired", "connfix started", "mitigation", "healthy again"]
    assert found["onset_known"] and found["detect"] and found["mitigate"] and found["resolve"]


def test_without_history_the_onset_is_the_first_bad_diagnosis_at_the_latest(
    tmp_path: Path,
) -> None:
    events = events_of(journal(tmp_path, with_history=False))
    rows = [what for _, what, _ in postmortem.from_onset(events)["rows"]]
    assert rows[0].startswith("alert fired")  # before connfix: the onset is not known earlier
    assert rows[1].startswith("connfix started")
    assert rows[2].startswith("onset (at the latest): connfix's first diagnosis found it")
    c = chart.curve(events)
    assert c.history_from is None and [v for _, v in c.connections] == [15.0, 9.0]


def test_the_chart_starts_before_the_run_and_is_the_same_for_the_same_journal(
    tmp_path: Path,
) -> None:
    path = journal(tmp_path, with_history=True)
    c = chart.curve(events_of(path))
    assert c.history_from is not None and c.run_from is not None
    assert c.history_from < c.run_from and len(c.connections) == 5 + 2
    drawn = report.draw(path, tmp_path)
    assert drawn is not None
    first = drawn.read_bytes()
    report.draw(path, tmp_path)
    assert drawn.read_bytes() == first  # no random id, no date: the same journal, the same file
    root = ET.fromstring(first)
    ns = "{http://www.w3.org/2000/svg}"
    texts = " ".join(t.text or "" for t in root.iter(f"{ns}text"))
    for label in ("lab: connections in use against the usable limit", "usable limit",
                  "warning (80% of usable)", "connfix started", "app2 (suspect)"):  # fmt: skip
        assert label in texts, texts
    assert not list(root.iter(f"{ns}script"))


def test_an_unreachable_prometheus_is_said_never_raised() -> None:
    from connfix.config.inventory import PrometheusSource

    source = PrometheusSource.validate({"url": "http://127.0.0.1:1", "timeout": "1s"})
    found = history.fetch(source, "lab", time.time() - 60, time.time())
    assert set(found["errors"]) == {"connections", "limit", "hosts"} and not found["series"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://admin:secret@prom:9090", "no credentials in the URL"),
        ("ftp://prom", "http:// or https://"),
    ],
)
def test_a_prometheus_url_with_a_secret_or_another_scheme_is_refused(
    url: str, message: str
) -> None:
    from connfix.config.inventory import PrometheusSource
    from connfix.config.records import Invalid

    with pytest.raises(Invalid, match=message):
        PrometheusSource.validate({"url": url})


def test_the_queries_quote_the_environment_as_a_promql_label() -> None:
    from connfix.config.inventory import PrometheusSource

    queries = history.queries(PrometheusSource(url="http://p"), 'we"ird\\env')
    assert queries["connections"] == 'max(connfix_client_backends{environment="we\\"ird\\\\env"})'


@pytest.mark.parametrize(
    "path", ["var/log/*.log", "/var/log/x.log; rm -rf /", "/var/log/$(id)", "/a/../etc", "/a b"]
)
def test_a_log_path_over_ssh_is_a_plain_absolute_glob(path: str) -> None:
    """It reaches the database host's shell (expanded there): nothing else gets through."""
    from connfix.config.inventory import LogOverSsh
    from connfix.config.records import Invalid

    with pytest.raises(Invalid, match="an absolute path or glob"):
        LogOverSsh.validate({"address": "db1.internal", "path": path})
    assert LogOverSsh.validate(
        {"address": "db1.internal", "path": "/var/log/postgresql/*.log[0-9]"}
    )
