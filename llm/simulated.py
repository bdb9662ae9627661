"""The simulated LLM provider: `sim/<name>` models, answered in-process.

DSPex ships this as a real (clearly labelled) model: it is the default LM of a fresh install,
the target of load and fault tests and the demo model. It never calls out anywhere. It reads the
prompts DSPy 3.4.1 sends (ChatAdapter and JSONAdapter, also XMLAdapter: field lists with types,
the `[[ ## field ## ]]` template, the instructions, few-shot demos as earlier user/assistant
turns, the current inputs) and answers every requested output field in the requested type, in
the adapter's format (a JSON object whenever a `response_format` asks for JSON).

Answers come only from what the prompt contains, so instructions and demos change them and an
optimizer measurably improves a program:

* exact-match memory: a demo whose inputs equal the current inputs is answered with its outputs;
* `Literal` fields: every allowed label is scored by token overlap between the current inputs and
  the label's name, the words the instructions associate with it ("billing: invoices, refunds")
  and the words of the demos labelled with it;
* `str` fields: extractive answers from context passages (a short span when demo answers are
  short, formatting words such as "lowercase" or "one word" in the instructions are obeyed),
  otherwise a deterministic text derived from the inputs;
* numbers: a safely evaluated arithmetic expression from the inputs, a number in the inputs, or a
  hash-derived number; `bool`: demos when present, else a keyword heuristic.

The model name `sim/concise` is the same model tuned for brevity: when neither instructions nor
demos ask for a length, its free-text answers are short spans (at most three words) instead of
whole sentences. Nothing else differs between `sim/<name>` models (their answers are seeded by
the name, so tie-breaks and temperature noise differ too). This is what makes a program's
`model` variable worth searching (DSPex's variable search optimizer).

Everything is deterministic: the same request (model, messages, temperature, seed) gives the
same reply; tie-breaks and temperature noise come from a sha256 of the canonical request.

No Django import here: `llm.sim_server` and DSPy engines use this module in any process.

In-process use with DSPy 3.4.1::

    lm = dspy.LM("sim/default", engine=SimEngine(), async_engine=AsyncSimEngine(),
                 num_retries=0, cache=False)

`dspy.LM` accepts the `sim/` prefix as is: with a custom engine DSPy never routes the model
string (no lm15 or LiteLLM lookup), so no registration is needed. A custom engine owns its
connection, so `api_key`/`api_base` must not be passed to `dspy.LM`.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import re
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from dspex_site.arithmetic import evaluate

__all__ = [
    "AsyncSimEngine",
    "SimEngine",
    "SimReply",
    "count_tokens",
    "safe_eval",
    "sim_lm",
    "simulate_chat",
    "simulate_embeddings",
]

# ---------------------------------------------------------------------------------------------
# Public result type


@dataclass(frozen=True, slots=True)
class SimReply:
    """One simulated completion. `finish_reason` is "length" when max_tokens cut the content."""

    content: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


# ---------------------------------------------------------------------------------------------
# Text helpers (compiled once: this module sits under benchmarks)

_TOKEN_RE = re.compile(r"[a-z0-9]+")
_HEADER_RE = re.compile(r"\[\[ ## (\w+) ## \]\]")
_SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9$])")
_SPAN_WORD_RE = re.compile(
    r"[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63})+|https?://\S+[\w/]|\$?\d[\d,]*(?:\.\d+)?%?|[A-Za-z][A-Za-z'\u2019\-]*"
)
_NUMBER_RE = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?(?![\w])")
_LIST_ITEM_RE = re.compile(r"^\[\d+\] ", re.M)
_WS_RE = re.compile(r"\s+")
_DIGIT_RE = re.compile(r"\d")
_CAPITALISED_RE = re.compile(r"\b[A-Z][a-z]+(?: [A-Z][a-z]+)*")

STOPWORDS = frozenset(
    """a an the and or but if then else of to in on at by for with from into onto over under about
    as is are was were be been being am do does did doing done have has had having i me my mine we
    us our ours you your yours he him his she her hers it its they them their theirs this that these
    those there here what which who whom whose when where why how all any both each few more most
    other some such no nor not only own same so than too very can will shall should may
    might must just also now get got use used using via per up down out off again once s t re ve ll
    d m o y let lets please thanks thank hi hello dear regards after before since until while during
    through between because even still already yet ever anymore really actually always another every
    don doesn didn isn wasn aren weren haven hasn won wouldn couldn shouldn""".split()  # noqa: SIM905
)
_NEGATIONS = frozenset(
    {
        "not",
        "no",
        "never",
        "none",
        "without",
        "cannot",
        "nothing",
        "don",
        "doesn",
        "didn",
        "isn",
        "wasn",
        "aren",
    }
)

_stem_cache: dict[str, str] = {}


def _stem(word: str) -> str:
    """A tiny suffix stripper: refunds/refunded/refunding -> refund, charges/charge -> charg."""
    cached = _stem_cache.get(word)
    if cached is not None:
        return cached
    w = word
    if len(w) > 4 and w.endswith("ies"):
        w = w[:-3] + "y"
    elif len(w) > 5 and w.endswith("ing"):
        w = w[:-3]
    elif len(w) > 4 and w.endswith("ed"):
        w = w[:-2]
    elif len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        w = w[:-1]
    if len(w) > 4 and w.endswith("e"):
        w = w[:-1]
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "lsz":
        w = w[:-1]
    if len(_stem_cache) < 200_000:  # bounded: a server sees arbitrary text
        _stem_cache[word] = w
    return w


def _tokens(text: str) -> list[str]:
    """Content-word stems of a text, in order (stopwords and 1-letter tokens dropped)."""
    return [_stem(t) for t in _TOKEN_RE.findall(text.lower()) if len(t) > 1 and t not in STOPWORDS]


def _raw_words(text: str) -> list[str]:
    return _TOKEN_RE.findall(text.lower())


def count_tokens(text: str) -> int:
    """Token estimate used for usage reporting: about four characters per token."""
    return (len(text) + 3) // 4 if text else 0


def _message_text(content: Any) -> str:
    """Text of an OpenAI-style message content: a string or a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    return str(content)


