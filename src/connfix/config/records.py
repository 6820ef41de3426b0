"""Frozen records validated by pydantic only when something is validated.

The inventory's types, a runbook as written and each action's parameters are standard
frozen dataclasses (`Record`): each field's constraints and checks are `Rule`s in its
annotation, read by pydantic when it builds a validator for the class (pydantic
validates standard dataclasses: their fields, the `__pydantic_config__` of the class,
and `__post_init__` for checks across fields). So a command whose inventory and
runbook were read before — every diagnosis, every run after the first — neither
imports pydantic nor builds its validators (about 50 ms of each command: see
docs/benchmarks.md): `validate_cached` keeps what pydantic made of each document in
connfix's cache (connfix.config.cache) and builds the same records from it.

A record built directly (`Host(name=..., ...)`) runs its `__post_init__` checks, not its
fields' rules: data that comes from outside connfix goes through `validate`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

if TYPE_CHECKING:
    from pydantic import TypeAdapter

CACHE_ENTRIES = 64  # documents kept; the oldest go first

R = TypeVar("R", bound="Record")


class Invalid(ValueError):
    """Data a record refused: each error's field and message, and the errors (each a
    dict with the field's `loc`, a `type` and a `msg`; no input), caught without
    importing pydantic."""

    def __init__(self, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.errors = errors


class Rule:
    """A field's constraints (pydantic.Field's: ge, le, gt, min_length, max_length…), a
    conversion before its type is checked (`before`) and a check after (`check`, which
    returns the value or raises ValueError), as pydantic metadata: `Annotated[int,
    Rule(ge=1)]`. One Rule per field; pydantic is imported only to validate."""

    __slots__ = ("before", "check", "constraints")

    def __init__(
        self,
        check: Callable[[Any], Any] | None = None,
        *,
        before: Callable[[Any], Any] | None = None,
        **constraints: Any,
    ) -> None:
        self.check = check
        self.before = before
        self.constraints = constraints

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        """The field's schema: its type with the constraints, then the checks (the
        protocol pydantic documents for a type's metadata)."""
        from typing import Annotated

        from pydantic import Field
        from pydantic_core import core_schema

        constrained = Annotated[source, Field(**self.constraints)] if self.constraints else source
        schema = handler(constrained)
        if self.before is not None:
            schema = core_schema.no_info_before_validator_function(self.before, schema)
        if self.check is not None:
            schema = core_schema.no_info_after_validator_function(self.check, schema)
        return schema


