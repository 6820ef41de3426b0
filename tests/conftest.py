"""What every test shares: the environment, and the two folders kept apart.

tests/unit/ needs no root and no lab; tests/lab/ runs on the suite's own incident lab
(CONNFIX_LAB_ID=7; its fixtures in tests/lab/conftest.py). Every test in tests/lab/ is
marked `lab`, so `pytest -m "not lab"` still runs exactly tests/unit/. The marker is a
guard too: a test in tests/unit/ that uses a lab fixture, or is marked `lab`, stops the
collection naming it; so does a test file outside the two folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# The suite's lab lives beside an operator's rehearsal lab (id 0), never on top of it.
os.environ["CONNFIX_LAB_ID"] = "7"
os.environ.pop("CONNFIX_LAB_DIR", None)
os.environ.pop("CONNFIX_INVENTORY", None)
# Output the tests read (tables included) at a fixed width, whatever the CI terminal says.
os.environ["COLUMNS"] = "160"

# Hypothesis keeps no example database: the checkout may be read-only to the user running
# the tests (make unit runs as any user), and CI starts from a fresh clone anyway.
settings.register_profile("connfix", database=None)
settings.load_profile("connfix")

LAB_FIXTURES = frozenset({"lab", "clean_lab", "lab_env", "full_server", "pooled_lab", "pooled"})


HERE = Path(__file__).parent
pytest_plugins = ["pytester"]  # tests/unit/test_folders.py runs this file's guard


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test in tests/lab/ `lab`; refuse a lab test anywhere else."""
    misplaced = []
    for item in items:
        folder = item.path.relative_to(HERE).parts[0] if item.path.is_relative_to(HERE) else ""
        uses_lab = bool(LAB_FIXTURES & set(getattr(item, "fixturenames", ())))
        if folder == "lab":
            item.add_marker(pytest.mark.lab)
        elif folder != "unit" or uses_lab or item.get_closest_marker("lab"):
            misplaced.append(item.nodeid)
    if misplaced:
        raise pytest.UsageError(
            "tests in the wrong folder (a lab test belongs in tests/lab/, every other test in"
            " tests/unit/): " + ", ".join(misplaced)
        )


@pytest.fixture
def connfix_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """connfix's cache for this test alone (on, under the test's directory); the folder
    its kinds (yaml, records, …) are made in."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CONNFIX_NO_CACHE", raising=False)
    return tmp_path / "cache" / "connfix"