def _unit(seed: bytes, salt: str) -> float:
    """A deterministic number in [0, 1) from the request digest and a salt."""
    return zlib.crc32(salt.encode(), int.from_bytes(seed[:4], "big")) / 4294967296.0


# ---------------------------------------------------------------------------------------------
# Safe arithmetic (never eval)


def safe_eval(expression: str) -> float | int:
    """An arithmetic expression's value (`^` read as a power); anything else raises ValueError.

    The one evaluator and its limits are `dspex_site.arithmetic`'s, shared with the calculator tool.
    """
    return evaluate(expression.replace("^", "**"))


_WORD_OPS = [
    (re.compile(r"\bmultiplied by\b|\btimes\b", re.I), "*"),
    (re.compile(r"\bdivided by\b|\bover\b", re.I), "/"),
    (re.compile(r"\bplus\b|\badded to\b", re.I), "+"),
    (re.compile(r"\bminus\b", re.I), "-"),
    (re.compile(r"\bto the power of\b", re.I), "**"),
    (re.compile("(?<=\\d)\\s*[x\u00d7]\\s*(?=\\d)"), "*"),  # "3 x 4" and the multiplication sign
    (re.compile("\u00f7"), "/"),  # the division sign
]
# Bounded repetition: prompts are untrusted, and an unbounded class run backtracks quadratically.
_EXPR_RE = re.compile(r"[\d(][\d\s.+\-*/%()^]{0,200}[\d)]")
_HAS_OP_RE = re.compile(r"[\d)]\s*(?:\*\*|[+\-*/%^])\s*[\d(\-]")


def _find_expression(text: str) -> str | None:
    """The longest arithmetic expression in a text (operators in words made symbols), if any."""
    if not _DIGIT_RE.search(text):
        return None
    text = text[:4000]  # an expression worth evaluating is short; keep the scan bounded
    for pattern, replacement in _WORD_OPS:
        text = pattern.sub(replacement, text)
    best = None
    for match in _EXPR_RE.finditer(text):
        candidate = match.group(0).strip()
        if _HAS_OP_RE.search(candidate) and (best is None or len(candidate) > len(best)):
            best = candidate
    return best


def _find_arithmetic(text: str) -> float | int | None:
    """The value of the longest arithmetic expression in a text, if any."""
    best = _find_expression(text)
    if best is None:
        return None
    try:
        return safe_eval(best)
    except (ValueError, TypeError, RecursionError):
        return None


def _first_number(text: str) -> float | int | None:
    match = _NUMBER_RE.search(text)
    if not match:
        return None
    raw = match.group(0).replace(",", "")
    return float(raw) if "." in raw else int(raw)


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


def _sections(text: str) -> dict[str, str]:
    """`[[ ## name ## ]]` sections of a message, name -> stripped value (first occurrence wins)."""
    out: dict[str, str] = {}
    matches = list(_HEADER_RE.finditer(text))
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


def _strip_requirements(text: str) -> str:
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


def _supplied(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and value.strip().startswith(_NOT_SUPPLIED))


def _parse_demos(pairs: tuple[tuple[str, str], ...]) -> list[tuple[dict, dict]]:
    demos = []
    for user, assistant in pairs:
        inputs = {k: v for k, v in _sections(user).items() if _supplied(v)}
        outputs = _sections(assistant)
        if not outputs:
            outputs = _json_object(assistant) or {}
        outputs = {k: v for k, v in outputs.items() if _supplied(v)}
        if inputs or outputs:
            demos.append((inputs, outputs))
    return demos


@lru_cache(maxsize=512)
def _program(system: str, pairs: tuple[tuple[str, str], ...]) -> Program | None:
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
        demo_keys=[{k: _squash(str(v)) for k, v in inputs.items()} for inputs, _ in demos],
    )


def _squash(text: str) -> str:
    return _WS_RE.sub(" ", text).strip()


# ---------------------------------------------------------------------------------------------
# Classification (Literal fields)

NAME_WEIGHT = 1.0
INSTRUCTION_WEIGHT = 1.0
DEMO_WEIGHT = 1.5


def _norm_label(value: Any) -> str:
    return str(value).strip().strip("'\"").lower()


def _label_words(label: Any) -> list[str]:
    return _tokens(str(label).replace("_", " ").replace("-", " "))


def _instruction_associations(instructions: str, choices: tuple) -> list[set[str]]:
    """Words each label is associated with by instruction lines such as "billing: invoices, refunds".

    A line mentioning one label gives it all the line's words; a line mentioning several splits at
    the mentions, each label taking the words that follow it.
    """
    assoc: list[set[str]] = [set() for _ in choices]
    if not instructions:
        return assoc
    alternatives = []
    for i, choice in enumerate(choices):
        raw = str(choice).lower()
        forms = {re.escape(raw), re.escape(raw.replace("_", " ")), re.escape(raw.replace("_", "-"))}
        alternatives.append((i, "|".join(sorted(forms, key=len, reverse=True))))
    pattern = re.compile("|".join(f"(?P<l{i}>(?<![\\w]){forms}(?![\\w]))" for i, forms in alternatives), re.I)
    for line in re.split(r"[\n;]+", instructions):
        mentions = [(m.start(), m.end(), int(m.lastgroup[1:])) for m in pattern.finditer(line)]
        if not mentions:
            continue
        label_set = {mention[2] for mention in mentions}
        if len(label_set) == 1:
            words = set(_tokens(pattern.sub(" ", line)))
            assoc[mentions[0][2]].update(words)
            continue
        for j, (_, end, index) in enumerate(mentions):
            stop = mentions[j + 1][0] if j + 1 < len(mentions) else len(line)
            assoc[index].update(_tokens(line[end:stop]))
    return assoc


