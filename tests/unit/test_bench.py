"""`make bench` prints one table, a row per measure, each with its pass or fail
(docs/benchmarks.md). The start-up benchmark needs no lab: it runs here for real (one
round of real connfix processes against real interpreters), and its rows go through the
table `make bench` prints."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_the_start_up_rows_are_measured_and_printed_with_their_verdict(
    monkeypatch: pytest.MonkeyPatch, connfix_cache: Path
) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    # the benchmarks' module points connfix at lab 5 when imported: set through
    # monkeypatch, the suite's own lab (its session fixture's teardown) gets it back
    monkeypatch.setenv("CONNFIX_LAB_ID", "5")
    monkeypatch.delenv("CONNFIX_LAB_DIR", raising=False)
    import common
    import startup

    started = time.perf_counter()
    rows = startup.measure(rounds=1)
    assert [r.measure.split(" (")[0] for r in rows] == [
        f"start-up: connfix {name}" for name in startup.COMMANDS
    ]
    for row in rows:
        assert row.unit == "s" and 0 < row.value < 30
        assert row.anchor is not None and 0 < row.anchor < 30
        target = float(row.note.split("target ≤ ")[1].split(" s")[0])
        assert row.passed == (row.value <= target), row

    failed = dataclasses.replace(rows[0], passed=False)
    passed = dataclasses.replace(rows[1], passed=True)
    printed = common.table([failed, passed, *rows[2:]], "15.0", started).splitlines()
    header = "| measure | connfix | floor / anchor | ratio | target | result |"
    table = printed[printed.index(header) + 2 : printed.index(header) + 2 + len(rows)]
    assert table[0].startswith(f"| {failed.measure} |") and table[0].endswith("| **FAIL** |")
    assert table[1].startswith(f"| {passed.measure} |") and table[1].endswith("| pass |")
    for line, row in zip(table[2:], rows[2:], strict=True):
        assert line.endswith("| pass |" if row.passed else "| **FAIL** |")
    notes = [line for line in printed if line.startswith("- start-up: connfix")]
    assert len(notes) == len(rows)
