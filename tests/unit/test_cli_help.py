"""`labkit --help` and every command's help read as sentences at 80 columns: each line break in
a paragraph is the wrapper's, and each command shows an example of its own."""

import click
import pytest
import typer
from typer.testing import CliRunner

from labkit.cli import app

runner = CliRunner()


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, command in group.commands.items():
        paths.append((*prefix, name))
        if isinstance(command, click.Group):
            paths += command_paths(command, (*prefix, name))
    return paths


COMMANDS = command_paths(typer.main.get_command(app))


def help_text(application: typer.Typer, path: tuple[str, ...], width: int) -> str:
    result = runner.invoke(application, [*path, "--help"], env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    return result.output


def _cells(line: str) -> str:
    """A line without the panel's borders: what is inside, padding included."""
    return line[1:-1] if line.startswith("│") and line.endswith("│") else line


def _last_cell(line: str) -> int:
    """Where the last cell of a row starts: after two spaces (or the line's first one)."""
    starts = [
        i for i in range(1, len(line)) if line[i] != " " and line[i - 1] == " " and (i == 1 or line[i - 2] == " ")
    ]
    return starts[-1] if starts else -1


def premature_breaks(text: str) -> list[str]:
    """Lines that end although the next line's first word would have fitted on them: a break
    the text carried in, not one the wrapper made. A continuation is a line whose text starts
    where the last cell of the line above starts (a blank first column in a panel)."""
    found = []
    lines = text.splitlines()
    for above, below in zip(lines, lines[1:]):
        a, b = _cells(above), _cells(below)
        if not a.strip() or not b.strip():
            continue
        start = len(b) - len(b.lstrip())
        if start != _last_cell(a) or b.split()[0].startswith("["):
            continue  # `below` begins a row of its own, or is typer's `[default: ...]` or `[required]`
        room = len(a) - 1 - start  # the cell reaches the right edge, less its padding
        if len(a[start:].rstrip()) + 1 + len(b.split()[0]) <= room:
            found.append(f"{above.rstrip()}\n{below.rstrip()}")
    return found


@pytest.mark.parametrize("path", [(), *COMMANDS], ids=lambda p: " ".join(p) or "labkit")
def test_help_is_wrapped_by_the_terminal_not_by_the_docstring(path):
    text = help_text(app, path, 80)
    assert max(map(len, text.splitlines())) <= 80
    assert premature_breaks(text) == [], text


def test_the_check_finds_a_docstring_line_break():
    """The check above can fail: a docstring wrapped by hand breaks the command list."""
    sample = typer.Typer()

    @sample.command()
    def show() -> None:
        """Both directors' IPVS tables side by side: services, real servers, weights, connections,
        counters and rates; which director is active."""

    @sample.command()
    def other() -> None:
        """Another."""

    assert premature_breaks(help_text(sample, (), 80))


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_shows_an_example_as_its_own_paragraph(path):
    lines = help_text(app, path, 200).splitlines()
    if path in (("box",), ("class",), ("exercise",)):
        return  # a group: its commands have the examples
    at = next((i for i, line in enumerate(lines) if line.strip().startswith("Example: ")), None)
    assert at is not None, "\n".join(lines)
    assert lines[at].strip().startswith(f"Example: labkit {' '.join(path)}")
    assert lines[at - 1].strip() == "", "the example is not a paragraph of its own"


def test_at_any_width_the_help_holds_the_same_words():
    """Wrapped at 80 or 200 columns, the command list says the same, in the same order."""

    def words(text: str) -> list[str]:
        return [w for w in text.split() if w.strip("│╭╮╰╯─")]

    assert words(help_text(app, (), 80)) == words(help_text(app, (), 200))
