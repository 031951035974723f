"""MkDocs hooks: the references that code already holds, written into the site when it is built.

A page asks for one with a marker line, `<!-- generated: NAME -->`, which is replaced by the
text below; nothing generated is kept in the repository, so the site cannot drift from the code.
The command reference comes from the typer app, the lab-file reference and the JSON Schema from
the pydantic model, the noise bands from the matrix report's own table, and the changelog page
from CHANGELOG.md at the repository's root (outside docs/, so it is added as a generated file).
"""

from __future__ import annotations

import inspect
import io
import json
import re
import tokenize
import types
import typing
from enum import Enum
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.M)


# ---- the command reference, from the typer app -----------------------------------------------


def _app():
    import typer

    from labkit.cli import app

    return typer.main.get_command(app)


def _kind(param) -> str:
    """What a parameter takes: its choices, or the kind of value."""
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if typing.get_origin(annotation) is list:
        (annotation,) = typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " \\| ".join(f"`{member.value}`" for member in annotation)
    names = {str: "text", int: "integer", float: "number", Path: "path"}
    if annotation in names:
        return names[annotation]
    click_type = getattr(param, "type", None)  # typer releases built on click itself
    if getattr(click_type, "choices", None):
        return " \\| ".join(f"`{choice}`" for choice in click_type.choices)
    return getattr(click_type, "name", "text")


def _default(param) -> str:
    if getattr(param, "is_flag", False):
        return "on" if param.default else "off"
    if param.required:
        return "required"
    default = param.default
    if default is None or default == [] or default == ():
        return ""
    if isinstance(default, Enum):
        default = default.value
    return f"`{default}`"


def _plain(text: str) -> str:
    """Text as Markdown shows it as written: a `*` in `linux-image-*.deb` is no emphasis. Code
    spans are left alone (Markdown shows a backslash in them as it is)."""
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(part if part.startswith("`") else re.sub(r"([\\*_<])", r"\\\1", part) for part in parts)


def _cell(text: str) -> str:
    return " ".join(_plain(text or "").split()).replace("|", "\\|")


def _help(text: str) -> list[str]:
    """A command's help, its `Example: labkit ...` paragraph as a code block."""
    lines: list[str] = []
    for paragraph in inspect.cleandoc(text or "").split("\n\n"):
        if paragraph.startswith("Example: "):
            lines += ["Example:", "", "```", paragraph.removeprefix("Example: "), "```", ""]
        else:
            lines += [" ".join(_plain(paragraph).split()), ""]
    return lines


def _usage(path: list[str], command) -> str:
    words = [*path]
    if any(p.opts[0].startswith("-") and not p.hidden for p in command.params):
        words.append("[OPTIONS]")
    for p in command.params:
        if p.opts[0].startswith("-"):
            continue
        word = p.name.upper() + ("..." if p.nargs == -1 else "")
        words.append(word if p.required else f"[{word}]")
    if command.context_settings.get("allow_extra_args"):
        words.append("[ARGS]...")
    return " ".join(words)


def _command(path: list[str], command) -> list[str]:
    lines = [f"### {' '.join(path)}", "", "```", _usage(path, command), "```", "", *_help(command.help)]
    arguments = [p for p in command.params if not p.opts[0].startswith("-")]
    options = [p for p in command.params if p.opts[0].startswith("-") and not p.hidden]
    if arguments:
        lines += ["| argument | takes | | meaning |", "|---|---|---|---|"]
        for p in arguments:
            required = "required" if p.required else "optional"
            lines.append(f"| `{p.name.upper()}` | {_kind(p)} | {required} | {_cell(p.help)} |")
        lines.append("")
    if options:
        lines += ["| option | takes | default | meaning |", "|---|---|---|---|"]
        for p in options:
            names = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
            takes = "" if p.is_flag else _kind(p) + (" (repeatable)" if p.multiple else "")
            lines.append(f"| {names} | {takes} | {_default(p)} | {_cell(p.help)} |")
        lines.append("")
    return lines


