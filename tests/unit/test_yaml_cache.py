"""The YAML cache (connfix.config.yamlfile): a document parsed once comes back the same
from connfix's cache, without importing PyYAML, and only when nothing changed."""

from __future__ import annotations

import marshal
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from connfix.config import yamlfile
from tests.helpers import cache_entries

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "src/connfix/engine/runbooks/too-many-connections.yaml"
INVENTORY = ROOT / "inventory.example.yaml"


@pytest.fixture
def cache_home(connfix_cache: Path) -> Path:
    return connfix_cache / "yaml"


@pytest.mark.parametrize("document", [RUNBOOK, INVENTORY], ids=["runbook", "inventory"])
def test_a_cached_document_is_the_document_parsed(document: Path, cache_home: Path) -> None:
    text = document.read_text()
    parsed = yamlfile.load_text(text)  # parsed, then kept
    assert len(cache_entries(cache_home)) == 1
    again = yamlfile.load_text(text)  # from the cache
    assert (again.data, again.lines) == (parsed.data, parsed.lines)
    assert again.data is not parsed.data  # read back, not the same objects
    os.environ["CONNFIX_NO_CACHE"] = "1"
    try:
        fresh = yamlfile.load_text(text)
    finally:
        del os.environ["CONNFIX_NO_CACHE"]
    assert (fresh.data, fresh.lines) == (again.data, again.lines)


def test_a_command_that_reads_a_cached_document_does_not_import_pyyaml(cache_home: Path) -> None:
    code = (
        "import sys; from connfix.config import yamlfile;"
        f" located = yamlfile.load_file(__import__('pathlib').Path({str(RUNBOOK)!r}));"
        " print('yaml' in sys.modules, len(located.lines))"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home.parent.parent)}
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=60, check=True).stdout.split()
        for _ in range(2)
    ]  # fmt: skip
    assert runs[0][0] == "True" and runs[1][0] == "False"  # parsed, then loaded
    assert runs[0][1] == runs[1][1] != "0"


def test_another_text_is_parsed_again_and_errors_are_never_kept(cache_home: Path) -> None:
    assert yamlfile.load_text("a: 1\n").data == {"a": 1}
    assert yamlfile.load_text("a: 2\n").data == {"a": 2}
    assert len(cache_entries(cache_home)) == 2
    for _ in range(2):  # refused both times: nothing kept
        with pytest.raises(yamlfile.YamlError, match="duplicate key"):
            yamlfile.load_text("a: 1\na: 2\n")
    assert len(cache_entries(cache_home)) == 2


def test_a_damaged_entry_is_parsed_again_and_a_timestamp_is_not_kept(cache_home: Path) -> None:
    yamlfile.load_text("b: [1, 2]\n")
    (entry,) = cache_entries(cache_home)
    entry.write_bytes(b"\x00garbage")
    assert yamlfile.load_text("b: [1, 2]\n").data == {"b": [1, 2]}
    entry.write_bytes(marshal.dumps(({"b": "forged"}, ["not", "a", "line", "map"])))
    assert yamlfile.load_text("b: [1, 2]\n").data == {"b": [1, 2]}
    entry.unlink()
    located = yamlfile.load_text("when: 2026-12-05 08:00:00\n")
    assert located.data["when"].year == 2026
    assert cache_entries(cache_home) == []  # a datetime is no plain value: parsed each time


def test_the_cache_keeps_its_newest_entries_only(
    cache_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(yamlfile, "CACHE_ENTRIES", 3)
    for n in range(5):
        yamlfile.load_text(f"n: {n}\n")
        time.sleep(0.01)  # entries told apart by their modification times
    kept = cache_entries(cache_home)
    assert len(kept) == 3
    assert not list(cache_home.rglob("*.tmp"))  # each written through a renamed temporary
    newest = yamlfile._cache_file(b"n: 4\n")
    assert newest is not None and Path(newest) in kept


def test_no_cache_in_a_directory_others_may_write(cache_home: Path) -> None:
    cache_home.parent.mkdir(parents=True, mode=0o700)
    cache_home.parent.chmod(0o777)
    assert yamlfile.load_text("c: 3\n").data == {"c": 3}
    assert cache_entries(cache_home) == []
