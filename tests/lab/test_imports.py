"""The import guard on a real server: a diagnose that connects, reads 1 snapshot and
prints JSON imports nothing of SSH, serving or templates (the refused-connection path:
tests/unit/test_imports.py)."""

from __future__ import annotations

from tests.helpers import SERVER, SSH, TEMPLATES, Lab, modules_loaded


def test_a_real_diagnose_imports_only_what_it_uses(lab: Lab) -> None:
    argv = ["diagnose", "lab", "-i", str(lab.inventory), "--json"]
    modules_loaded(argv)  # the inventory read and validated once: kept in connfix's cache
    loaded = modules_loaded(argv)
    # it did connect and read the inventory — its parse and its records built from the
    # cache (connfix.config.yamlfile, connfix.config.records): no PyYAML, no pydantic
    assert {"psycopg", "connfix.config.inventory_file"} <= loaded
    forbidden = SSH | SERVER | TEMPLATES | {"rich", "pygments", "pydantic", "yaml"}
    assert not loaded & forbidden, sorted(loaded & forbidden)
    text = modules_loaded(["diagnose", "lab", "-i", str(lab.inventory)])
    assert "rich" in text and not text & (SSH | SERVER | TEMPLATES), sorted(text & forbidden)
