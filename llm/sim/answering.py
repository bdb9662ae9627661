"""Answering: the value of every requested output field, decided only from what the prompt
holds (inputs, instructions, demos), deterministically from the request digest."""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any, cast

from llm.sim.prompts import FieldSpec, Program, Tool, squash
from llm.sim.text import (
    CAPITALISED_RE,
    LIST_ITEM_RE,
    NEGATIONS,
    NUMBER_RE,
    SENTENCE_SPLIT_RE,
    SPAN_WORD_RE,
    STOPWORDS,
    find_arithmetic,
    find_expression,
    first_number,
    format_number,
    raw_words,
    stem_word,
    tokenize,
    unit_from_seed,
)

# ---------------------------------------------------------------------------------------------
# Classification (Literal fields)

NAME_WEIGHT = 1.0
INSTRUCTION_WEIGHT = 1.0
DEMO_WEIGHT = 1.5


def _norm_label(value: Any) -> str:
    return str(value).strip().strip("'\"").lower()


def _label_words(label: Any) -> list[str]:
    return tokenize(str(label).replace("_", " ").replace("-", " "))


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
        # Every alternative of the pattern is a named group, so a match always has a lastgroup.
        mentions = [(m.start(), m.end(), int(cast(str, m.lastgroup)[1:])) for m in pattern.finditer(line)]
        if not mentions:
            continue
        label_set = {mention[2] for mention in mentions}
        if len(label_set) == 1:
            words = set(tokenize(pattern.sub(" ", line)))
            assoc[mentions[0][2]].update(words)
            continue
        for j, (_, end, index) in enumerate(mentions):
            stop = mentions[j + 1][0] if j + 1 < len(mentions) else len(line)
            assoc[index].update(tokenize(line[end:stop]))
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
        for word in set(tokenize(" ".join(str(v) for v in demo_inputs.values()))):
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
    if LIST_ITEM_RE.search(value):
        items = LIST_ITEM_RE.split(value)
        return [_unquote(i) for i in items if i.strip()]
    return [_unquote(value)]


def _unquote(text: str) -> str:
    text = text.strip()
    if text.startswith("«««") and text.endswith("»»»"):
        return "\n".join(line.strip() for line in text[3:-3].strip().splitlines())
    if text.startswith("«") and text.endswith("»"):
        return text[1:-1]
    return text


def split_sentences(text: str) -> list[str]:
    out: list[str] = []
    for chunk in text.split("\n"):
        out.extend(s.strip() for s in SENTENCE_SPLIT_RE.split(chunk) if s.strip())
    return out


