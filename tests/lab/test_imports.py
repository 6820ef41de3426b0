"""The import guard on a real server: a diagnose that connects, reads 1 snapshot and
prints JSON imports nothing of SSH, serving or templates (the refused-connection path:
tests/unit/test_imports.py)."""

from __future__ import annotations

from tests.helpers import SERVER, SSH, TEMPLATES, Lab, modules_loaded


def test_a_real_diagnose_imports_only_what_it_uses(lab: Lab) -> None:
    loaded = modules_loaded(["diagnose", "lab", "-i", str(lab.inventory), "--json"])
    # it did connect and read an inventory (PyYAML only when its text was not read before:
    # connfix.config.yamlfile keeps each parse in connfix's cache)
    assert {"psycopg", "pydantic", "connfix.config.inventory_file"} <= loaded
    forbidden = SSH | SERVER | TEMPLATES | {"rich", "pygments"}
    assert not loaded & forbidden, sorted(loaded & forbidden)
    text = modules_loaded(["diagnose", "lab", "-i", str(lab.inventory)])
    assert "rich" in text and not text & (SSH | SERVER | TEMPLATES), sorted(text & forbidden)