def _label_model(program: Program, spec: FieldSpec, choices: tuple) -> list[dict[str, float]]:
    """Per-label token weights from label names, instructions and demos (cached per program)."""
    key = (spec.name, choices)
    model = program._label_models.get(key)
    if model is not None:
        return model
    weights: list[dict[str, float]] = [{} for _ in choices]
    if spec.kind != "bool":
        for i, choice in enumerate(choices):
            for word in _label_words(choice):
                weights[i][word] = weights[i].get(word, 0.0) + NAME_WEIGHT
    for i, words in enumerate(_instruction_associations(program.instructions, choices)):
        for word in words:
            weights[i][word] = weights[i].get(word, 0.0) + INSTRUCTION_WEIGHT
    # Demo vocabulary: document frequency per label, normalised by that label's demo count, and
    # shared between labels when a word occurs under several (so "my", "app" carry little).
    by_norm = {_norm_label(c): i for i, c in enumerate(choices)}
    df: list[dict[str, int]] = [{} for _ in choices]
    counts = [0] * len(choices)
    for demo_inputs, demo_outputs in program.demos:
        if spec.name not in demo_outputs:
            continue
        index = by_norm.get(_norm_label(demo_outputs[spec.name]))
        if index is None:
            continue
        counts[index] += 1
        for word in set(_tokens(" ".join(str(v) for v in demo_inputs.values()))):
            df[index][word] = df[index].get(word, 0) + 1
    spread: dict[str, int] = {}
    for per_label in df:
        for word in per_label:
            spread[word] = spread.get(word, 0) + 1
    for i, per_label in enumerate(df):
        for word, n in per_label.items():
            weights[i][word] = weights[i].get(word, 0.0) + DEMO_WEIGHT * n / counts[i] / spread[word]
    with program._lock:
        program._label_models[key] = weights
    return weights


# ---------------------------------------------------------------------------------------------
# Answering


_CONTEXT_NAMES = frozenset(
    {
        "context",
        "contexts",
        "passages",
        "passage",
        "documents",
        "document",
        "docs",
        "evidence",
        "sources",
        "source",
        "article",
        "background",
        "knowledge",
        "snippets",
        "retrieved",
    }
)
CONCISE_MAX_WORDS = 3  # free-text answer length of `sim/concise` when nothing asks for one
_REASONING_NAMES = ("reasoning", "rationale", "thought", "next_thought", "explanation", "thinking")


@dataclass(slots=True)
class _Style:
    """Formatting asked for by the instructions or shown by the demos."""

    case: str = ""  # "", "lower", "upper"
    max_words: int = 0  # 0 = no limit
    sentence: bool = False


def _style(program: Program, spec: FieldSpec) -> _Style:
    """Formatting for a str field, from instructions and demo answers (cached per program)."""
    style = program._styles.get(spec.name)
    if style is None:
        style = program._styles[spec.name] = _compute_style(program, spec)
    return style


def _compute_style(program: Program, spec: FieldSpec) -> _Style:
    style = _Style()
    text = program.instructions.lower()
    if re.search(r"\blower[- ]?case\b", text):
        style.case = "lower"
    elif re.search(r"\bupper[- ]?case\b|\ball caps\b|\bcapital letters\b", text):
        style.case = "upper"
    if re.search(r"\b(one|single|1)[- ]word\b", text):
        style.max_words = 1
    elif re.search(r"\b(concise|brief|short|few words|terse)\b", text):
        style.max_words = 3
    if re.search(r"\b(full|complete) sentences?\b", text):
        style.sentence, style.max_words = True, 0
    answers = [str(out[spec.name]) for _, out in program.demos if spec.name in out]
    if answers and not style.sentence:
        lengths = [len(a.split()) for a in answers]
        if max(lengths) <= 4 and not style.max_words:
            style.max_words = max(lengths)
        if (
            not style.case
            and all(a == a.lower() for a in answers)
            and any(c.isalpha() for a in answers for c in a)
        ):
            style.case = "lower"
    return style


def _apply_case(text: str, style: _Style) -> str:
    if style.case == "lower":
        return text.lower()
    if style.case == "upper":
        return text.upper()
    return text


def _passages(value: str) -> list[str]:
    """Passages of a context value: a DSPy numbered list, a JSON list of strings or plain text."""
    value = value.strip()
    if value.startswith("[") and value.endswith("]") and not value.startswith("[1]"):
        try:
            items = json.loads(value)
        except ValueError:
            items = None
        if isinstance(items, list):
            return [str(i) for i in items if str(i).strip()]
    if _LIST_ITEM_RE.search(value):
        items = _LIST_ITEM_RE.split(value)
        return [_unquote(i) for i in items if i.strip()]
    return [_unquote(value)]


def _unquote(text: str) -> str:
    text = text.strip()
    if text.startswith("«««") and text.endswith("»»»"):
        return "\n".join(line.strip() for line in text[3:-3].strip().splitlines())
    if text.startswith("«") and text.endswith("»"):
        return text[1:-1]
    return text


def _sentences(text: str) -> list[str]:
    out = []
    for chunk in text.split("\n"):
        out.extend(s.strip() for s in _SENTENCE_SPLIT_RE.split(chunk) if s.strip())
    return out


