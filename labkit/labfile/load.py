"""Reading a lab file into a Lab: whatever bytes it holds, the answer is a Lab or one LabError
with every problem on a line of its own, naming the file, the field and the fix."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from labkit.errors import LabkitError
from labkit.labfile.find import known_labs, lab_file
from labkit.labfile.model import Lab, LabError
from labkit.labfile.problems import semantic_problems

MAX_BYTES = 1024 * 1024  # a lab file is a page or two; anything near this is not one
MAX_DEPTH = 20  # a lab file nests four levels; deeper is not a lab file
# The shipped labs hold about 100 values (keys, scalars, lists, mappings). A cap keeps a 1 MiB
# list of zeros from taking seconds to parse and answering with a line per zero.
MAX_NODES = 5000

# What YAML makes of a key that is not a string, as the error says it.
KINDS = {
    "int": "a number",
    "float": "a number",
    "bool": "true or false",
    "null": "nothing (null)",
    "timestamp": "a date",
    "merge": "a merge key",
    "value": "a value key (=)",
}


def _shortened(text: str, limit: int = 30) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


class _Loader(yaml.SafeLoader):
    """YAML as a lab file uses it: no anchors and aliases (they can expand a small file into an
    enormous one), a bounded depth and size, keys that are plain names, each given once.

    Aliases, depth and size stop the reading at once; wrong keys are collected in
    `key_problems`, so that a file with several gets them all on one run."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self.depth = 0
        self.nodes = 0
        self.key_problems: list[str] = []

    def compose_node(self, parent, index):
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            raise yaml.YAMLError(
                f"line {line}: an alias (*{event.anchor}) is not allowed in a lab file. Write the value out"
            )
        # An explicit tag (!!python/object, !!binary, !!set, !!int ...) asks YAML for a type a lab
        # file never needs, and pyyaml's constructors for them fail in many ways on odd values.
        if event.tag not in (None, "!"):
            raise yaml.YAMLError(
                f"line {line}: the tag {_shortened(_tag(event.tag))} is not allowed in a lab file. Remove it"
            )
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise yaml.YAMLError(
                f"line {line}: more than {MAX_NODES} values (a lab file holds a few hundred). "
                "Keep to the lab's networks, nodes and services"
            )
        if self.depth >= MAX_DEPTH:
            raise yaml.YAMLError(
                f"line {line}: nested more than {MAX_DEPTH} levels deep. A lab file has networks, "
                "nodes and services, a few levels each"
            )
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        named: dict[str, int] = {}
        kept = []
        for key, value in node.value:
            line = key.start_mark.line + 1
            if not isinstance(key, yaml.ScalarNode):
                self.key_problems.append(f"line {line}: a key is a {key.id}, not a name. Use plain names as keys")
            elif key.tag != "tag:yaml.org,2002:str":
                kind = KINDS.get(key.tag.rsplit(":", 1)[-1], "something else")
                self.key_problems.append(
                    f"line {line}: the key {_shortened(key.value)!r} is not a name "
                    f"(YAML reads it as {kind}). Quote it, or use a name"
                )
            elif key.value in named:
                self.key_problems.append(
                    f"line {line}: the key {_shortened(key.value)!r} is given twice "
                    f"(first on line {named[key.value]}). Keep one of them"
                )
            else:
                named[key.value] = line
                kept.append((key, value))
        node.value = kept  # what is left can be built: every key a string, each once
        return super().construct_mapping(node, deep)

    def construct_object(self, node, deep=False):
        # A plain scalar that matches YAML's pattern for a date or a number but cannot be one
        # (2024-02-30, a number of 5000 digits) ends in a ValueError inside pyyaml.
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            line, value = node.start_mark.line + 1, _shortened(str(node.value))
            if node.tag.endswith(":timestamp"):
                raise yaml.YAMLError(
                    f"line {line}: {value!r} reads as a date, but there is no such date "
                    f"({str(exc).rstrip('.')}). Write a real date, or quote it"
                ) from None
            if "digits" in str(exc):  # Python reads at most 4300 digits into an int
                raise yaml.YAMLError(
                    f"line {line}: {value!r} is too long a number to read. Use a smaller number"
                ) from None
            raise

    def construct_undefined(self, node):
        # Untagged, YAML 1.1 still reads `=` as !!value and `<<` as a merge key.
        raise yaml.YAMLError(
            f"line {node.start_mark.line + 1}: YAML reads {_shortened(str(node.value))!r} as "
            f"{_tag(node.tag)}, not as text. Quote it"
        )