class Record:
    """Base of the validated records: a frozen, keyword-only dataclass. Unknown fields
    are refused; `validate` checks data from outside, `replace` makes a changed copy
    (its `__post_init__` checks run again)."""

    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}
    _registry: ClassVar[dict[str, type[Record]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Record._registry[_tag(cls)] = cls

    @classmethod
    def validate(cls, data: object) -> Self:
        """Validate plain data (a parsed document) into this record; raise Invalid with
        every error and where it is."""
        from pydantic import TypeAdapter, ValidationError

        adapter = _ADAPTERS.get(cls)
        if adapter is None:
            adapter = _ADAPTERS[cls] = TypeAdapter(cls)
        try:
            return adapter.validate_python(data)  # type: ignore[no-any-return]
        except ValidationError as exc:
            # each error's field and message, never the value refused (a connection
            # string refused for its password would be quoted in pydantic's own text)
            found = exc.errors(include_url=False, include_input=False)
            said = [f"{'.'.join(map(str, e['loc'])) or cls.__name__}: {e['msg']}" for e in found]
            errors: list[dict[str, Any]] = [dict(e) for e in found]
            raise Invalid("; ".join(said), errors) from None

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed (not validated: the values are connfix's)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def dump(self) -> dict[str, Any]:
        """The record's fields as plain values (nested records as dicts)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload, no-any-return]


def _tag(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


_ADAPTERS: dict[type, TypeAdapter[Any]] = {}  # one validator per record class a process uses


# -- the cache: what pydantic made of a document, kept as plain values ------------------


def validate_cached(cls: type[R], data: object) -> R:
    """`cls.validate(data)`, kept in connfix's cache: the same data validated before by
    the same code (connfix's rules and the record's module, pydantic, psycopg) is built
    from there, without pydantic. Only a document that validated is kept."""
    where = _cache_file(cls, data)
    if where is not None:
        built = _from_cache(where, cls)
        if built is not None:
            return built
    record = cls.validate(data)
    if where is not None:
        _to_cache(where, record)
    return record


def to_plain(value: object) -> Any:
    """A record as marshal-able plain values: a record is (its tag, its fields). Raise
    TypeError for anything else than records, lists, dicts with string keys and
    scalars (a value that could not be built back the same)."""
    if isinstance(value, Record):
        fields = {f.name: to_plain(getattr(value, f.name)) for f in _init_fields(type(value))}
        return (_tag(type(value)), fields)
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    if isinstance(value, dict) and all(type(k) is str for k in value):
        return {k: to_plain(v) for k, v in value.items()}
    if value is None or type(value) in (str, int, float, bool):
        return value
    raise TypeError(f"not a plain value: {type(value).__name__}")


def from_plain(value: object) -> object:
    """Build back what to_plain gave (a tag names a record class; nothing else is built)."""
    if isinstance(value, tuple):
        tag, fields = value
        cls = Record._registry[tag]
        return cls(**{k: from_plain(v) for k, v in fields.items()})
    if isinstance(value, list):
        return [from_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: from_plain(v) for k, v in value.items()}
    return value


def _init_fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    found = _FIELDS.get(cls)
    if found is None:
        found = _FIELDS[cls] = tuple(f for f in dataclasses.fields(cls) if f.init)
    return found


_FIELDS: dict[type, tuple[dataclasses.Field[Any], ...]] = {}


def _cache_file(cls: type[Record], data: object) -> str | None:
    """Where the records made of `data` are kept: named by a hash of the data, the
    record class and what validation depends on."""
    from connfix.config import cache

    key = _tag(cls).encode() + b"\0" + repr(data).encode("utf-8", "surrogatepass")
    return cache.entry("records", _depends(cls), key)


def _depends(cls: type) -> bytes | None:
    """What validating `cls` depends on besides the data — connfix's config package (the
    rules and checks), the modules that define the record and its bases, pydantic,
    pydantic-core and psycopg (connection strings are parsed by libpq through it), by
    path, size and time — once per process and class; None when it cannot be told."""
    import sys

    from connfix.config import cache

    if cls not in _DEPENDS:
        shared = _shared_depends()
        modules = [sys.modules.get(base.__module__) for base in cls.__mro__ if base is not object]
        own = cache.signature(sorted({m.__file__ for m in modules if m and m.__file__}))
        _DEPENDS[cls] = None if shared is None or own is None else shared + own
    return _DEPENDS[cls]


_DEPENDS: dict[type, bytes | None] = {}


@functools.cache
def _shared_depends() -> bytes | None:
    """The part every record shares: the config package and the libraries' files."""
    import importlib.util
    import os

    from connfix.config import cache

    here = os.path.dirname(__file__)
    sources = sorted(os.path.join(here, n) for n in os.listdir(here) if n.endswith(".py"))
    try:
        for name in ("pydantic", "pydantic_core", "psycopg"):
            spec = importlib.util.find_spec(name)
            sources.append(spec.origin if spec and spec.origin else "")
    except (ValueError, ImportError):
        return None
    return cache.signature(sources)


def _from_cache(where: str, cls: type[R]) -> R | None:
    import marshal

    from connfix.config import cache

    try:
        plain = marshal.loads(cache.read(where))
    except (OSError, EOFError, ValueError, TypeError):  # none yet, or damaged: validate
        return None
    try:
        built = from_plain(plain)
    except (AttributeError, KeyError, TypeError, ValueError):  # not what _to_cache wrote
        return None
    return built if type(built) is cls else None


def _to_cache(where: str, record: Record) -> None:
    import marshal

    from connfix.config import cache

    try:
        blob = marshal.dumps(to_plain(record))
    except (TypeError, ValueError):  # a value marshal cannot keep: validated every time
        return
    cache.store(where, blob, CACHE_ENTRIES)