class _Call:
    """State of one request being answered: the parsed program, current inputs and a digest."""

    def __init__(
        self,
        program: Program,
        inputs: dict[str, str],
        digest: bytes,
        temperature: float,
        concise: bool = False,
    ):
        self.program = program
        self.concise = concise
        self.inputs = inputs
        self.digest = digest
        self.temperature = temperature
        self.values: dict[str, Any] = {}
        context_names = [n for n in inputs if self._is_context(n, inputs[n])]
        self.context_names = context_names
        self.question_text = " ".join(
            v for k, v in inputs.items() if k not in context_names and k != "trajectory"
        )
        self.all_text = " ".join(inputs.values())
        self.query_tokens = set(_tokens(self.all_text))

    def _is_context(self, name: str, value: str) -> bool:
        lowered = name.lower()
        if lowered in _CONTEXT_NAMES or lowered.startswith("observation_"):
            return True
        if len(self.inputs) < 2 or lowered == "trajectory":
            return False
        return value.startswith("[1] «") or (len(value) > 300 and len(_sentences(value)) > 2)

    # -- dispatch --------------------------------------------------------------------------

    def answer(self) -> dict[str, Any]:
        memory = self._memory()
        outputs = self.program.outputs
        # Decisions first (labels, numbers), free text after, reasoning last so it can cite them.
        order = sorted(
            range(len(outputs)),
            key=lambda i: (
                2 if outputs[i].name in _REASONING_NAMES else 1 if outputs[i].kind == "str" else 0,
                i,
            ),
        )
        for i in order:
            spec = outputs[i]
            if memory is not None and spec.name in memory:
                self.values[spec.name] = _coerce(memory[spec.name], spec)
            else:
                self.values[spec.name] = self._field(spec)
        return {spec.name: self.values[spec.name] for spec in outputs}

    def _memory(self) -> dict | None:
        """Outputs of a demo whose inputs equal the current inputs, if any."""
        if not self.inputs or not self.program.demos:
            return None
        current = {k: _squash(v) for k, v in self.inputs.items()}
        for key, (_, demo_outputs) in zip(self.program.demo_keys, self.program.demos, strict=True):
            if demo_outputs and key == current:
                return demo_outputs
        return None

    def _field(self, spec: FieldSpec) -> Any:
        kind = spec.kind
        if kind == "literal":
            return self._literal(spec, spec.choices)
        if kind == "bool":
            return self._bool(spec)
        if kind in ("int", "float"):
            return self._number(spec)
        if kind == "list":
            return self._list(spec)
        if kind == "dict":
            return self._dict(spec)
        if kind == "schema":
            return _from_schema(spec.schema or {}, self, spec.name, spec.schema or {})
        if spec.name in _REASONING_NAMES:
            return self._reasoning(spec)
        return self._text(spec)

    # -- labels ----------------------------------------------------------------------------

    def _literal(self, spec: FieldSpec, choices: tuple) -> Any:
        if not choices:
            return ""
        tool = self._tool_choice(choices)
        if tool is not None:
            return tool
        weights = _label_model(self.program, spec, choices)
        tokens = self.query_tokens
        scores = [sum(w.get(t, 0.0) for t in tokens) for w in weights]
        if self.temperature > 0:
            scores = [
                s + 0.3 * self.temperature * _unit(self.digest, f"t:{spec.name}:{i}")
                for i, s in enumerate(scores)
            ]
        best = max(scores)
        tied = [i for i, s in enumerate(scores) if best - s < 1e-9]
        pick = tied[0] if len(tied) == 1 else tied[int(_unit(self.digest, f"tie:{spec.name}") * len(tied))]
        return choices[pick]

    def _tool_choice(self, choices: tuple) -> Any:
        """ReAct: call the best-matching tool once, then finish."""
        tools = self.program.tools
        if not tools or "finish" not in choices:
            return None
        if any(k.startswith("observation_") for k in self.inputs):
            return "finish"
        best, best_score = "finish", -1.0
        for name in choices:
            if name == "finish" or name not in tools:
                continue
            tool_words = set(_tokens(name.replace("_", " ") + " " + tools[name].desc))
            score = len(tool_words & self.query_tokens)
            if score > best_score:
                best, best_score = name, score
        return best

    def _bool(self, spec: FieldSpec) -> bool:
        if any(spec.name in out for _, out in self.program.demos):
            return bool(self._literal(FieldSpec(spec.name, kind="bool"), (True, False)))
        words = set(_tokens(spec.name.replace("_", " ") + " " + spec.desc)) - {
            "is",
            "has",
            "should",
            "contain",
        }
        hit = bool(words & self.query_tokens)
        if "question" in spec.name:
            hit = self.question_text.rstrip().endswith("?")
        negated = any(w in _NEGATIONS for w in _raw_words(self.question_text or self.all_text))
        return hit != negated

    # -- numbers ---------------------------------------------------------------------------

    def _number(self, spec: FieldSpec) -> int | float:
        value = _find_arithmetic(self.question_text or self.all_text)
        if value is None:
            value = _first_number(self.question_text or self.all_text)
        if value is None:
            value = int(_unit(self.digest, f"n:{spec.name}") * 100)
        if spec.kind == "int":
            return round(value)
        return round(float(value), 6)

    # -- text ------------------------------------------------------------------------------

    def _text(self, spec: FieldSpec) -> str:
        style = _style(self.program, spec)
        if self.concise and not style.max_words and not style.sentence:
            style = _Style(case=style.case, max_words=CONCISE_MAX_WORDS)  # a copy: styles are cached
        if self.context_names:
            answer = self._extract(spec, style)
        else:
            value = _find_arithmetic(self.question_text)
            if value is not None:
                answer = _format_number(value)
            else:
                answer = self._nearest_demo(spec) or self._derived(spec, style)
        if style.max_words and not self.context_names:
            answer = " ".join(answer.split()[: style.max_words])
        return _apply_case(answer, style) if answer else answer

    def _nearest_demo(self, spec: FieldSpec) -> str | None:
        """The answer of a demo with near-identical inputs (Jaccard >= 0.6)."""
        best, best_score = None, 0.6
        for demo_inputs, demo_outputs in self.program.demos:
            if spec.name not in demo_outputs:
                continue
            words = set(_tokens(" ".join(str(v) for v in demo_inputs.values())))
            union = words | self.query_tokens
            score = len(words & self.query_tokens) / len(union) if union else 0.0
            if score >= best_score:
                best, best_score = str(demo_outputs[spec.name]), score
        return best

    def _derived(self, spec: FieldSpec, style: _Style) -> str:
        """A deterministic answer built from the inputs when nothing better is available."""
        source = self.question_text or self.all_text
        if not source.strip():
            return "No input was provided."
        sentences = _sentences(source)
        first = sentences[0] if sentences else source.strip()
        words = first.split()
        if spec.name == "name" or spec.name.endswith("_name"):
            capitalised = _CAPITALISED_RE.search(source)
            if capitalised:
                return capitalised.group(0)
        if spec.name in ("summary", "title", "headline", "tldr", "abstract"):
            return " ".join(words[: 12 if spec.name != "summary" else 25]).rstrip(".,;:") + (
                "." if spec.name == "summary" else ""
            )
        keywords = _keywords(source, 6)
        if style.max_words:
            return " ".join(keywords[: style.max_words]) or words[0]
        topic = ", ".join(keywords[:3]) if keywords else words[0]
        return f"Regarding {topic}: {first.rstrip('?').strip()}."

    def _extract(self, spec: FieldSpec, style: _Style) -> str:
        """Extractive QA: the context sentence that best matches the question, or a span of it."""
        q_tokens = set(_tokens(self.question_text))
        best, best_score = "", -1.0
        for name in self.context_names:
            for passage in _passages(self.inputs[name]):
                for sentence in _sentences(passage):
                    s_tokens = set(_tokens(sentence))
                    score = len(q_tokens & s_tokens) - 0.001 * len(s_tokens)
                    if score > best_score:
                        best, best_score = sentence, score
        if not best:
            return "The context does not say."
        if style.max_words:
            return _span(best, self.question_text, style.max_words)
        return best

    def _reasoning(self, spec: FieldSpec) -> str:
        if spec.name == "next_thought" and self.program.tools:
            tool = next((v for k, v in self.values.items() if k == "next_tool_name"), None)
            if tool and tool != "finish":
                return f"I should call {tool} to collect the information I need."
            return "I have the information needed to produce the outputs, so I can finish."
        keywords = _keywords(self.question_text or self.all_text, 3)
        first_input = next((k for k in self.inputs if k not in self.context_names), "input")
        parts = [
            f"The {first_input} mentions {', '.join(keywords)}."
            if keywords
            else f"The {first_input} gives little to go on."
        ]
        if self.context_names:
            parts.append("I look for the passage that matches the question best.")
        for name, value in self.values.items():
            if name != spec.name and not isinstance(value, (dict, list)):
                parts.append(f"So the {name} is {str(value).rstrip('.')}.")
        return " ".join(parts)

    # -- structured ------------------------------------------------------------------------

    def _list(self, spec: FieldSpec) -> list:
        item = spec.item or FieldSpec(spec.name)
        if item.kind == "literal":
            weights = _label_model(self.program, item, item.choices)
            scored = [(sum(w.get(t, 0.0) for t in self.query_tokens), i) for i, w in enumerate(weights)]
            picked = [item.choices[i] for s, i in sorted(scored, key=lambda x: (-x[0], x[1])) if s > 0][:3]
            return picked or [self._literal(item, item.choices)]
        if item.kind in ("int", "float"):
            numbers = [float(n.replace(",", "")) for n in _NUMBER_RE.findall(self.all_text)][:5]
            return [int(n) if item.kind == "int" else n for n in numbers] or [self._number(item)]
        if item.kind == "bool":
            return [self._bool(item)]
        if item.kind in ("dict", "schema", "list"):
            return [self._field(item)]
        size = self._demo_list_size(spec) or 3
        if self.context_names and spec.name not in ("keywords", "tags", "topics"):
            return [self._extract(spec, _Style())][:size]
        return _keywords(self.question_text or self.all_text, size) or ["none"]

    def _demo_list_size(self, spec: FieldSpec) -> int:
        sizes = []
        for _, out in self.program.demos:
            value = out.get(spec.name)
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except ValueError:
                    value = None
            if isinstance(value, list):
                sizes.append(len(value))
        return round(sum(sizes) / len(sizes)) if sizes else 0

    def _dict(self, spec: FieldSpec) -> dict:
        if spec.name == "next_tool_args" and self.program.tools:
            tool = self.program.tools.get(str(self.values.get("next_tool_name", "")))
            return self._tool_args(tool) if tool else {}
        keys = _keywords(self.question_text or self.all_text, 2) or ["input"]
        item = spec.item or FieldSpec(spec.name)
        if item.kind == "str" and item.type in ("Any", "typing.Any", "object"):
            return {"topic": keys[0], "keywords": keys}
        return {
            k: self._field(FieldSpec(k, item.type, item.kind, item.choices, item.item, item.schema))
            for k in keys
        }

    def _tool_args(self, tool: Tool) -> dict:
        text = self.question_text.strip() or self.all_text.strip()
        args = {}
        for name, schema in tool.args.items():
            kind = schema.get("type") if isinstance(schema, dict) else None
            if kind == "integer":
                number = _first_number(text)
                args[name] = int(number) if number is not None else 1
            elif kind == "number":
                number = _first_number(text)
                args[name] = float(number) if number is not None else 1.0
            elif kind == "boolean":
                args[name] = True
            elif kind == "array":
                args[name] = [text]
            elif kind == "object":
                args[name] = {}
            elif "expr" in name.lower():
                # A calculator-like tool gets the arithmetic in the question, not the whole sentence.
                args[name] = _find_expression(text) or text
            else:
                args[name] = text
        return args


