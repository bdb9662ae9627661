"""One chat request in, one `SimReply` out: parse the prompt, answer, render."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from llm.sim.answering import FieldAnswerer, from_schema, keywords_of, split_sentences
from llm.sim.prompts import Program, chat_sections, is_supplied, parse_program, strip_requirements
from llm.sim.rendering import render_chat, render_json, render_xml
from llm.sim.text import count_tokens, find_arithmetic, format_number, message_text

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
        nested = fmt.get("json_schema")
        spec = nested if isinstance(nested, dict) else fmt
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
    texts = [(str(m.get("role", "user")), message_text(m.get("content"))) for m in messages]
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
        program = parse_program(system, pairs)
    if program is None:
        return _plain_chat(turns, fmt_kind, schema, digest)
    last = turns[-1][1]
    inputs = {k: v for k, v in chat_sections(strip_requirements(last)).items() if is_supplied(v)}
    call = FieldAnswerer(program, inputs, digest, temperature, concise)
    values = call.answer()
    if program.json_mode or fmt_kind or "Respond with a JSON object" in last:
        return render_json(values)
    if "wrapped in XML tags" in last:
        return render_xml(values, program.outputs)
    return render_chat(values, program.outputs)


_GREETING_RE = re.compile(r"^\s*(hi|hello|hey|good (morning|afternoon|evening))\b", re.I)


def _plain_chat(turns: list[tuple[str, str]], fmt_kind: str, schema: dict | None, digest: bytes) -> str:
    """A deterministic, echo-like answer to a prompt that is not a DSPy prompt."""
    user = next((text for role, text in reversed(turns) if role == "user"), "")
    value = find_arithmetic(user)
    if value is not None:
        text = f"The result is {format_number(value)}."
    elif _GREETING_RE.match(user):
        text = (
            "Hello! I am the DSPex simulated model. My answers are generated from your prompt, not by an LLM."
        )
    elif not user.strip():
        text = "(simulated) No message was given."
    else:
        first = split_sentences(user)[0] if split_sentences(user) else user.strip()
        keywords = keywords_of(user, 3)
        about = f" about {', '.join(keywords)}" if keywords else ""
        text = f"(simulated) You asked{about}: {first[:200]}"
    if fmt_kind == "json_schema" and schema:
        program = Program(inputs=[], outputs=[], instructions="", json_mode=True)
        call = FieldAnswerer(program, {"message": user}, digest, 0.0)
        return json.dumps(from_schema(schema, call, "response", schema), ensure_ascii=False)
    if fmt_kind:
        return json.dumps({"response": text}, ensure_ascii=False)
    return text
