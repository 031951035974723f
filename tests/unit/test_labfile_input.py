"""Whatever a lab file holds, labkit answers with a Lab or with one error whose every line names
the file; through the CLI, with exit status 1, no traceback and nothing made. Property-based:
hypothesis makes the files."""

import os
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from typer.testing import CliRunner

from labkit.cli import app
from labkit.labfile import LABS, Lab, LabError, load_lab

SHIPPED = {name: yaml.safe_load((LABS / name / "lab.yaml").read_text()) for name in ("nat", "tun", "dr", "fwmark")}

# Deterministic in CI: the same examples every run, and enough of them to matter.
cases = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                    st.text(max_size=30), st.sampled_from(["rr", "masq", "director", "192.168.55.100", "10.0.0.0/8"]))
keys = st.one_of(st.text(max_size=12), st.integers(), st.booleans(), st.none(),
                 st.sampled_from(["name", "networks", "nodes", "services", "vip", "role", "addresses"]))
documents = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(keys, inner, max_size=4)), max_leaves=25)


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
    """A shipped lab with one part replaced by something else, or removed."""
    import copy
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


@cases
@given(mutated_labs())
def test_any_mutation_of_a_shipped_lab(data):
    outcome(yaml.safe_dump(data).encode())


runner = CliRunner()


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=500), documents.map(lambda d: yaml.safe_dump(d).encode()),
                 mutated_labs().map(lambda d: yaml.safe_dump(d).encode())),
       st.sampled_from(["render", "up"]))
def test_the_cli_answers_a_bad_lab_file_with_error_lines_and_makes_nothing(content, command):
    assume(isinstance(outcome(content), LabError))  # a valid lab would boot VMs under `up`
    with tempfile.TemporaryDirectory() as folder:
        path, home = Path(folder) / "lab.yaml", Path(folder) / "home"
        path.write_bytes(content)
        result = runner.invoke(app, [command, str(path)], env={**os.environ, "LABKIT_HOME": str(home)})
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
        lines = result.stderr.splitlines()
        assert lines and all(line.startswith(f"error: {path}: ") for line in lines), lines
        assert not home.exists(), "a refused lab file made something"