def commands_reference() -> str:
    lines: list[str] = []

    def walk(path: list[str], group) -> None:
        for name, command in group.commands.items():
            if command.hidden:
                continue
            if hasattr(command, "commands"):
                lines.extend([f"## {' '.join([*path, name])}", "", *_help(command.help)])
                walk([*path, name], command)
            else:
                lines.extend(_command([*path, name], command))

    walk(["labkit"], _app())
    return "\n".join(lines)


# ---- the lab-file reference, from the pydantic model ------------------------------------------


def _comments(cls: type) -> dict[str, str]:
    """A field's description where the model gives it as a comment: the one at the end of its
    line, or the comment lines just above it."""
    source = inspect.getsource(cls)
    by_line: dict[int, str] = {}
    code_lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            by_line[token.start[0]] = token.string.lstrip("#").strip()
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.add(token.start[0])
    found: dict[str, str] = {}
    for number, line in enumerate(source.splitlines(), start=1):
        field = re.match(r"    (\w+)\s*[:=]", line)  # the class body's own names, not a method's
        if not field:
            continue
        if number in by_line:
            found[field.group(1)] = by_line[number]
            continue
        above, at = [], number - 1
        while at in by_line and at not in code_lines:
            above.insert(0, by_line[at])
            at -= 1
        if above:
            found[field.group(1)] = " ".join(above)
    return found


def _bounds(metadata: list) -> str:
    found = []
    for item in metadata:
        for inner in [item, *getattr(item, "metadata", [])]:  # Field(ge=...) keeps its constraints inside
            for attr, sign in (("ge", "≥ "), ("le", "≤ "), ("min_length", "at least ")):
                value = getattr(inner, attr, None)
                if value is not None:
                    found.append(sign + str(value) + (" entry" if attr == "min_length" else ""))
    return f" ({', '.join(dict.fromkeys(found))})" if found else ""


def _type_text(annotation, models: list[type], enums: list[type], key: str = "name") -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_text(args[0], models, enums) + _bounds(list(args[1:]))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_text(a, models, enums) for a in args if a is not type(None))
    if origin is list:
        return "list of " + _type_text(args[0], models, enums)
    if origin is dict:
        return f"map: {key} → " + _type_text(args[1], models, enums)
    return _simple_type(annotation, models, enums)


