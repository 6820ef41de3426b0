"""The command reference (docs/commands.md, and the sections that moved to docs/lab.md
and docs/alerts.md) is checked against the commands themselves (their --help), so it
cannot drift: every command has its section, every flag of a command is in its section,
every flag a section names exists, and every example in --help is in the docs. The
README is a landing page: at most 250 lines, linking every document."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from connfix.cli import cli

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
# where each part of the reference lives: the README and every document under docs/
DOCS = {p.name: p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
ALL = "\n".join(DOCS.values())


def commands(group: click.Group = cli, prefix: str = "connfix") -> list[tuple[str, click.Command]]:
    found = []
    ctx = click.Context(group)
    for name in sorted(group.list_commands(ctx)):  # loads each lazily loaded command
        command = group.get_command(ctx, name)
        assert command is not None, name
        path = f"{prefix} {name}"
        if isinstance(command, click.Group):
            found += commands(command, path)
        else:
            found.append((path, command))
    return found


REFERENCE = DOCS["commands.md"]
INTRO = REFERENCE[
    REFERENCE.index("## Commands") : REFERENCE.index("### ", REFERENCE.index("## Commands"))
]


def section(path: str) -> str:
    """The README text about a command: the `### `connfix …`` section that names it (or
    its group), up to the next section of that level, and the Commands introduction
    (the flags every command shares)."""
    words = path.split()
    for size in range(len(words), 1, -1):
        name = " ".join(words[:size])
        for text in DOCS.values():
            match = re.search(
                rf"^### `{re.escape(name)}\b[^\n]*\n(.*?)(?=^### |^## |\Z)", text, re.M | re.S
            )
            if match:
                return INTRO + match.group(0)
    raise AssertionError(f"the docs have no section for `{path}`")


def flags(command: click.Command) -> set[str]:
    return {
        opt
        for param in command.params
        if isinstance(param, click.Option) and not param.hidden
        for opt in param.opts + param.secondary_opts
        if opt.startswith("--") and opt != "--help"
    }


COMMANDS = commands()


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_flag_of_a_command_is_in_its_readme_section(
    path: str, command: click.Command
) -> None:
    text = section(path)
    missing = sorted(f for f in flags(command) if f not in text)
    assert not missing, f"README section of `{path}` does not mention {missing}"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_example_in_help_is_in_the_readme(path: str, command: click.Command) -> None:
    help_text = command.help or ""
    examples = re.findall(r"^\s+(connfix [^\n]+)$", help_text.split("Example:")[-1], re.M)
    if "Example:" in help_text:
        assert examples, f"`{path} --help` has an Example: block with no command"
    for example in examples:
        assert example.split("  #")[0].strip() in ALL, f"`{example}` is not in the docs"


def test_every_flag_the_readme_names_for_a_command_exists() -> None:
    """A `connfix CMD … --flag` line in the README uses only flags CMD has."""
    known = dict(COMMANDS)
    for line in re.findall(r"^connfix [^\n]+$", ALL, re.M):
        words = line.split("#")[0].split()
        path = next(
            (
                p
                for p in sorted(known, key=len, reverse=True)
                if line.startswith(p + " ") or line == p
            ),
            None,
        )
        if path is None:
            continue
        used = {w.split("=")[0] for w in words if w.startswith("--")}
        unknown = used - flags(known[path]) - {"--help", "--debug", "--version"}
        assert not unknown, f"README line `{line}`: {path} has no {sorted(unknown)}"


def test_the_readme_is_a_landing_page_linking_every_document() -> None:
    assert README.count("\n") <= 250
    for name in DOCS:
        if name != "README.md":
            assert f"(docs/{name})" in README, f"docs/{name} is not linked from the README"


def test_every_relative_link_in_the_docs_leads_somewhere() -> None:
    for name, text in DOCS.items():
        base = ROOT if name == "README.md" else ROOT / "docs"
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            assert (base / target).exists(), f"{name} links to {target}, which does not exist"


def test_every_test_the_docs_name_exists() -> None:
    """docs/reliability.md and docs/security.md prove each claim with a named test
    (`tests/unit/x.py::name`, or `…::name` for the file named last): each must exist, and
    so must every test file the docs name."""
    for name, text in DOCS.items():
        last = None
        for path in re.findall(r"`(tests/[\w/]+\.py)", text):
            assert (ROOT / path).is_file(), f"{name} names {path}, which does not exist"
        for m in re.finditer(r"`(tests/[\w/]+\.py)::(\w+)|`…::(\w+)", text):
            last = m.group(1) or last
            test = m.group(2) or m.group(3)
            assert last is not None, f"{name}: `…::{test}` names no file before it"
            assert f"def {test}(" in (ROOT / last).read_text(), f"{name}: {last}::{test}"
