"""The folders are a guard: a lab test outside tests/lab/ stops the collection, naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = (Path(__file__).resolve().parents[1] / "conftest.py").read_text()


@pytest.mark.parametrize(
    ("path", "body", "refused"),
    [
        ("unit/test_a.py", "def test_a(clean_lab): pass", True),
        ("unit/test_b.py", "import pytest\n@pytest.mark.lab\ndef test_b(): pass", True),
        ("test_c.py", "def test_c(): pass", True),
        ("unit/test_d.py", "def test_d(tmp_path): pass", False),
        ("lab/test_e.py", "def test_e(): pass", False),
    ],
)
def test_a_lab_test_outside_tests_lab_is_refused(
    pytester: pytest.Pytester, path: str, body: str, refused: bool
) -> None:
    pytester.makeconftest(CONFTEST.replace("pytest_plugins = ", "_unused = "))
    pytester.makeini("[pytest]\nmarkers =\n    lab: the lab\n")
    target = pytester.path / path
    target.parent.mkdir(exist_ok=True)
    target.write_text(body + "\n")
    result = pytester.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider")
    output = result.stdout.str() + result.stderr.str()
    if refused:
        assert result.ret != 0 and "tests in the wrong folder" in output, output
        assert path.split("/")[-1] in output, output
    else:
        assert result.ret == 0, output
        if path.startswith("lab/"):  # marked lab: deselected by -m "not lab"
            again = pytester.runpytest_subprocess("--collect-only", "-q", "-m", "not lab")
            assert "no tests collected" in again.stdout.str() + again.stderr.str()
