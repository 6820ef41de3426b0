"""The code Python generates for dataclasses, compiled once per machine
(connfix.config.generated): the same code as Python's own compile, from connfix's cache
on the next start, and never a reason for a command to fail."""

from __future__ import annotations

import json
import marshal
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

from tests.helpers import cache_entries

# Dataclasses of several shapes, made in a fresh interpreter with the cache on or off;
# prints what their generated methods are made of. A module of its own without
# `from __future__ import annotations`: its field types are real types.
SCRIPT = """
import json, sys
from connfix.config import generated
if sys.argv[1] == "on":
    generated.install()
import dataclasses
from dataclasses import dataclass, field

@dataclass(frozen=True, order=True)
class Frozen:
    x: int
    y: str = "a"
    z: list = field(default_factory=list)

@dataclass(kw_only=True, slots=True)
class Slotted:
    a: Frozen
    b: float = 1.5

@dataclass(unsafe_hash=True)
class Hashed:
    n: int
    m: "dict[str, int]" = field(default_factory=dict, compare=False)

def code(fn):
    c = fn.__code__
    return [c.co_code.hex(), repr(c.co_consts), c.co_names, c.co_varnames, c.co_flags,
            c.co_filename, c.co_firstlineno, c.co_linetable.hex(), c.co_qualname]

made = {}
for cls in (Frozen, Slotted, Hashed):
    for name in ("__init__", "__repr__", "__eq__", "__lt__", "__setattr__", "__hash__"):
        fn = cls.__dict__.get(name)
        if fn is not None and hasattr(fn, "__code__"):
            made[f"{cls.__name__}.{name}"] = code(fn)
made["annotations"] = repr(Frozen.__init__.__annotations__)
made["works"] = [repr(Frozen(1, "b")), Frozen(1) < Frozen(2), repr(Slotted(a=Frozen(3))),
                 hash(Hashed(4)) == hash(Hashed(4, {"k": 1}))]
try:
    Frozen(1).x = 2
except dataclasses.FrozenInstanceError:
    made["frozen"] = True
made["new"] = len(generated._new)
print(json.dumps(made))
"""


def made(mode: str, cache: Path, **env: str) -> dict[str, object]:
    """Run SCRIPT in a fresh interpreter with the cache `mode` ("on"/"off")."""
    environ = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    environ.pop("CONNFIX_NO_CACHE", None)
    environ.update(env)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        capture_output=True,
        text=True,
        check=True,
        env=environ,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_the_cached_code_is_the_code_python_compiles(tmp_path: Path) -> None:
    """Cold (compiled, then kept) and warm (from the cache): every generated method is
    the code Python makes itself, annotations are still types (no `from __future__`
    flag inherited from connfix's module), and the classes behave."""
    cache = tmp_path / "cache"
    plain = made("off", cache)
    cold = made("on", cache)
    (entry,) = cache_entries(cache / "connfix" / "dataclasses")
    warm = made("on", cache)
    assert cold["new"] and warm["new"] == 0  # the second start compiled nothing
    for run in (cold, warm):
        assert {k: v for k, v in run.items() if k != "new"} == {
            k: v for k, v in plain.items() if k != "new"
        }
    assert "<class 'int'>" in str(plain["annotations"])  # types, not the text "_type_x"
    assert plain["frozen"] is True
    kept = marshal.loads(entry.read_bytes())
    assert isinstance(kept, dict) and len(kept) == cold["new"]
    assert oct(entry.stat().st_mode & 0o777) == "0o600"


def test_a_damaged_or_foreign_entry_is_compiled_again(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    plain = made("off", cache)
    made("on", cache)
    (entry,) = cache_entries(cache / "connfix" / "dataclasses")
    texts = list(marshal.loads(entry.read_bytes()))
    for damage in (
        b"\x00not marshal at all",
        marshal.dumps([1, 2, 3]),
        marshal.dumps(dict.fromkeys(texts, "print('not code')")),
        marshal.dumps(dict.fromkeys(texts, marshal.dumps("not code either"))),
        marshal.dumps(dict.fromkeys(texts, b"\x00not marshal")),
    ):
        entry.write_bytes(damage)
        again = made("on", cache)
        assert again["new"], damage  # compiled, as without a cache
        assert {k: v for k, v in again.items() if k != "new"} == {
            k: v for k, v in plain.items() if k != "new"
        }
        assert isinstance(marshal.loads(entry.read_bytes()), dict)  # written good again


def test_no_cache_no_entry(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    run = made("on", cache, CONNFIX_NO_CACHE="1")
    assert run["works"] == made("off", cache)["works"]
    assert not (cache / "connfix" / "dataclasses").exists()


def test_a_second_command_compiles_no_dataclass_code(tmp_path: Path) -> None:
    """The installed command uses it: the first `runbook validate` keeps the code of
    every dataclass it made, the second reads them all and writes nothing."""
    cache = tmp_path / "cache"
    environ = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    environ.pop("CONNFIX_NO_CACHE", None)
    shipped = resources.files("connfix.engine").joinpath("runbooks", "too-many-connections.yaml")
    argv = [sys.executable, "-m", "connfix", "runbook", "validate", str(shipped)]
    subprocess.run(argv, env=environ, check=True, capture_output=True)
    (entry,) = cache_entries(cache / "connfix" / "dataclasses")
    first = entry.stat().st_mtime_ns
    assert len(marshal.loads(entry.read_bytes())) > 50  # connfix's own dataclasses
    subprocess.run(argv, env=environ, check=True, capture_output=True)
    assert entry.stat().st_mtime_ns == first  # nothing new to keep
