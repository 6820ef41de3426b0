"""Jinja2's sandbox, bounded: what a runbook condition or a report template may compute.

Jinja's sandbox stops attribute tricks, not resource use: `'x' * 10**10`, `9**9**9`,
`'%999999999d' % 1`, `'x'.center(10**9)` or `lipsum(10**8)` exhaust memory or CPU inside
it. Here every operation that can grow a value is checked before it runs (sizes, powers,
format widths), method calls on values are limited to a short list of harmless ones, the
globals that only generate text are gone, and the filters that pad are bounded. A
refusal is a SecurityError with a clear reason; callers turn it into their own error.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from jinja2 import Environment, pass_environment
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment

MAX_SIZE = 100_000  # characters or items one operation may produce
MAX_INT_BITS = 4_096  # the largest integer one operation may produce
MAX_WIDTH = 1_000  # the widest padding or format width
SAFE_METHODS = frozenset(
    {
        "get",
        "items",
        "keys",
        "values",
        "startswith",
        "endswith",
        "lower",
        "upper",
        "strip",
        "lstrip",
        "rstrip",
        "split",
        "count",
        "index",
        "isdigit",
    }
)
# filters a runbook condition may use: none of them can make a value much larger
CONDITION_FILTERS = frozenset(
    {
        "abs",
        "count",
        "d",
        "default",
        "first",
        "float",
        "int",
        "join",
        "last",
        "length",
        "list",
        "lower",
        "map",
        "max",
        "min",
        "reject",
        "rejectattr",
        "round",
        "select",
        "selectattr",
        "sort",
        "string",
        "sum",
        "unique",
        "upper",
    }
)
_FORMAT_FIELD = re.compile(r"%[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[a-zA-Z%]")


def _size(value: Any) -> int | None:
    return len(value) if isinstance(value, str | bytes | list | tuple) else None


def check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse an operation whose result would be too large, before it runs."""
    numbers = (int, float)
    if operator == "**" and isinstance(left, numbers) and isinstance(right, numbers):
        if isinstance(left, bool) or isinstance(right, bool):
            return
        base = abs(left)
        if right > 0 and base > 1:
            bits = (base.bit_length() if isinstance(base, int) else 64) * right
            if bits > MAX_INT_BITS:
                raise SecurityError(f"{left!r} ** {right!r} is too large to compute")
    elif operator == "*":
        for seq, times in ((left, right), (right, left)):
            size = _size(seq)
            if size is not None and isinstance(times, int) and size * times > MAX_SIZE:
                raise SecurityError(
                    f"a repetition of {size} item(s) × {times} is over {MAX_SIZE:,}"
                )
        if (
            isinstance(left, int)
            and isinstance(right, int)
            and left.bit_length() + right.bit_length() > MAX_INT_BITS
        ):
            raise SecurityError("a product that large is not computed")
    elif operator == "+":
        a, b = _size(left), _size(right)
        if a is not None and b is not None and a + b > MAX_SIZE:
            raise SecurityError(f"a concatenation of {a + b:,} items is over {MAX_SIZE:,}")
    elif operator == "%" and isinstance(left, str):
        for width, precision in _FORMAT_FIELD.findall(left):
            for number in (width, precision):
                if number == "*" or (number and int(number) > MAX_WIDTH):
                    raise SecurityError(
                        f"a format width or precision over {MAX_WIDTH} is not allowed"
                    )


class _Bounds:
    """What both bounded environments add to Jinja's sandbox."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)  # type: ignore[misc]

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        # the sandbox hands str.format out wrapped: look through the wrapper
        inner = getattr(__obj, "__wrapped__", __obj)
        owner = getattr(inner, "__self__", None)
        name = getattr(inner, "__name__", "")
        builtin = owner is not None and type(owner).__module__ == "builtins"
        if builtin and name not in SAFE_METHODS:
            raise SecurityError(f"calling .{name}() is not allowed here")
        return super().call(__context, __obj, *args, **kwargs)  # type: ignore[misc]


def _bounded_pad(original: Callable[..., Any], argument: str, position: int) -> Callable[..., Any]:
    """Wrap a padding filter so its width cannot exceed MAX_WIDTH."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        width = kwargs.get(argument, args[position] if len(args) > position else None)
        if isinstance(width, int) and not isinstance(width, bool) and width > MAX_WIDTH:
            raise SecurityError(f"a width over {MAX_WIDTH} is not allowed")
        return original(*args, **kwargs)

    return wrapped


@pass_environment
def _format(env: Environment, value: str, *args: Any, **kwargs: Any) -> str:
    check_binop("%", str(value), args)
    return str(value) % (kwargs or args)


def _harden(env: SandboxedEnvironment) -> None:
    for name in ("lipsum", "cycler", "joiner", "namespace"):
        env.globals.pop(name, None)
    if "center" in env.filters:
        env.filters["center"] = _bounded_pad(env.filters["center"], "width", 1)
    if "indent" in env.filters:
        env.filters["indent"] = _bounded_pad(env.filters["indent"], "width", 1)
    if "wordwrap" in env.filters:
        env.filters["wordwrap"] = _bounded_pad(env.filters["wordwrap"], "width", 2)
    env.filters["format"] = _format


class ConditionSandbox(_Bounds, ImmutableSandboxedEnvironment):
    """For runbook conditions: no globals at all, a short list of filters."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        _harden(self)
        self.globals.clear()
        self.filters = {k: v for k, v in self.filters.items() if k in CONDITION_FILTERS}


class TemplateSandbox(_Bounds, SandboxedEnvironment):
    """For report templates: Jinja's filters, padding bounded, no text generators."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        _harden(self)
