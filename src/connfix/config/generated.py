"""The code Python generates for dataclasses, compiled once per machine.

A dataclass's methods (`__init__`, `__repr__`, `__eq__`, a frozen one's `__setattr__`
...) are written as source text and compiled when the class is made, at every start:
Python 3.11 and 3.12 compile each method with its own `exec`, 3.13 each class with one. A
triage makes about a hundred dataclasses, some 350 methods: about 20 ms of every command
(docs/benchmarks.md). `install()` gives the dataclasses module an `exec` of its own that
looks each text up in connfix's cache (connfix.config.cache, kind "dataclasses") and runs
the code compiled from it before; a text not found is compiled as Python would (no flags
inherited from the caller, the same file name, the interpreter's optimization level) and
kept when the process exits. The same text compiled the same way is the same code; the
entry is keyed by the interpreter's bytecode and the dataclasses module's own file, so a
new Python starts a new one. A damaged entry, or no cache, means compiling as before.

The entry maps each text to its code's marshal bytes, each read back when its text comes:
loading every code object at once made some 40,000 objects the garbage collector then
scanned (a 30-40 ms collection in the middle of a triage, measured); strings and bytes
are not tracked by it.
"""

from __future__ import annotations

import builtins
import marshal
import sys
from types import CodeType
from typing import Any

KIND = "dataclasses"
KEEP = 4  # entries: one per interpreter that ran connfix lately
MOST = 5_000  # texts kept in one entry; past this it starts again (old code gone)

_codes: dict[str, bytes] = {}  # text → marshal bytes of its code
_new: dict[str, bytes] = {}  # compiled by this process


def install() -> None:
    """Make the dataclasses module compile through the cache, once per process. Nothing
    happens when there is no cache or the entry cannot be told."""
    import dataclasses

    if "exec" in vars(dataclasses):
        return
    from connfix.config import cache

    where = _entry(dataclasses.__file__)
    if where is None:
        return
    try:
        loaded = marshal.loads(cache.read(where))
    except (OSError, EOFError, ValueError, TypeError):
        loaded = {}
    if isinstance(loaded, dict):
        _codes.update(
            (text, code)
            for text, code in loaded.items()
            if isinstance(text, str) and isinstance(code, bytes)
        )
    dataclasses.exec = _exec  # type: ignore[attr-defined]

    import atexit

    atexit.register(_keep, where)


def _exec(source: Any, globals: Any = None, locals: Any = None, /) -> None:
    """exec() as the dataclasses module calls it, a text's compiled code from the cache."""
    if globals is None:  # exec's default: the calling frame's namespaces
        caller = sys._getframe(1)
        globals = caller.f_globals
        if locals is None:
            locals = caller.f_locals
    if isinstance(source, str):
        source = _code(source)
    builtins.exec(source, globals, locals)


def _code(text: str) -> CodeType:
    """The code of a text: as kept, or compiled as exec() compiles a string."""
    kept = _codes.get(text)
    if kept is not None:
        try:
            code = marshal.loads(kept)
        except (EOFError, ValueError, TypeError):
            code = None
        if isinstance(code, CodeType):
            return code
    code = compile(text, "<string>", "exec", dont_inherit=True)
    _codes[text] = _new[text] = marshal.dumps(code)
    return code


def _entry(dataclasses_file: str | None) -> str | None:
    from importlib.util import MAGIC_NUMBER

    from connfix.config import cache

    depends = cache.signature([dataclasses_file or ""])
    if depends is None:
        return None
    depends += MAGIC_NUMBER + f"\0{sys.flags.optimize}".encode()
    return cache.entry(KIND, depends, b"code")


def _keep(where: str) -> None:
    """At exit: write the entry again when this process compiled texts it lacked."""
    if not _new:
        return
    from connfix.config import cache

    kept = dict(_codes) if len(_codes) <= MOST else dict(_new)
    cache.store(where, marshal.dumps(kept), KEEP)