_Loader.add_constructor(None, _Loader.construct_undefined)


def _tag(tag: str) -> str:
    return tag.replace("tag:yaml.org,2002:", "!!")


def _field(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _problem(err) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field. Check its spelling against labs/nat/lab.yaml"
    elif err["type"] == "missing":
        msg = "is required"
    field = _field(tuple(err["loc"]))
    return f"{field}: {msg}" if field else msg


def _read(text: str) -> tuple[object, list[str]]:
    loader = _Loader(text)  # reads the text at once: a character YAML refuses raises here
    try:
        return loader.get_single_data(), loader.key_problems
    finally:
        loader.dispose()


def _yaml_data(text: str, source: str) -> object:
    """The data YAML makes of a lab file's text, or a LabError saying why it makes none."""
    try:
        data, key_problems = _read(text)
    except yaml.MarkedYAMLError as exc:
        if exc.context == "expected a single document in the stream":
            raise LabError(
                f"line {exc.problem_mark.line + 1}: a second YAML document ('---'). "
                "A lab file holds one lab: remove the second document",
                source,
            ) from None
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}" if mark else "it"
        raise LabError(
            f"{where} is not valid YAML ({' '.join(str(exc.problem or exc.context).split())}). Fix the syntax", source
        ) from None
    except yaml.reader.ReaderError as exc:
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        before = text[: exc.position]
        raise LabError(
            f"line {before.count(chr(10)) + 1}: character U+{code:04X} (byte {len(before.encode())}) "
            "is not allowed in YAML. Remove it",
            source,
        ) from None
    except yaml.YAMLError as exc:
        raise LabError(" ".join(str(exc).split()), source) from None
    except RecursionError:
        raise LabError("nested too deeply to be a lab file", source) from None
    if key_problems:
        raise LabError(key_problems, source)
    return data


def parse_lab(text: str, source: str) -> Lab:
    """Validate lab text; `source` names the file in errors. Every problem is reported: all of
    the structure's, or, when the structure holds, all of the semantic ones."""
    data = _yaml_data(text, source)
    if data is None:
        raise LabError(
            "the file holds nothing; a lab file is a YAML mapping with networks, nodes and services. "
            "Start from labs/nat/lab.yaml",
            source,
        )
    if not isinstance(data, dict):
        raise LabError("a lab file is a YAML mapping with networks, nodes and services", source)
    try:
        lab = Lab.model_validate(data)
    except ValidationError as exc:
        raise LabError(list(dict.fromkeys(_problem(err) for err in exc.errors())), source) from None
    except RecursionError:
        raise LabError("nested too deeply to be a lab file", source) from None
    problems = list(dict.fromkeys(semantic_problems(lab)))
    if problems:
        raise LabError(problems, source)
    return lab


def load_lab(path: Path) -> Lab:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
            size = max(len(data), path.stat().st_size)
    except OSError as exc:
        raise LabError(f"cannot read the lab file ({exc.strerror})", str(path)) from None
    if size > MAX_BYTES:
        raise LabError(
            f"{size / MAX_BYTES:.1f} MiB is more than a lab file may be (1 MiB; the shipped labs are "
            "under 2 KiB). Give the path of a lab.yaml",
            str(path),
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LabError(
            f"not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x}). Save the lab file as UTF-8", str(path)
        ) from None
    return parse_lab(text, str(path))


def read_lab(name_or_path: str) -> Lab:
    """A lab file by name (a shipped lab), folder or path; an unknown name lists the known ones."""
    path = lab_file(name_or_path)
    if not path.exists():
        raise LabkitError(
            f"no lab {name_or_path!r}: {path} does not exist. Known labs: {', '.join(known_labs())}; "
            "or give the path of a lab.yaml"
        )
    return load_lab(path)
