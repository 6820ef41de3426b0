"""Runbooks: ordered escalation steps in YAML, validated before anything runs."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from connfix import RunbookError
from connfix.actions import ACTIONS
from connfix.actions.base import Params
from connfix.config.digest import sha256_hex
from connfix.config.records import Invalid, Record, Rule, validate_cached
from connfix.config.yamlfile import (
    Located,
    PathT,
    YamlError,
    describe_at,
    describe_validation,
    load_text,
)
from connfix.engine import expressions

if TYPE_CHECKING:
    from pathlib import Path

DEFAULT_RUNBOOK = "too-many-connections"
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")
# pydantic's regex engine: `$` is the end of the text there (no newline before it)
_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_HINT = "fields of a runbook: version, name, summary, healthy, steps; of a step: id, action,"
_HINT += " description, params, when, confirm, approval, on_failure"


@dataclass(frozen=True, kw_only=True)
class StepModel(Record):
    """A step as written in the file (params checked against the action afterwards)."""

    id: Annotated[str, Rule(pattern=_ID_PATTERN)]
    action: str
    description: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    when: str | None = None
    confirm: bool | None = None
    # required: a real run waits for an approval before this step (connfix approve, or
    # serve's endpoint or Slack button), whoever started it
    approval: Literal["required", "none"] = "none"
    on_failure: Literal["halt", "continue"] = "halt"


@dataclass(frozen=True, kw_only=True)
class RunbookModel(Record):
    """A runbook as written in the file."""

    version: Literal[1] = 1
    name: Annotated[str, Rule(min_length=1, max_length=100)]
    summary: Annotated[str, Rule(min_length=1)]
    healthy: str
    steps: Annotated[list[StepModel], Rule(min_length=1, max_length=100)]


@dataclass(frozen=True)
class Step:
    """A validated step: its action resolved and its params typed."""

    id: str
    action: str
    description: str | None
    params: Params
    when: str | None
    confirm: bool
    on_failure: str
    line: int
    approval: bool = False  # a real run waits for an approval before it

    @property
    def mutating(self) -> bool:
        """Tell whether the step's action changes anything."""
        return ACTIONS[self.action].mutating


@dataclass(frozen=True)
class Runbook:
    """A validated runbook with where it came from and its hash."""

    name: str
    summary: str
    healthy: str
    steps: list[Step]
    source: str
    sha256: str
    shadows: str | None = None  # the shipped runbook a local one of the same name hides

    def check_hosts(self, environment: str, known: set[str]) -> None:
        """Refuse a step naming a host the environment does not have (exit 2)."""
        for step in self.steps:
            for name in getattr(step.params, "hosts", None) or []:
                if name not in known:
                    raise RunbookError(
                        f"{self.source}:{step.line}: steps.{step.id}.params.hosts: no host"
                        f" {name!r} in environment {environment!r}"
                        f" (hosts: {', '.join(sorted(known))})"
                    )


def _fail(path: str | Path, located: Located, loc: PathT, message: str) -> RunbookError:
    return RunbookError(describe_at(path, located, loc, message))


def parse_runbook(text: str, path: str | Path) -> Runbook:
    """Validate a runbook's text; raise one RunbookError naming file, line and field."""
    try:
        located = load_text(text)
    except YamlError as exc:
        raise RunbookError(f"{path}:{exc.line}: {exc.message}") from None
    if not isinstance(located.data, dict):
        raise RunbookError(f"{path}:1: a runbook must be a mapping with name, healthy, steps")
    try:
        model = validate_cached(RunbookModel, located.data)
    except Invalid as exc:
        raise RunbookError(describe_validation(path, located, exc.errors, _HINT)) from None
    try:
        expressions.check(model.healthy)
    except expressions.ExpressionError as exc:
        raise _fail(path, located, ("healthy",), str(exc)) from None
    steps: list[Step] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(model.steps):
        if raw.id in seen:
            raise _fail(
                path,
                located,
                ("steps", index, "id"),
                f"duplicate step id {raw.id!r} (also steps[{seen[raw.id]}])",
            )
        seen[raw.id] = index
        steps.append(_step(raw, index, path, located))
    expressions.remember_checked()
    if steps[0].action != "diagnose":
        raise _fail(
            path,
            located,
            ("steps", 0, "action"),
            "the first step must be a diagnose: every later step plans from it",
        )
    return Runbook(
        name=model.name,
        summary=model.summary,
        healthy=model.healthy,
        steps=steps,
        source=str(path),
        sha256=sha256_hex(text.encode("utf-8")),
    )