def _format_number(value: float | int) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(round(value, 6)) if isinstance(value, float) else str(value)


def _keywords(text: str, limit: int) -> list[str]:
    """Distinct content words of a text in order of appearance (original spelling, lowercased)."""
    seen, out = set(), []
    for word in _raw_words(text):
        if len(word) < 3 or word in STOPWORDS or word.isdigit():
            continue
        stem = _stem(word)
        if stem in seen:
            continue
        seen.add(stem)
        out.append(word)
        if len(out) >= limit:
            break
    return out


_NUMERIC_Q_RE = re.compile(
    r"\b(how (many|much|long|old|tall|far|big|large|often|high)|what year|which year|when|maximum|minimum"
    r"|size|price|cost|number of|amount|percentage|temperature|boiling point|age|height|length|distance)\b",
    re.I,
)
_ADDRESS_Q_RE = re.compile(r"\b(e-?mail|url|link|website|web site|address)\b", re.I)
_ENTITY_Q_RE = re.compile(r"\b(who|whom|whose|where|which|what(?! year))\b", re.I)


def _span(sentence: str, question: str, max_words: int) -> str:
    """A short answer span of a sentence: the run of words that are not in the question.

    Prefers numbers for how-many/when questions and capitalised words for who/where/which ones,
    and runs close to the words the question and sentence share.
    """
    q_stems = set(_tokens(question))
    words = [(m.group(0), m.start(), m.end()) for m in _SPAN_WORD_RE.finditer(sentence)]
    if not words:
        return sentence
    keep, near = [], []
    for index, (word, _, _) in enumerate(words):
        lower = word.lower().strip("$%")
        in_question = _stem(lower) in q_stems
        if in_question:
            near.append(index)
        keep.append(not in_question and lower not in STOPWORDS)
    runs, current = [], []
    for index, ok in enumerate(keep):
        joined = bool(current) and _only_space(sentence[words[current[-1]][2] : words[index][1]])
        if ok and (not current or joined):
            current.append(index)
        else:
            if current:
                runs.append(current)
            current = [index] if ok else []
    if current:
        runs.append(current)
    if not runs:
        return " ".join(w for w, _, _ in words[:max_words])
    numeric = bool(_NUMERIC_Q_RE.search(question))
    entity = bool(_ENTITY_Q_RE.search(question)) and not numeric
    address = bool(_ADDRESS_Q_RE.search(question))

    def has_digit(run: list[int]) -> bool:
        return any(any(c.isdigit() for c in words[i][0]) for i in run)

    def capitalised(run: list[int]) -> list[int]:
        return [i for i in run if words[i][0][:1].isupper()]

    def score(run: list[int]) -> float:
        value = 0.0
        if address and any("@" in words[i][0] or "://" in words[i][0] for i in run):
            value += 4
        if numeric and has_digit(run):
            value += 3
        if entity and capitalised(run):
            value += 2
        if has_digit(run) or capitalised(run):
            value += 0.5
        if near:
            value -= 0.1 * min(min(abs(i - n) for n in near) for i in run)
        return value

    best = max(runs, key=lambda r: (score(r), -r[0]))
    limit = max_words
    if numeric and has_digit(best):
        # A number and the unit words after it: "at least 95" -> "95", "250 MB tops" -> "250 MB".
        first = next(i for i in best if any(c.isdigit() for c in words[i][0]))
        best = best[best.index(first) :]
    elif entity and capitalised(best):
        # Keep a whole name ("Leonardo da Vinci" loses "da", so take the capitalised words).
        best, limit = capitalised(best), max(max_words, 4)
    chosen = best[:limit]
    start, end = words[chosen[0]][1], words[chosen[-1]][2]
    return sentence[start:end].strip(" ,;:")


