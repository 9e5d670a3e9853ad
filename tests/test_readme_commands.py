"""Every `msjx-gateway …` command in the README's and docs' code blocks exists and its flags parse.

Click parses each line as the shell would hand it over, without running anything: a renamed command, a removed
or misspelt option, or a missing required one fails here before a reader meets it. A line that elides arguments
with "…" is parsed leniently (required options may be missing), but its options must still exist.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from gateway.cli import app

try:  # typer ≥ 0.20 carries its own copy of click, whose classes the commands are made of
    from typer._click.core import Context
    from typer._click.exceptions import UsageError
except ImportError:  # older typer builds on click itself
    from click import Context, UsageError

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ELIDED = "…"


def commands(page: Path) -> list[tuple[int, str]]:
    """(line number, command) for each msjx-gateway command inside a fenced code block, continuations joined."""
    found: list[tuple[int, str]] = []
    in_block = False
    pending: tuple[int, str] | None = None
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        if not in_block:
            continue
        if pending is not None:
            pending = (pending[0], pending[1] + " " + line.strip())
        else:
            text = line.strip()
            first = text.removeprefix("$ ").split(" ", 1)[0]
            # A command is what a prompt shows (`$ msjx-gateway …`) or what a tool prints with its path
            # (`.venv/bin/msjx-gateway …`); a bare "msjx-gateway demo on http://…" line is output.
            if not ((text.startswith("$ ") and first.endswith("msjx-gateway")) or first.endswith("/msjx-gateway")):
                continue
            text = text.removeprefix("$ ")
            pending = (number, text)
        if pending[1].endswith("\\"):
            pending = (pending[0], pending[1][:-1].rstrip())
            continue
        found.append(pending)
        pending = None
    return found


SHELL_OPERATORS = {";", "&", "&&", "|", "||", ">", ">>", "<", "(", ")"}


def shell_words(command: str) -> list[str]:
    """The words of the first command of a shell line: up to a redirection, a pipe, `;` or `&`."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words: list[str] = []
    for word in lexer:
        if word in SHELL_OPERATORS:
            break
        words.append(word)
    return words


CASES = [(page, number, command) for page in PAGES for number, command in commands(page)]


def test_the_pages_hold_commands_to_check() -> None:
    readme = [command for page, _, command in CASES if page.name == "README.md"]
    assert len(readme) >= 10, readme
    assert any(" keys new-caller " in f" {command} " for command in readme)


@pytest.mark.parametrize(
    ("page", "number", "command"), CASES, ids=[f"{page.name}:{number}" for page, number, _ in CASES]
)
def test_command_exists_and_its_flags_parse(page: Path, number: int, command: str) -> None:
    words = shell_words(command)
    lenient = ELIDED in words or any(word.endswith(ELIDED) for word in words)
    words = [word for word in words[1:] if word != ELIDED]
    leaf, words = resolve(words, f"{page.name}:{number}: `{command}`")
    try:
        leaf.make_context(leaf.name, list(words), resilient_parsing=lenient)
    except UsageError as exc:
        pytest.fail(f"{page.name}:{number}: `{command}` does not parse: {exc.format_message()}")


def resolve(words: list[str], where: str) -> tuple[Any, list[str]]:
    """The command the words name (through its groups), and the words left for it."""
    command: Any = typer.main.get_command(app)
    path = ["msjx-gateway"]
    while callable(getattr(command, "list_commands", None)):  # a group
        assert words, f"{where} names no command under {' '.join(path)}"
        name, words = words[0], words[1:]
        sub = command.get_command(Context(command), name)
        assert sub is not None, f"{where}: `{' '.join(path)} {name}` is not a command"
        command, path = sub, [*path, name]
    return command, words


@pytest.mark.parametrize(
    "words",
    [
        ["call", "credit", "dishonest-debtor", "--purpose", "X", "--key", "k.pem", "--caler", "platform"],
        ["call", "credit", "dishonest-debtor", "--purpose", "X", "--key", "k.pem"],
        ["keys", "new-caller"],
        ["audit", "export", "out.jsonl", "--from", "2026-12-01"],
    ],
)
def test_a_wrong_or_missing_flag_is_caught(words: list[str]) -> None:
    """The check itself can fail: a misspelt option and a missing required option or argument are reported."""
    leaf, rest = resolve(words, " ".join(words))
    with pytest.raises(UsageError):
        leaf.make_context(leaf.name, rest)


def test_an_unknown_command_is_caught() -> None:
    with pytest.raises(AssertionError, match="is not a command"):
        resolve(["keys", "new-calller", "platform"], "keys new-calller")
