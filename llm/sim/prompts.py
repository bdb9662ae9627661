"""Prompt parsing: what a DSPy ChatAdapter, JSONAdapter or XMLAdapter prompt asks for (the
output fields and their types, instructions, tools, few-shot demos, the current inputs)."""

from __future__ import annotations

import ast
import json
import re
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from llm.sim.text import HEADER_RE, WS_RE

# ---------------------------------------------------------------------------------------------
# Prompt structure


@dataclass(slots=True)
class FieldSpec:
    """One signature field as the prompt describes it."""

    name: str
    type: str = "str"
    kind: str = "str"  # str, int, float, bool, literal, list, dict, schema
    choices: tuple = ()
    item: FieldSpec | None = None
    schema: dict | None = None
    desc: str = ""


@dataclass(slots=True)
class Tool:
    name: str
    desc: str
    args: dict


@dataclass(slots=True)
class Program:
    """What a system message (plus demos) says about the task. Cached per distinct prompt."""

    inputs: list[FieldSpec]
    outputs: list[FieldSpec]
    instructions: str
    json_mode: bool
    tools: dict[str, Tool] = field(default_factory=dict)
    demos: list[tuple[dict, dict]] = field(default_factory=list)
    # Demo inputs with whitespace collapsed, for exact-match memory (computed once per program).
    demo_keys: list[dict[str, str]] = field(default_factory=list)
    _label_models: dict = field(default_factory=dict)
    _styles: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def input_names(self) -> list[str]:
        return [f.name for f in self.inputs]


_FIELDS_RE = re.compile(
    r"Your input fields are:\n(?P<inputs>.*?)\nYour output fields are:\n(?P<outputs>.*?)"
    r"(?:\nAll interactions will be structured|\Z)",
    re.S,
)
_FIELD_LINE_RE = re.compile(r"^\d+\. `(\w+)` \((.+?)\):[ ]?(.*)$", re.M)
_OBJECTIVE = "In adhering to this structure, your objective is: "
_CHAT_NOTE_RE = re.compile(r"^\{(\w+)\}\s+# note: the value you produce (.+)$", re.M)
_JSON_STRUCTURE_RE = re.compile(
    r"Outputs will be a JSON object with the following fields\.\n\n(\{.*?\n\})\s*(?:\n|$)", re.S
)
_NOTE_VALUE_RE = re.compile(r"^\{\w+\}\s+# note: the value you produce (.+)$", re.S)
_TOOL_RE = re.compile(
    r"^\(\d+\) (\w+)(?:, whose description is <desc>(.*?)</desc>)?\.\s*It takes arguments (\{.*\})\.\s*$",
    re.M,
)
_NOT_SUPPLIED = ("Not supplied for this particular example.", "Not supplied for this conversation history")


def _split_top_level(text: str) -> list[str]:
    """Split generic arguments at top-level commas: 'str, list[int]' -> ['str', 'list[int]']."""
    parts, depth, start, quote = [], 0, 0, ""
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def _parse_type(name: str, type_str: str, note: str = "", desc: str = "") -> FieldSpec:
    """FieldSpec for a DSPy annotation name such as `Literal['a', 'b']` or `list[str]`."""
    t = type_str.strip()
    spec = FieldSpec(name=name, type=t, desc=desc)
    # Optional / unions with None: answer the non-None member.
    if t.startswith(("Optional[", "typing.Optional[")) and t.endswith("]"):
        return _parse_type(name, t[t.index("[") + 1 : -1], note, desc)
    if "|" in t and "[" not in t.split("|")[0]:
        members = [m.strip() for m in t.split("|") if m.strip() not in ("None", "NoneType")]
        if members:
            return _parse_type(name, members[0], note, desc)
    if t.startswith("Union[") and t.endswith("]"):
        members = [m for m in _split_top_level(t[6:-1]) if m not in ("None", "NoneType")]
        if members:
            return _parse_type(name, members[0], note, desc)
    if t in ("str", "int", "float", "bool"):
        spec.kind = t
        return spec
    head, _, rest = t.partition("[")
    head = head.rsplit(".", 1)[-1]
    if head == "Literal" and rest.endswith("]"):
        spec.kind = "literal"
        try:
            spec.choices = tuple(ast.literal_eval("[" + rest[:-1] + "]"))
        except (ValueError, SyntaxError):
            spec.choices = tuple(p.strip("'\"") for p in _split_top_level(rest[:-1]))
        return spec
    if head in ("list", "List", "set", "Set", "tuple", "Tuple", "Sequence") and rest.endswith("]"):
        spec.kind = "list"
        args = [a for a in _split_top_level(rest[:-1]) if a != "..."]
        spec.item = _parse_type(name, args[0] if args else "str")
        return spec
    if head in ("list", "List"):
        spec.kind = "list"
        spec.item = FieldSpec(name=name)
        return spec
    if head in ("dict", "Dict", "Mapping"):
        spec.kind = "dict"
        args = _split_top_level(rest[:-1]) if rest.endswith("]") else []
        spec.item = _parse_type(name, args[1] if len(args) > 1 else "str")
        return spec
    # Enums, pydantic models and other types: the template note says what to produce.
    return _spec_from_note(spec, note)


