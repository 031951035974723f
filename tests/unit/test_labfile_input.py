"""Whatever a lab file holds, labkit answers with a Lab or with one error whose every line names
the file; through the CLI, with exit status 1, no traceback and nothing made. Property-based:
hypothesis makes the files."""

import copy
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from labkit.cli import app
from labkit.labfile import LABS, Lab, LabError, known_labs, load_lab

TEXTS = {name: (LABS / name / "lab.yaml").read_text() for name in known_labs()}
SHIPPED = {name: yaml.safe_load(text) for name, text in TEXTS.items()}

# Deterministic in CI: the same examples every run, and enough of them to matter.
cases = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from(["rr", "masq", "director", "192.168.55.100", "10.0.0.0/8"]),
)
keys = st.one_of(
    st.text(max_size=12),
    st.integers(),
    st.booleans(),
    st.none(),
    st.sampled_from(["name", "networks", "nodes", "services", "vip", "role", "addresses"]),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=25,
)
# Pieces of YAML's syntax, strung together: tags, anchors, aliases, flow and block collections,
# plain scalars YAML reads as something other than text.
TOKENS = [
    "a",
    "name",
    "nodes",
    ": ",
    "- ",
    "? ",
    "\n",
    "  ",
    "{",
    "}",
    "[",
    "]",
    ", ",
    "&x ",
    "*x",
    "!!int ",
    "!!binary ",
    "!!python/object:os.system ",
    "!foo ",
    "'",
    '"',
    "#",
    "---\n",
    "...\n",
    "<<",
    "=",
    "~",
    "yes",
    "0x1F",
    "1_000",
    "2024-02-30",
    "1:30:00",
    ".nan",
    "9" * 5000,
    "|\n",
    ">\n",
    "\t",
    "%YAML 1.1\n",
    "\x00",
    "\x85",
    "\ufeff",
    "[/x]",
]
yamlish = st.lists(st.sampled_from(TOKENS), max_size=40).map("".join)


def outcome(content: bytes) -> Lab | LabError:
    """load_lab on a file with these bytes: a Lab, or the LabError it raised (anything else fails)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "lab.yaml"
        path.write_bytes(content)
        try:
            return load_lab(path)
        except LabError as exc:
            lines = str(exc).splitlines()
            assert lines and all(line.startswith(f"{path}: ") for line in lines), lines
            assert lines == [f"{path}: {p}" for p in exc.problems] and exc.source == str(path), lines
            return exc


@cases
@given(st.binary(max_size=2000))
def test_any_bytes(content):
    outcome(content)


@cases
@given(st.text(max_size=2000))
def test_any_text(text):
    outcome(text.encode())


@cases
@given(yamlish)
def test_any_string_of_yaml_syntax(text):
    outcome(text.encode())


@cases
@given(documents)
def test_any_yaml_document(document):
    outcome(yaml.safe_dump(document).encode())


def _paths(data, prefix=()):
    """Every path into a lab's data: (("services", 0, "vip"), ...)."""
    yield prefix
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _paths(value, prefix + (i,))


@st.composite
def mutated_labs(draw):
    """A shipped lab with one part replaced by something else (of any type), or removed."""
    data = copy.deepcopy(SHIPPED[draw(st.sampled_from(sorted(SHIPPED)))])
    path = draw(st.sampled_from([p for p in _paths(data) if p]))
    parent = data
    for step in path[:-1]:
        parent = parent[step]
    if draw(st.booleans()):
        parent[path[-1]] = draw(documents)
    elif isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent.pop(path[-1])
    return data


@st.composite
def edited_texts(draw):
    """A shipped lab's text with a line repeated (a key given twice), dropped, or with a piece of
    YAML written into it."""
    lines = draw(st.sampled_from(sorted(TEXTS.values()))).splitlines(keepends=True)
    i = draw(st.integers(0, len(lines) - 1))
    edit = draw(st.sampled_from(["repeat", "drop", "insert"]))
    if edit == "repeat":
        lines.insert(i, lines[i])
    elif edit == "drop":
        del lines[i]
    else:
        column = draw(st.integers(0, len(lines[i])))
        lines[i] = lines[i][:column] + draw(st.sampled_from(TOKENS)) + lines[i][column:]
    return "".join(lines).encode()


@cases
@given(mutated_labs())
def test_any_mutation_of_a_shipped_lab(data):
    outcome(yaml.safe_dump(data).encode())


@cases
@given(edited_texts())
def test_any_edit_of_a_shipped_lab_file(content):
    outcome(content)


def test_a_repeated_line_is_a_key_given_twice():
    lines = TEXTS["nat"].splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith("name:"))
    problem = outcome("".join(lines[: at + 1] + lines[at:]).encode())
    assert isinstance(problem, LabError)
    assert problem.problems == [
        f"line {at + 2}: the key 'name' is given twice (first on line {at + 1}). Keep one of them"
    ]


runner = CliRunner()


def answer(command: str, content: bytes):
    """`labkit COMMAND PATH` on a lab file with these bytes, LABKIT_HOME in a fresh folder:
    the result, the file's path, and whether anything was made under LABKIT_HOME."""
    with tempfile.TemporaryDirectory() as folder:
        path, home = Path(folder) / "lab.yaml", Path(folder) / "home"
        path.write_bytes(content)
        result = runner.invoke(app, [command, str(path)], env={**os.environ, "LABKIT_HOME": str(home)})
        return result, path, home.exists()


def assert_refused(result, path, made):
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not a crash CliRunner caught
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith(f"error: {path}: ") for line in lines), lines
    assert not made, "a refused lab file made something"


bad_files = st.one_of(
    st.binary(max_size=500),
    yamlish.map(str.encode),
    documents.map(lambda d: yaml.safe_dump(d).encode()),
    mutated_labs().map(lambda d: yaml.safe_dump(d).encode()),
    edited_texts(),
)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(bad_files, st.sampled_from(["render", "up"]))
def test_the_cli_answers_a_bad_lab_file_with_error_lines_and_makes_nothing(content, command):
    assume(isinstance(outcome(content), LabError))  # a valid lab would boot VMs under `up`
    assert_refused(*answer(command, content))


@pytest.mark.parametrize("command", ["render", "up"])
def test_a_name_that_looks_like_rich_markup_is_printed_as_written(command):
    content = TEXTS["nat"].replace("name: nat", "name: nat\n'[/x]': 1\n'[bold]b': 2").encode()
    result, path, made = answer(command, content)
    assert_refused(result, path, made)
    assert result.stderr.splitlines() == [
        f"error: {path}: [/x]: unknown field. Check its spelling against labs/nat/lab.yaml",
        f"error: {path}: [bold]b: unknown field. Check its spelling against labs/nat/lab.yaml",
    ]
