"""Text helpers of the simulated provider: tokens, stems, message text, numbers and the
arithmetic found in a prompt (compiled once: this code sits under benchmarks)."""

from __future__ import annotations

import re
import zlib
from typing import Any

from dspex_site.arithmetic import evaluate

# ---------------------------------------------------------------------------------------------
# Text helpers (compiled once: this module sits under benchmarks)

_TOKEN_RE = re.compile(r"[a-z0-9]+")
HEADER_RE = re.compile(r"\[\[ ## (\w+) ## \]\]")
SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9$])")
SPAN_WORD_RE = re.compile(
    r"[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63})+|https?://\S+[\w/]|\$?\d[\d,]*(?:\.\d+)?%?|[A-Za-z][A-Za-z'\u2019\-]*"
)
NUMBER_RE = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?(?![\w])")
LIST_ITEM_RE = re.compile(r"^\[\d+\] ", re.M)
WS_RE = re.compile(r"\s+")
_DIGIT_RE = re.compile(r"\d")
CAPITALISED_RE = re.compile(r"\b[A-Z][a-z]+(?: [A-Z][a-z]+)*")

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
NEGATIONS = frozenset(
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


def stem_word(word: str) -> str:
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


def tokenize(text: str) -> list[str]:
    """Content-word stems of a text, in order (stopwords and 1-letter tokens dropped)."""
    return [stem_word(t) for t in _TOKEN_RE.findall(text.lower()) if len(t) > 1 and t not in STOPWORDS]


def raw_words(text: str) -> list[str]:
    return _TOKEN_RE.findall(text.lower())


def count_tokens(text: str) -> int:
    """Token estimate used for usage reporting: about four characters per token."""
    return (len(text) + 3) // 4 if text else 0


def message_text(content: Any) -> str:
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


def unit_from_seed(seed: bytes, salt: str) -> float:
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


def find_expression(text: str) -> str | None:
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


def find_arithmetic(text: str) -> float | int | None:
    """The value of the longest arithmetic expression in a text, if any."""
    best = find_expression(text)
    if best is None:
        return None
    try:
        return safe_eval(best)
    except (ValueError, TypeError, RecursionError):
        return None


def first_number(text: str) -> float | int | None:
    match = NUMBER_RE.search(text)
    if not match:
        return None
    raw = match.group(0).replace(",", "")
    return float(raw) if "." in raw else int(raw)


def format_number(value: float | int) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(round(value, 6)) if isinstance(value, float) else str(value)
