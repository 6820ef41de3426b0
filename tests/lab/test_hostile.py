"""Hostile input on the lab: `lab down` removes only what the lab made."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.lab  # lab down needs root
def test_lab_down_removes_only_what_the_lab_made(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Pointed at a directory that holds other files, lab down leaves them."""
    import os

    from connfix.lab import lab

    assert os.geteuid() == 0, "the lab tests need root"
    monkeypatch.setenv("CONNFIX_LAB_ID", "9")
    monkeypatch.setenv("CONNFIX_LAB_DIR", str(tmp_path))
    (tmp_path / "mine.txt").write_text("keep me\n")
    (tmp_path / "inventory.yaml").write_text("a lab's\n")
    removed = lab.down()
    assert (tmp_path / "mine.txt").read_text() == "keep me\n"
    assert not (tmp_path / "inventory.yaml").exists()
    assert any("kept: it holds files the lab did not make" in r for r in removed)
