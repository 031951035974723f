"""Reading a lab file into a Lab: whatever bytes it holds, the answer is a Lab or one LabError
with every problem on a line of its own, naming the file, the field and the fix."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from labkit.labfile.model import Lab, LabError
from labkit.labfile.problems import semantic_problems

MAX_BYTES = 1024 * 1024  # a lab file is a page or two; anything near this is not one
MAX_DEPTH = 20  # a lab file nests four levels; deeper is not a lab file


# What YAML makes of a key that is not a string, as the error says it.
KINDS = {"int": "a number", "float": "a number", "bool": "true or false", "null": "nothing (null)",
         "timestamp": "a date"}


class _Loader(yaml.SafeLoader):
    """YAML as a lab file uses it: no anchors and aliases (they can expand a small file into an
    enormous one), a bounded depth, keys that are plain scalars."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"line {event.start_mark.line + 1}: an alias (*{event.anchor}) is not allowed in a "
                                 "lab file. Write the value out")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(f"line {mark.line + 1}: nested more than {MAX_DEPTH} levels deep. A lab file "
                                     "has networks, nodes and services, a few levels each")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode):
                raise yaml.YAMLError(f"line {key.start_mark.line + 1}: a key is a {key.id}, not a name. "
                                     "Use plain names as keys")
            if key.tag != "tag:yaml.org,2002:str":
                kind = KINDS.get(key.tag.rsplit(":", 1)[-1], "something else")
                raise yaml.YAMLError(f"line {key.start_mark.line + 1}: the key {key.value!r} is not a name "
                                     f"(YAML reads it as {kind}). Quote it, or use a name")
        return super().construct_mapping(node, deep)


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


def parse_lab(text: str, source: str) -> Lab:
    """Validate lab text; `source` names the file in errors. Every problem is reported: all of
    the structure's, or, when the structure holds, all of the semantic ones."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}" if mark else ""
        raise LabError(f"{where.strip() or 'it'} is not valid YAML ({' '.join(str(exc.problem or exc.context).split())}). "
                       "Fix the syntax",
                       source) from None
    except yaml.reader.ReaderError as exc:
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise LabError(f"character U+{code:04X} at offset {exc.position} is not allowed in YAML. Remove it",
                       source) from None
    except yaml.YAMLError as exc:
        raise LabError(" ".join(str(exc).split()), source) from None
    except RecursionError:
        raise LabError("nested too deeply to be a lab file", source) from None
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
    except OSError as exc:
        raise LabError(f"cannot read the lab file ({exc.strerror})", str(path)) from None
    if len(data) > MAX_BYTES:
        raise LabError(f"more than {MAX_BYTES // 1024} KiB: a lab file is a page or two of YAML. "
                       "Give the path of a lab.yaml", str(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LabError(f"not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x}). Save the lab file as UTF-8",
                       str(path)) from None
    return parse_lab(text, str(path))


