"""Display helpers of the operator console and the commands: money, durations, JSON blocks,
an execution's headline figures and its trace shaped for the timeline template."""

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.utils import timezone
from django.utils.html import format_html

if TYPE_CHECKING:
    from executions.models import CognitiveExecution

# A message longer than this is shown collapsed, with its first line as the summary.
LONG_MESSAGE_CHARS = 600
LONG_MESSAGE_LINES = 12


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def pre(value: Any) -> str:
    if value is None or value == {} or value == []:
        return "—"
    return format_html('<pre class="dspex-json">{}</pre>', pretty(value))


def money(cost: Any) -> str:
    """USD with enough digits for per-call LM costs; None means the price is unknown."""
    if cost is None:
        return "unknown"
    return f"${float(cost):.6f}"


@dataclass
class Message:
    role: str
    content: str

    @property
    def collapsed(self) -> bool:
        return len(self.content) > LONG_MESSAGE_CHARS or self.content.count("\n") >= LONG_MESSAGE_LINES

    @property
    def preview(self) -> str:
        first = self.content.strip().split("\n", 1)[0]
        return first[:160] + ("…" if len(first) > 160 else "")


@dataclass
class TraceRow:
    """One trace entry, shaped for the timeline template."""

    index: int
    kind: str
    step: str
    entry: dict
    messages: list[Message] = field(default_factory=list)

    @property
    def is_lm(self) -> bool:
        return self.kind == "lm"

    @property
    def is_embedding(self) -> bool:
        return self.kind == "embedding"

    @property
    def error(self) -> Any:
        return self.entry.get("error")

    @property
    def inputs(self) -> str:
        return pretty(self.entry.get("inputs"))

    @property
    def outputs(self) -> str:
        return pretty(self.entry.get("outputs"))

    @property
    def answer(self) -> str:
        """The LM's completion(s) as text: DSPy records a list of strings or of {"text": ...}."""
        outputs = self.entry.get("outputs")
        items = outputs if isinstance(outputs, list) else [outputs]
        texts = [item.get("text", pretty(item)) if isinstance(item, dict) else item for item in items]
        return "\n\n---\n\n".join(str(text) for text in texts if text not in (None, ""))

    @property
    def tokens(self) -> str:
        prompt = self.entry.get("prompt_tokens") or 0
        completion = self.entry.get("completion_tokens") or 0
        return f"{prompt} + {completion} = {prompt + completion}"

    @property
    def cost(self) -> str:
        return money(self.entry.get("cost_usd"))


def _messages(raw: Any) -> list[Message]:
    if isinstance(raw, str):  # a plain prompt rather than chat messages
        return [Message("user", raw)]
    messages = []
    for item in raw if isinstance(raw, list) else []:
        if isinstance(item, dict):
            content = item.get("content")
            if isinstance(content, list):  # multi-part content: keep the text parts
                content = "\n".join(str(p.get("text", p)) if isinstance(p, dict) else str(p) for p in content)
            messages.append(Message(str(item.get("role", "?")), "" if content is None else str(content)))
    return messages


def trace_rows(trace: Any) -> list[TraceRow]:
    """The execution's trace entries in order, with LM calls' messages split into turns."""
    rows = []
    for index, entry in enumerate(trace if isinstance(trace, list) else [], start=1):
        if not isinstance(entry, dict):
            continue
        kind = str(entry.get("kind", "?"))
        row = TraceRow(index, kind, str(entry.get("step") or ""), entry)
        if kind == "lm":
            row.messages = _messages(entry.get("messages"))
        rows.append(row)
    return rows


def summary(execution: "CognitiveExecution") -> dict[str, Any]:
    """The headline figures of an execution (for the detail and Run pages)."""
    metrics = execution.metrics or {}
    prompt, completion = metrics.get("prompt_tokens", 0), metrics.get("completion_tokens", 0)
    return {
        "lm_calls": metrics.get("lm_calls", 0),
        "cache_hits": metrics.get("cache_hits", 0),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "tokens": prompt + completion,
        "cost": money(metrics.get("cost_usd")) if metrics else "—",
        "cost_complete": metrics.get("cost_complete", True),
    }


def ago(at: datetime) -> str:
    """How long ago `at` was, in its largest unit: `3 d`, `2 h`, `5 min`, `40 s`."""
    seconds = max(0, int((timezone.now() - at).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