def _simple_type(annotation, models: list[type], enums: list[type]) -> str:
    from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, Enum):
        if annotation not in enums:
            enums.append(annotation)
        return " \\| ".join(f"`{member.value}`" for member in annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation not in models:
            models.append(annotation)
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    names = {
        str: "text",
        int: "integer",
        bool: "`true` \\| `false`",
        IPv4Address: "IPv4 address",
        IPv6Address: "IPv6 address",
        IPv4Network: "IPv4 prefix (CIDR)",
        IPv6Network: "IPv6 prefix (CIDR)",
    }
    if annotation in names:
        return names[annotation]
    if "IPvAny" in getattr(annotation, "__name__", ""):
        return "IPv4 or IPv6 address"
    return getattr(annotation, "__name__", str(annotation))


def _field_default(field) -> str:
    if field.is_required():
        return "required"
    default = field.get_default(call_default_factory=True)
    if default is None:
        return ""
    if isinstance(default, Enum):
        default = default.value
    if default == "":
        return '`""`'
    if isinstance(default, bool):
        default = str(default).lower()
    return f"`{json.dumps(default) if isinstance(default, list | dict) else default}`"


def labfile_reference() -> str:
    from labkit.labfile import Lab

    models: list[type] = [Lab]
    enums: list[type] = []
    lines: list[str] = []
    for model in models:  # grows as nested models are met
        comments = _comments(model)
        lines += [f"### {model.__name__}", ""]
        if model.__doc__ and model is not Lab:
            lines += [inspect.cleandoc(model.__doc__), ""]
        lines += ["| field | type | default | description |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            key = "node name" if name == "nodes" else "network name"  # the model's only maps
            kind = _type_text(field.annotation, models, enums, key) + _bounds(field.metadata)
            about = field.description or comments.get(name, "")
            lines.append(f"| `{name}` | {kind} | {_field_default(field)} | {_cell(about)} |")
        lines.append("")
    lines += ["### Choices", ""]
    for enum in enums:
        comments = _comments(enum)
        about = inspect.cleandoc(enum.__doc__) if enum.__doc__ and enum.__doc__ != Enum.__doc__ else ""
        lines += [f"**{enum.__name__}**" + (f": {_cell(about)}" if about else ""), ""]
        for member in enum:
            meaning = comments.get(member.name, "")
            lines.append(f"- `{member.value}`" + (f": {meaning}" if meaning else ""))
        lines.append("")
    return "\n".join(lines)


def lab_schema() -> str:
    from labkit.labfile import Lab

    text = "```json\n" + json.dumps(Lab.model_json_schema(), indent=2) + "\n```"
    # Folded away (pymdownx.details): a few hundred lines that an editor reads, not a person.
    return '??? example "labkit-lab.schema.json"\n\n' + "\n".join("    " + line for line in text.splitlines())


# ---- the matrix's noise bands, from the table the report applies ------------------------------


def noise_bands() -> str:
    from labkit.operate.matrix_report import band_rows

    headers, rows = band_rows()
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        figure, *rest = (_cell(text) for text, _ in row)
        lines.append("| " + " | ".join([f"`{figure}`", *rest]) + " |")
    return "\n".join(lines)


# ---- the faults verify is proven to catch, from their catalogue ---------------------------------


def faults() -> str:
    import shlex

    from labkit.labfile import known_labs, lab_file, load_lab
    from labkit.operate.faults import FAULTS

    labs = {name: load_lab(lab_file(name)) for name in known_labs()}
    lines: list[str] = []
    for fault in FAULTS:
        where = [name for name, lab in labs.items() if fault.applies(lab) and fault.node in lab.nodes]
        commands = "\n".join("sudo " + shlex.join(words) for words in fault.commands)
        lines += [
            f"### {fault.name}",
            "",
            f"**What a user sees:** {_plain(fault.symptom)}.",
            "",
            f"**A hint:** {_plain(fault.hint)}",
            "",
            '??? note "The fault, and why"',
            "",
            f"    On {fault.node} of the {', '.join(where) or 'no shipped'} lab{'s' if len(where) > 1 else ''}:",
            "",
            "    ```",
            *("    " + line for line in commands.splitlines()),
            "    ```",
            "",
            f"    {_plain(fault.explanation)}",
            "",
            f"    verify fails {', '.join(f'`{check}`' for check in fault.catches)};"
            f" `labkit {fault.repair.value}` brings the lab back.",
            "",
        ]
    return "\n".join(lines)


def exercises() -> str:
    from labkit.labfile import known_labs, lab_file, load_lab
    from labkit.operate.faults import FAULTS, applying_to

    labs = {name: load_lab(lab_file(name)) for name in known_labs()}
    lines = ["| exercise | labs | what the student sees | the hint |", "|---|---|---|---|"]
    for fault in FAULTS:
        where = ", ".join(name for name, lab in labs.items() if fault in applying_to(lab))
        lines.append(f"| `{fault.name}` | {where} | {_cell(fault.symptom)} | {_cell(fault.hint)} |")
    return "\n".join(lines)


GENERATORS = {
    "faults": faults,
    "exercises": exercises,
    "commands": commands_reference,
    "lab-file": labfile_reference,
    "schema": lab_schema,
    "noise-bands": noise_bands,
}


# ---- MkDocs events ----------------------------------------------------------------------------


def on_files(files, config):
    files.append(File.generated(config, "changelog.md", content=(ROOT / "CHANGELOG.md").read_text()))
    return files


def on_page_markdown(markdown, page, config, files):
    def generated(match: re.Match) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"{page.file.src_uri}: no generator for the marker {name!r}: {', '.join(GENERATORS)}")
        return GENERATORS[name]()

    return MARKER.sub(generated, markdown)
