"""The house rules that keep connfix easy to map, checked: a handful of packages at the
top, each saying its purpose, and no long function without a reason written above it.
(The import layers are checked by import-linter in `make lint`.)"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "connfix"
LONG = 80  # lines, signature and docstring included
REASON = "# Over 80 lines:"


def test_the_top_level_has_at_most_twelve_entries() -> None:
    entries = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__")
    assert len(entries) <= 12, entries


def test_every_package_says_its_purpose() -> None:
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, f"{init.relative_to(PACKAGE)}: no purpose in its docstring"


def _long_functions_without_a_reason(path: Path, root: Path = PACKAGE) -> list[str]:
    text = path.read_text()
    lines = text.splitlines()
    found = []
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        length = (node.end_lineno or node.lineno) - node.lineno + 1
        if length <= LONG:
            continue
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 1
        above = first - 1
        while above >= 0 and lines[above].strip().startswith("#"):
            if lines[above].strip().startswith(REASON):
                break
            above -= 1
        if above < 0 or not lines[above].strip().startswith(REASON):
            found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_over_80_lines_without_a_reason_above_it() -> None:
    found = [
        f for path in sorted(PACKAGE.rglob("*.py")) for f in _long_functions_without_a_reason(path)
    ]
    assert not found, "split these into named stages, or say why above them: " + "; ".join(found)


def test_the_long_function_check_can_fail(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(LONG))
    sample = tmp_path / "sample.py"
    sample.write_text(f"def long():\n{body}\n\n\n{REASON} a reason.\ndef reasoned():\n{body}\n")
    found = _long_functions_without_a_reason(sample, tmp_path)
    assert [f.split()[1] for f in found] == ["long"], found