def _only_space(text: str) -> bool:
    return text.strip() == "" or text.strip() in ("-", "'")


def _coerce(value: Any, spec: FieldSpec) -> Any:
    """A demo's output value, converted to the field's type for the reply."""
    kind = spec.kind
    if kind == "literal":
        norm = _norm_label(value)
        return next(
            (c for c in spec.choices if _norm_label(c) == norm), spec.choices[0] if spec.choices else value
        )
    if kind == "bool":
        return value if isinstance(value, bool) else str(value).strip().lower() in ("true", "yes", "1")
    if kind in ("int", "float"):
        try:
            number = float(str(value).strip())
        except ValueError:
            return 0 if kind == "int" else 0.0
        return round(number) if kind == "int" else number
    if kind in ("list", "dict", "schema") and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            try:
                return ast.literal_eval(value)
            except (ValueError, SyntaxError):
                return [] if kind == "list" else {}
    return value


def _from_schema(schema: dict, call: _Call, name: str, root: dict, depth: int = 0) -> Any:
    """A value satisfying a JSON schema (pydantic output types, json_schema response formats)."""
    if depth > 6:
        return None
    if "$ref" in schema:
        ref = schema["$ref"].rsplit("/", 1)[-1]
        target = (root.get("$defs") or root.get("definitions") or {}).get(ref, {})
        return _from_schema(target, call, name, root, depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return _from_schema(options[0], call, name, root, depth + 1)
    if "enum" in schema:
        spec = FieldSpec(name, kind="literal", choices=tuple(schema["enum"]))
        return call._literal(spec, spec.choices)
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or "properties" in schema:
        return {
            key: _from_schema(sub, call, key, root, depth + 1)
            for key, sub in schema.get("properties", {}).items()
        }
    if kind == "array":
        return [_from_schema(schema.get("items", {}), call, name, root, depth + 1)]
    if kind == "integer":
        return call._number(FieldSpec(name, kind="int"))
    if kind == "number":
        return call._number(FieldSpec(name, kind="float"))
    if kind == "boolean":
        return call._bool(FieldSpec(name, kind="bool"))
    return call._text(FieldSpec(name))


# ---------------------------------------------------------------------------------------------
# Rendering


def _render_chat(values: dict[str, Any], specs: list[FieldSpec]) -> str:
    parts = [f"[[ ## {spec.name} ## ]]\n{_chat_value(values[spec.name])}" for spec in specs]
    parts.append("[[ ## completed ## ]]")
    return "\n\n".join(parts)


def _chat_value(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return _format_number(value) if value.is_integer() else repr(value)
    return str(value)


def _render_xml(values: dict[str, Any], specs: list[FieldSpec]) -> str:
    return "\n\n".join(_xml_value(values[spec.name], spec.name) for spec in specs)


def _xml_value(value: Any, tag: str) -> str:
    """XMLAdapter's own nesting: lists as <item> children, dicts as child elements."""
    if isinstance(value, list):
        return f"<{tag}>{''.join(_xml_value(item, 'item') for item in value)}</{tag}>"
    if isinstance(value, dict):
        children = "".join(
            _xml_value(v, str(k))
            if str(k).isidentifier()
            else _xml_value(v, "entry").replace("<entry>", f'<entry key="{_xml_escape(str(k))}">', 1)
            for k, v in value.items()
        )
        return f"<{tag}>{children}</{tag}>"
    return f"<{tag}>{_xml_escape(_chat_value(value))}</{tag}>"


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")


def _render_json(values: dict[str, Any]) -> str:
    return json.dumps(values, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# Entry points


def normalize_model(model: str) -> str:
    """`sim/default`, `openai/sim-default` and `sim-default` all name the simulated model `default`."""
    name = model.rsplit("/", 1)[-1] if "/" in model else model
    return name[4:] if name.startswith("sim-") else name or "default"


def _digest(model: str, texts: list[tuple[str, str]], temperature: float, seed: Any, choice: int) -> bytes:
    """sha256 of the canonical request: what decides the answer, nothing else."""
    canonical = "\x00".join(f"{role}\x01{text}" for role, text in texts)
    head = f"{normalize_model(model)}\x00{temperature:.4f}\x00{seed}\x00{choice}\x00"
    return hashlib.sha256((head + canonical).encode("utf-8", "surrogatepass")).digest()


def _response_format_kind(params: dict) -> tuple[str, dict | None]:
    """("json_schema" | "json_object" | "", schema) from an OpenAI-style response_format."""
    fmt = params.get("response_format")
    if not isinstance(fmt, dict):
        return "", None
    kind = fmt.get("type", "")
    if kind == "json_schema":
        # OpenAI nests the schema under "json_schema"; a dspy.lm15 Config carries it flat.
        spec = fmt.get("json_schema") if isinstance(fmt.get("json_schema"), dict) else fmt
        schema = spec.get("schema")
        return kind, schema if isinstance(schema, dict) else None
    return (kind if kind == "json_object" else ""), None


def simulate_chat(
    model: str, messages: list[dict], params: dict | None = None, *, choice: int = 0
) -> SimReply:
    """Answer one chat request deterministically.

    `messages` are OpenAI-style dicts; `params` holds temperature, max_tokens (or
    max_completion_tokens), response_format, seed. `choice` distinguishes the candidates of an
    n>1 request (they differ only when temperature > 0).
    """
    params = params or {}
    texts = [(str(m.get("role", "user")), _message_text(m.get("content"))) for m in messages]
    temperature = float(params.get("temperature") or 0.0)
    digest = _digest(model, texts, temperature, params.get("seed"), choice if temperature > 0 else 0)
    content = _answer(texts, params, digest, temperature, concise=normalize_model(model) == "concise")
    # ~4 characters per token plus a few tokens of per-message framing, as chat models count.
    prompt_tokens = sum((len(text) + 3) // 4 + 4 for _, text in texts)
    completion_tokens = count_tokens(content)
    finish_reason = "stop"
    limit = params.get("max_completion_tokens") or params.get("max_tokens")
    if isinstance(limit, int) and 0 < limit < completion_tokens:
        content, completion_tokens, finish_reason = content[: limit * 4], limit, "length"
    return SimReply(content, prompt_tokens, completion_tokens, finish_reason)


def _answer(
    texts: list[tuple[str, str]], params: dict, digest: bytes, temperature: float, concise: bool = False
) -> str:
    system = "\n".join(text for role, text in texts if role in ("system", "developer"))
    turns = [(role, text) for role, text in texts if role not in ("system", "developer")]
    fmt_kind, schema = _response_format_kind(params)
    program = None
    if system and turns and turns[-1][0] == "user":
        pairs = tuple(
            (turns[i][1], turns[i + 1][1])
            for i in range(0, len(turns) - 1, 2)
            if turns[i][0] == "user" and i + 1 < len(turns) - 1 and turns[i + 1][0] == "assistant"
        )
        program = _program(system, pairs)
    if program is None:
        return _plain_chat(turns, fmt_kind, schema, digest)
    last = turns[-1][1]
    inputs = {k: v for k, v in _sections(_strip_requirements(last)).items() if _supplied(v)}
    call = _Call(program, inputs, digest, temperature, concise)
    values = call.answer()
    if program.json_mode or fmt_kind or "Respond with a JSON object" in last:
        return _render_json(values)
    if "wrapped in XML tags" in last:
        return _render_xml(values, program.outputs)
    return _render_chat(values, program.outputs)


_GREETING_RE = re.compile(r"^\s*(hi|hello|hey|good (morning|afternoon|evening))\b", re.I)


def _plain_chat(turns: list[tuple[str, str]], fmt_kind: str, schema: dict | None, digest: bytes) -> str:
    """A deterministic, echo-like answer to a prompt that is not a DSPy prompt."""
    user = next((text for role, text in reversed(turns) if role == "user"), "")
    value = _find_arithmetic(user)
    if value is not None:
        text = f"The result is {_format_number(value)}."
    elif _GREETING_RE.match(user):
        text = (
            "Hello! I am the DSPex simulated model. My answers are generated from your prompt, not by an LLM."
        )
    elif not user.strip():
        text = "(simulated) No message was given."
    else:
        first = _sentences(user)[0] if _sentences(user) else user.strip()
        keywords = _keywords(user, 3)
        about = f" about {', '.join(keywords)}" if keywords else ""
        text = f"(simulated) You asked{about}: {first[:200]}"
    if fmt_kind == "json_schema" and schema:
        program = Program(inputs=[], outputs=[], instructions="", json_mode=True)
        call = _Call(program, {"message": user}, digest, 0.0)
        return json.dumps(_from_schema(schema, call, "response", schema), ensure_ascii=False)
    if fmt_kind:
        return json.dumps({"response": text}, ensure_ascii=False)
    return text


# ---------------------------------------------------------------------------------------------
# Embeddings


def simulate_embeddings(model: str, texts: list[str], dim: int = 256) -> list[list[float]]:
    """Deterministic hashed bag-of-words (+ character trigram) vectors, L2-normalised.

    Cosine similarity between two vectors grows with the words (and word pieces) the texts
    share, which is what retrieval tests need. `model` does not change the vectors: every
    simulated embedding model shares one space.
    """
    if dim < 1:
        raise ValueError("dim must be positive")
    return [_embed(text, dim) for text in texts]


def _embed(text: str, dim: int) -> list[float]:
    vector = [0.0] * dim
    words = [w for w in _raw_words(text) if w not in STOPWORDS] or _raw_words(text)
    for word in words:
        h = zlib.crc32(b"w:" + _stem(word).encode())
        vector[h % dim] += 1.0 if h & 0x80000000 else -1.0
        padded = f"<{word}>"
        for i in range(len(padded) - 2):
            g = zlib.crc32(padded[i : i + 3].encode())
            vector[g % dim] += 0.25 if g & 0x80000000 else -0.25
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0.0:
        vector[zlib.crc32(text.encode()) % dim] = 1.0  # empty text: a fixed unit vector, never NaN
        return vector
    return [v / norm for v in vector]


# ---------------------------------------------------------------------------------------------
# DSPy engines


class SimEngine:
    """DSPy 3.4.1 engine answering `sim/<name>` models in-process (see the module docstring).

    `structured_output` says which `response_format` JSONAdapter should send: "json_schema"
    (like gpt-4o-mini: DSPy sends the signature's JSON schema), "json_object" or "none" (DSPy
    sends no response_format). The simulator answers all three. `latency_ms` adds a sleep per
    call, for load tests of the in-process path.
    """

    supports_function_calling = False
    supports_reasoning = False

    def __init__(self, *, structured_output: str = "json_schema", latency_ms: float = 0.0):
        if structured_output not in ("json_schema", "json_object", "none"):
            raise ValueError("structured_output must be 'json_schema', 'json_object' or 'none'")
        self.structured_output = structured_output
        self.latency_ms = float(latency_ms)

    @property
    def supports_response_schema(self) -> bool:
        return self.structured_output == "json_schema"

    @property
    def supported_params(self) -> frozenset[str]:
        params = {
            "temperature",
            "max_tokens",
            "max_completion_tokens",
            "top_p",
            "stop",
            "seed",
            "n",
            "stream",
        }
        if self.structured_output != "none":
            params.add("response_format")
        return frozenset(params)

    def complete(self, request: Any) -> Any:
        from dspy.clients.engines.base import validate_request

        validate_request(request)
        if self.latency_ms > 0:
            time.sleep(self.latency_ms / 1000.0)
        return _response_for(request)

    def stream(self, request: Any) -> Iterator[Any]:
        return _line_events(self.complete(request))

    def close(self) -> None:
        """Nothing to release: the simulator holds no connections."""

    def dump_state(self) -> dict:
        return {"structured_output": self.structured_output, "latency_ms": self.latency_ms}

    @classmethod
    def load_state(cls, state: dict) -> SimEngine:
        return cls(**state)


class AsyncSimEngine:
    """Async counterpart of `SimEngine` for `dspy.LM(..., async_engine=...)` and `acall`."""

    def __init__(self, *, structured_output: str = "json_schema", latency_ms: float = 0.0):
        self.sync = SimEngine(structured_output=structured_output, latency_ms=0.0)
        self.latency_ms = float(latency_ms)

    async def complete(self, request: Any) -> Any:
        import asyncio

        from dspy.clients.engines.base import validate_request

        validate_request(request)
        if self.latency_ms > 0:
            await asyncio.sleep(self.latency_ms / 1000.0)
        return _response_for(request)

    async def stream(self, request: Any) -> Any:
        for event in _line_events(await self.complete(request)):
            yield event

    async def aclose(self) -> None:
        """Nothing to release."""

    def dump_state(self) -> dict:
        return {"structured_output": self.sync.structured_output, "latency_ms": self.latency_ms}

    @classmethod
    def load_state(cls, state: dict) -> AsyncSimEngine:
        return cls(**state)


def _line_events(response: Any) -> Iterator[Any]:
    """Stream events of a finished response, its text split into one delta per line.

    Line-sized deltas let DSPy's stream listeners see field markers arrive piece by piece.
    """
    from dspy.lm15 import StreamDeltaEvent, TextDelta, response_to_events

    for event in response_to_events(response):
        delta = getattr(event, "delta", None)
        if isinstance(delta, TextDelta) and "\n" in delta.text:
            for line in delta.text.splitlines(True):
                yield StreamDeltaEvent(delta=TextDelta(text=line, part_index=delta.part_index))
        else:
            yield event


def request_messages(request: Any) -> list[dict]:
    """OpenAI-style messages of a `dspy.lm15.Request` (system first, text parts only)."""
    messages = []
    system = request.system
    if system is not None:
        text = system if isinstance(system, str) else "".join(getattr(p, "text", "") or "" for p in system)
        messages.append({"role": "system", "content": text})
    messages.extend({"role": m.role, "content": m.text or ""} for m in request.messages)
    return messages


def _request_params(request: Any) -> dict:
    config = request.config
    params: dict[str, Any] = {}
    if config.temperature is not None:
        params["temperature"] = config.temperature
    if config.max_tokens is not None:
        params["max_tokens"] = config.max_tokens
    if config.response_format is not None:
        params["response_format"] = config.response_format
    if config.seed is not None:
        params["seed"] = config.seed
    return params


def _response_for(request: Any) -> Any:
    from dspy.lm15 import Message, Response, TextPart, Usage

    reply = simulate_chat(request.model, request_messages(request), _request_params(request))
    return Response(
        id="simcmpl-" + hashlib.sha256(reply.content.encode()).hexdigest()[:24],
        model=request.model,
        message=Message.assistant([TextPart(reply.content)]),
        finish_reason=reply.finish_reason,
        usage=Usage(
            input_tokens=reply.prompt_tokens,
            output_tokens=reply.completion_tokens,
            total_tokens=reply.total_tokens,
        ),
    )


def sim_lm(model: str = "sim/default", *, structured_output: str = "json_schema", **kwargs: Any) -> Any:
    """A `dspy.LM` for a simulated model (in-process, sync and async). Extra kwargs go to dspy.LM."""
    import dspy

    kwargs.setdefault("num_retries", 0)
    return dspy.LM(
        model,
        engine=SimEngine(structured_output=structured_output),
        async_engine=AsyncSimEngine(structured_output=structured_output),
        **kwargs,
    )