class FieldAnswerer:
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
        self.query_tokens = set(tokenize(self.all_text))

    def _is_context(self, name: str, value: str) -> bool:
        lowered = name.lower()
        if lowered in _CONTEXT_NAMES or lowered.startswith("observation_"):
            return True
        if len(self.inputs) < 2 or lowered == "trajectory":
            return False
        return value.startswith("[1] «") or (len(value) > 300 and len(split_sentences(value)) > 2)

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
        current = {k: squash(v) for k, v in self.inputs.items()}
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
            return from_schema(spec.schema or {}, self, spec.name, spec.schema or {})
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
                s + 0.3 * self.temperature * unit_from_seed(self.digest, f"t:{spec.name}:{i}")
                for i, s in enumerate(scores)
            ]
        best = max(scores)
        tied = [i for i, s in enumerate(scores) if best - s < 1e-9]
        pick = (
            tied[0]
            if len(tied) == 1
            else tied[int(unit_from_seed(self.digest, f"tie:{spec.name}") * len(tied))]
        )
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
            tool_words = set(tokenize(name.replace("_", " ") + " " + tools[name].desc))
            score = len(tool_words & self.query_tokens)
            if score > best_score:
                best, best_score = name, score
        return best

    def _bool(self, spec: FieldSpec) -> bool:
        if any(spec.name in out for _, out in self.program.demos):
            return bool(self._literal(FieldSpec(spec.name, kind="bool"), (True, False)))
        words = set(tokenize(spec.name.replace("_", " ") + " " + spec.desc)) - {
            "is",
            "has",
            "should",
            "contain",
        }
        hit = bool(words & self.query_tokens)
        if "question" in spec.name:
            hit = self.question_text.rstrip().endswith("?")
        negated = any(w in NEGATIONS for w in raw_words(self.question_text or self.all_text))
        return hit != negated

    # -- numbers ---------------------------------------------------------------------------

    def _number(self, spec: FieldSpec) -> int | float:
        value = find_arithmetic(self.question_text or self.all_text)
        if value is None:
            value = first_number(self.question_text or self.all_text)
        if value is None:
            value = int(unit_from_seed(self.digest, f"n:{spec.name}") * 100)
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
            value = find_arithmetic(self.question_text)
            if value is not None:
                answer = format_number(value)
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
            words = set(tokenize(" ".join(str(v) for v in demo_inputs.values())))
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
        sentences = split_sentences(source)
        first = sentences[0] if sentences else source.strip()
        words = first.split()
        if spec.name == "name" or spec.name.endswith("_name"):
            capitalised = CAPITALISED_RE.search(source)
            if capitalised:
                return capitalised.group(0)
        if spec.name in ("summary", "title", "headline", "tldr", "abstract"):
            return " ".join(words[: 12 if spec.name != "summary" else 25]).rstrip(".,;:") + (
                "." if spec.name == "summary" else ""
            )
        keywords = keywords_of(source, 6)
        if style.max_words:
            return " ".join(keywords[: style.max_words]) or words[0]
        topic = ", ".join(keywords[:3]) if keywords else words[0]
        return f"Regarding {topic}: {first.rstrip('?').strip()}."

    def _extract(self, spec: FieldSpec, style: _Style) -> str:
        """Extractive QA: the context sentence that best matches the question, or a span of it."""
        q_tokens = set(tokenize(self.question_text))
        best, best_score = "", -1.0
        for name in self.context_names:
            for passage in _passages(self.inputs[name]):
                for sentence in split_sentences(passage):
                    s_tokens = set(tokenize(sentence))
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
        keywords = keywords_of(self.question_text or self.all_text, 3)
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
            numbers = [float(n.replace(",", "")) for n in NUMBER_RE.findall(self.all_text)][:5]
            return [int(n) if item.kind == "int" else n for n in numbers] or [self._number(item)]
        if item.kind == "bool":
            return [self._bool(item)]
        if item.kind in ("dict", "schema", "list"):
            return [self._field(item)]
        size = self._demo_list_size(spec) or 3
        if self.context_names and spec.name not in ("keywords", "tags", "topics"):
            return [self._extract(spec, _Style())][:size]
        return keywords_of(self.question_text or self.all_text, size) or ["none"]

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
        keys = keywords_of(self.question_text or self.all_text, 2) or ["input"]
        item = spec.item or FieldSpec(spec.name)
        if item.kind == "str" and item.type in ("Any", "typing.Any", "object"):
            return {"topic": keys[0], "keywords": keys}
        return {
            k: self._field(FieldSpec(k, item.type, item.kind, item.choices, item.item, item.schema))
            for k in keys
        }

    def _tool_args(self, tool: Tool) -> dict:
        text = self.question_text.strip() or self.all_text.strip()
        args: dict[str, object] = {}
        for name, schema in tool.args.items():
            kind = schema.get("type") if isinstance(schema, dict) else None
            if kind == "integer":
                number = first_number(text)
                args[name] = int(number) if number is not None else 1
            elif kind == "number":
                number = first_number(text)
                args[name] = float(number) if number is not None else 1.0
            elif kind == "boolean":
                args[name] = True
            elif kind == "array":
                args[name] = [text]
            elif kind == "object":
                args[name] = {}
            elif "expr" in name.lower():
                # A calculator-like tool gets the arithmetic in the question, not the whole sentence.
                args[name] = find_expression(text) or text
            else:
                args[name] = text
        return args


def keywords_of(text: str, limit: int) -> list[str]:
    """Distinct content words of a text in order of appearance (original spelling, lowercased)."""
    seen, out = set(), []
    for word in raw_words(text):
        if len(word) < 3 or word in STOPWORDS or word.isdigit():
            continue
        stem = stem_word(word)
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
    q_stems = set(tokenize(question))
    words = [(m.group(0), m.start(), m.end()) for m in SPAN_WORD_RE.finditer(sentence)]
    if not words:
        return sentence
    keep, near = [], []
    for index, (word, _, _) in enumerate(words):
        lower = word.lower().strip("$%")
        in_question = stem_word(lower) in q_stems
        if in_question:
            near.append(index)
        keep.append(not in_question and lower not in STOPWORDS)
    runs: list[list[int]] = []
    current: list[int] = []
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


def from_schema(schema: dict, call: FieldAnswerer, name: str, root: dict, depth: int = 0) -> Any:
    """A value satisfying a JSON schema (pydantic output types, json_schema response formats)."""
    if depth > 6:
        return None
    if "$ref" in schema:
        ref = schema["$ref"].rsplit("/", 1)[-1]
        target = (root.get("$defs") or root.get("definitions") or {}).get(ref, {})
        return from_schema(target, call, name, root, depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return from_schema(options[0], call, name, root, depth + 1)
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
            key: from_schema(sub, call, key, root, depth + 1)
            for key, sub in schema.get("properties", {}).items()
        }
    if kind == "array":
        return [from_schema(schema.get("items", {}), call, name, root, depth + 1)]
    if kind == "integer":
        return call._number(FieldSpec(name, kind="int"))
    if kind == "number":
        return call._number(FieldSpec(name, kind="float"))
    if kind == "boolean":
        return call._bool(FieldSpec(name, kind="bool"))
    return call._text(FieldSpec(name))
