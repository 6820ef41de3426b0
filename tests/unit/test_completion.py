"""Shell completion as the shells ask for it (click's protocol), from a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = str(Path(__file__).resolve().parents[2] / "inventory.example.yaml")


def complete(words: str, cword: int, cwd: Path) -> list[str]:
    env = {
        **os.environ,
        "_CONNFIX_COMPLETE": "bash_complete",
        "COMP_WORDS": words,
        "COMP_CWORD": str(cword),
    }
    env.pop("CONNFIX_INVENTORY", None)
    out = subprocess.run(
        [sys.executable, "-m", "connfix"], env=env, cwd=cwd, capture_output=True, text=True
    )
    assert out.returncode == 0 and not out.stderr, out.stderr
    return [line.split(",", 1)[1] for line in out.stdout.splitlines()]


def test_environment_names_come_from_the_inventory(tmp_path: Path) -> None:
    assert complete(f"connfix diagnose -i {EXAMPLE} p", 4, tmp_path) == ["prod"]
    assert complete(f"connfix triage -i {EXAMPLE} ", 4, tmp_path) == ["lab", "prod"]
    (tmp_path / "inventory.yaml").write_text(Path(EXAMPLE).read_text())
    assert complete("connfix restart ", 2, tmp_path) == ["lab", "prod"]  # ./inventory.yaml
    (tmp_path / "inventory.yaml").write_text("not: [valid")
    assert complete("connfix restart ", 2, tmp_path) == ["lab"]  # never a traceback
    assert "terminate" in complete("connfix t", 1, tmp_path)


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_each_shell_gets_its_script(shell: str) -> None:
    env = {**os.environ, "_CONNFIX_COMPLETE": f"{shell}_source"}
    out = subprocess.run([sys.executable, "-m", "connfix"], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "_CONNFIX_COMPLETE" in out.stdout
