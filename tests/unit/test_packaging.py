"""What `pipx install .` / `uv tool install .` install: connfix's wheel, built here
offline from a copy of the project (no registry: tests talk to loopback only), must hold
the `connfix` command and every file connfix reads at run time, and run from itself."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_is_complete_and_runs_on_its_own(tmp_path: Path) -> None:
    source = tmp_path / "src-copy"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    out = tmp_path / "wheel"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(out), str(source)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = out.glob("connfix-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        points = configparser.ConfigParser()
        points.read_string(archive.read(entry).decode())
        archive.extractall(tmp_path / "installed")
    assert points["console_scripts"]["connfix"] == "connfix.__main__:run"
    shipped = {
        p.relative_to(ROOT / "src").as_posix()
        for p in (ROOT / "src/connfix").rglob("*")
        if p.is_file() and p.suffix not in {".py", ".pyc"}
    }
    assert len(shipped) >= 20, shipped  # the queries, runbooks, template and schema
    assert shipped <= names, shipped - names
    # run from the wheel's files alone (its dependencies from this environment), outside
    # the checkout: the shipped runbook, schema and report template are found
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "installed")}
    run = subprocess.run(
        [sys.executable, "-m", "connfix", "runbook", "show", "observe"],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "connfix:runbooks/observe.yaml" in run.stdout
    where = subprocess.run(
        [sys.executable, "-c", "import connfix; print(connfix.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    ).stdout  # fmt: skip
    assert where.startswith(str(tmp_path / "installed"))