def _step(raw: StepModel, index: int, path: str | Path, located: Located) -> Step:
    """One step checked against its action: the action exists, its params are the
    action's, a `hosts:` names a host, every condition compiles."""
    where: PathT = ("steps", index)
    action = ACTIONS.get(raw.action)
    if action is None:
        raise _fail(
            path,
            located,
            (*where, "action"),
            f"unknown action {raw.action!r}; actions: {', '.join(sorted(ACTIONS))}",
        )
    try:
        params = validate_cached(action.params_model, raw.params)
    except Invalid as exc:
        takes = [f.name for f in dataclasses.fields(action.params_model)]
        raise RunbookError(
            describe_validation(
                path,
                located,
                exc.errors,
                f"action {raw.action} takes: {', '.join(takes)}"
                if takes
                else f"action {raw.action} takes none",
                prefix=(*where, "params"),
            )
        ) from None
    named = getattr(params, "hosts", None)
    if "hosts" in raw.params and (not named or any(not str(n).strip() for n in named)):
        raise _fail(
            path,
            located,
            (*where, "params", "hosts"),
            "names no host (an empty list or an empty name); leave it out for every host",
        )
    if raw.approval == "required" and not action.mutating:
        raise _fail(
            path,
            located,
            (*where, "approval"),
            f"action {raw.action} changes nothing: there is nothing to approve (give"
            " approval: required to the steps that change things)",
        )
    checks = [("when", raw.when)] if raw.when is not None else []
    checks += [(f"params.{name}", expr) for name, expr in action.expressions(params)]
    for field_name, expression in checks:
        try:
            expressions.check(expression)
        except expressions.ExpressionError as exc:
            loc = (*where, *field_name.split("."))
            raise _fail(path, located, loc, str(exc)) from None
    return Step(
        id=raw.id,
        action=raw.action,
        description=raw.description,
        params=params,
        when=raw.when,
        confirm=raw.confirm if raw.confirm is not None else action.mutating,
        on_failure=raw.on_failure,
        line=located.line_of(where),
        approval=raw.approval == "required",
    )


def load_runbook_file(path: str | Path) -> Runbook:
    """Read and validate one runbook file (`~` expanded)."""
    import os

    from connfix.config import files

    try:
        text = files.read_text(os.path.expanduser(path), 1_000_000)
    except FileNotFoundError:
        raise RunbookError(f"{path}: no such runbook file") from None
    except IsADirectoryError:
        raise RunbookError(f"{path}: cannot read the runbook: it is a directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunbookError(f"{path}: cannot read the runbook: {exc}") from None
    return parse_runbook(text, path)


def _looks_like_path(ref: str) -> bool:
    return "/" in ref or ref.endswith((".yaml", ".yml"))


def resolve_runbook(ref: str | None) -> Runbook:
    """Find a runbook by NAME (./runbooks/NAME.yaml, then the shipped one) or PATH."""
    from importlib import resources  # only to find a runbook by name (3-5 ms to import)
    from pathlib import Path

    ref = ref or DEFAULT_RUNBOOK
    if _looks_like_path(ref):
        return load_runbook_file(Path(ref))
    if not _ID.match(ref):
        raise RunbookError(f"{ref!r} is neither a runbook name nor a path")
    local = Path("runbooks") / f"{ref}.yaml"
    shipped = resources.files("connfix.engine").joinpath("runbooks", f"{ref}.yaml")
    if local.is_file():
        book = load_runbook_file(local)
        if shipped.is_file():
            book = dataclasses.replace(book, shadows=f"connfix:runbooks/{ref}.yaml")
        return book
    if shipped.is_file():
        return parse_runbook(shipped.read_text("utf-8"), Path(f"connfix:runbooks/{ref}.yaml"))
    known = sorted(
        entry.name.removesuffix(".yaml")
        for entry in resources.files("connfix.engine").joinpath("runbooks").iterdir()
        if entry.name.endswith(".yaml")
    )
    raise RunbookError(f"no runbook named {ref!r} (./runbooks/ or shipped: {', '.join(known)})")


def command_runbook(command: str, action: str, params: dict[str, Any]) -> Runbook:
    """Build the two-step runbook a single command runs: diagnose, then `action`.

    Flags are validated like runbook params; an error names the flag (exit 2).
    """
    import json

    model = ACTIONS[action].params_model
    try:
        typed = validate_cached(model, params)
    except Invalid as exc:
        problems = "; ".join(
            f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: "
            f"{str(e['msg']).removeprefix('Value error, ')}"
            if e["loc"]
            else str(e["msg"]).removeprefix("Value error, ")
            for e in exc.errors
        )
        raise RunbookError(f"connfix {command}: {problems}") from None
    canonical = json.dumps(
        {"command": command, "params": typed.dump()}, sort_keys=True, default=str
    )
    steps = [
        Step(
            "diagnose", "diagnose", None, ACTIONS["diagnose"].params_model(), None, False, "halt", 0
        ),
        # the step is the command: its messages read "restart refused: …", as typed
        Step(command, action, None, typed, None, ACTIONS[action].mutating, "halt", 0),
    ]
    return Runbook(
        name=f"connfix {command}",
        summary=f"the {command} command",
        healthy="severity == 'ok'",
        steps=steps,
        source=f"connfix {command} (command line)",
        sha256=sha256_hex(canonical.encode()),
    )