def _spec_from_note(spec: FieldSpec, note: str) -> FieldSpec:
    if "one of:" in note:
        spec.kind = "literal"
        spec.choices = tuple(c.strip() for c in note.split("one of:", 1)[1].split(";") if c.strip())
    elif "JSON schema:" in note:
        try:
            spec.schema = json.loads(note.split("JSON schema:", 1)[1].strip())
            spec.kind = "schema"
        except ValueError:
            spec.kind = "str"
    elif "True or False" in note:
        spec.kind = "bool"
    return spec


def _output_notes(system: str) -> dict[str, str]:
    """Per-output-field notes from the field-structure template (enum values, JSON schemas)."""
    notes = {m.group(1): m.group(2).strip() for m in _CHAT_NOTE_RE.finditer(system)}
    match = _JSON_STRUCTURE_RE.search(system)
    if match:
        try:
            structure = json.loads(match.group(1))
        except ValueError:
            structure = {}
        for key, value in structure.items():
            note = _NOTE_VALUE_RE.match(value) if isinstance(value, str) else None
            if note:
                notes[key] = note.group(1).strip()
    return notes


def _parse_field_lines(block: str, notes: dict[str, str]) -> list[FieldSpec]:
    return [
        _parse_type(m.group(1), m.group(2), notes.get(m.group(1), ""), m.group(3).strip())
        for m in _FIELD_LINE_RE.finditer(block)
    ]


def _instructions_of(system: str) -> str:
    index = system.rfind(_OBJECTIVE)
    if index < 0:
        return ""
    text = system[index + len(_OBJECTIVE) :]
    return "\n".join(line.strip() for line in text.splitlines()).strip()


def _parse_tools(instructions: str) -> dict[str, Tool]:
    tools = {}
    for match in _TOOL_RE.finditer(instructions):
        try:
            args = ast.literal_eval(match.group(3))
        except (ValueError, SyntaxError):
            args = {}
        tools[match.group(1)] = Tool(
            match.group(1), match.group(2) or "", args if isinstance(args, dict) else {}
        )
    return tools


@lru_cache(maxsize=512)
def _parse_system(system: str) -> Program | None:
    """The task a DSPy system message describes, or None for a non-DSPy prompt."""
    match = _FIELDS_RE.search(system)
    if not match:
        return None
    notes = _output_notes(system)
    instructions = _instructions_of(system)
    outputs = _parse_field_lines(match.group("outputs"), notes)
    if not outputs:
        return None
    return Program(
        inputs=_parse_field_lines(match.group("inputs"), {}),
        outputs=outputs,
        instructions=instructions,
        json_mode="Outputs will be a JSON object" in system,
        tools=_parse_tools(instructions) if "It takes arguments" in instructions else {},
    )


def chat_sections(text: str) -> dict[str, str]:
    """`[[ ## name ## ]]` sections of a message, name -> stripped value (first occurrence wins)."""
    out: dict[str, str] = {}
    matches = list(HEADER_RE.finditer(text))
    if not matches and "</" in text:
        return _xml_sections(text)
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        name = m.group(1)
        if name not in out:
            out[name] = text[m.end() : end].strip()
    return out


_XML_FIELD_RE = re.compile(r"^<(\w+)>\n?(.*?)\n?</\1>$", re.S | re.M)


def _xml_sections(text: str) -> dict[str, str]:
    """Top-level `<name>value</name>` fields, as XMLAdapter writes them."""
    out: dict[str, str] = {}
    for m in _XML_FIELD_RE.finditer(text):
        out.setdefault(m.group(1), m.group(2).strip())
    return out


def strip_requirements(text: str) -> str:
    """Drop the trailing "Respond with ..." format reminder of the main user message."""
    index = text.rfind("\n\nRespond with ")
    return text[:index] if index >= 0 else text


def _json_object(text: str) -> dict | None:
    text = text.strip()
    try:
        value = json.loads(text)
    except ValueError:
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end <= start:
            return None
        try:
            value = json.loads(text[start : end + 1])
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def is_supplied(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and value.strip().startswith(_NOT_SUPPLIED))


def _parse_demos(pairs: tuple[tuple[str, str], ...]) -> list[tuple[dict, dict]]:
    demos = []
    for user, assistant in pairs:
        inputs = {k: v for k, v in chat_sections(user).items() if is_supplied(v)}
        outputs = chat_sections(assistant)
        if not outputs:
            outputs = _json_object(assistant) or {}
        outputs = {k: v for k, v in outputs.items() if is_supplied(v)}
        if inputs or outputs:
            demos.append((inputs, outputs))
    return demos


@lru_cache(maxsize=512)
def parse_program(system: str, pairs: tuple[tuple[str, str], ...]) -> Program | None:
    """Program (schema + demos) for a system message and its demo turns; parsed once, reused."""
    base = _parse_system(system)
    if base is None:
        return None
    demos = _parse_demos(pairs)
    return Program(
        inputs=base.inputs,
        outputs=base.outputs,
        instructions=base.instructions,
        json_mode=base.json_mode,
        tools=base.tools,
        demos=demos,
        demo_keys=[{k: squash(str(v)) for k, v in inputs.items()} for inputs, _ in demos],
    )


def squash(text: str) -> str:
    return WS_RE.sub(" ", text).strip()
