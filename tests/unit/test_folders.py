"""The folders are a guard: a lab test outside tests/lab/ stops the collection, naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = (Path(__file__).resolve().parents[1] / "conftest.py").read_text()

MISPLACED = {
    "unit/test_a.py": "def test_a(clean_lab): pass",  # a lab fixture in tests/unit/
    "unit/test_b.py": "import pytest\n@pytest.mark.lab\ndef test_b(): pass",  # marked lab
    "test_c.py": "def test_c(): pass",  # in neither folder
}
PLACED = {
    "unit/test_d.py": "def test_d(tmp_path): pass",
    "lab/test_e.py": "def test_e(): pass",
}


def _tree(pytester: pytest.Pytester, files: dict[str, str]) -> None:
    pytester.makeconftest(CONFTEST.replace("pytest_plugins = ", "_unused = "))
    pytester.makeini("[pytest]\nmarkers =\n    lab: the lab\n")
    for path, body in files.items():
        target = pytester.path / path
        target.parent.mkdir(exist_ok=True)
        target.write_text(body + "\n")


def test_a_lab_test_outside_tests_lab_is_refused(pytester: pytest.Pytester) -> None:
    _tree(pytester, {**MISPLACED, **PLACED})
    result = pytester.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider")
    error = next((line for line in result.stderr.lines if "wrong folder" in line), "")
    assert result.ret != 0 and error, result.stdout.str() + result.stderr.str()
    for path in MISPLACED:
        assert f"{path}::" in error, error
    for path in PLACED:
        assert f"{path}::" not in error, error


def test_tests_in_their_folders_are_collected_and_lab_ones_marked(
    pytester: pytest.Pytester,
) -> None:
    _tree(pytester, PLACED)
    result = pytester.runpytest_subprocess("--collect-only", "-q", "-m", "not lab")
    output = result.stdout.str()
    assert result.ret == 0, output
    assert "test_d" in output and "test_e" not in output and "1 deselected" in output, output
