"""Display helpers (`dspex_site.display`) the console and the commands share."""

from datetime import timedelta

from django.utils import timezone

from dspex_site.display import ago, money, pre, trace_rows


def test_money_keeps_per_call_precision_and_says_when_the_price_is_unknown() -> None:
    assert money(0.0000123) == "$0.000012"
    assert money(None) == "unknown"


def test_ago_uses_the_largest_unit() -> None:
    now = timezone.now()
    assert ago(now - timedelta(days=3, hours=5)) == "3 d"
    assert ago(now - timedelta(minutes=7)) == "7 min"
    assert ago(now + timedelta(seconds=30)) == "0 s"  # clocks disagree: never negative


def test_trace_rows_split_lm_messages_into_turns_and_skip_junk() -> None:
    trace = [
        {"kind": "module", "step": "answer", "inputs": {"q": "x"}},
        "not an entry",
        {"kind": "lm", "step": "answer", "messages": [{"role": "user", "content": [{"text": "hi"}]}]},
    ]
    rows = trace_rows(trace)
    assert [(row.index, row.kind) for row in rows] == [(1, "module"), (3, "lm")]
    assert [(m.role, m.content) for m in rows[1].messages] == [("user", "hi")]
    assert rows[1].cost == "unknown"
    assert pre({}) == "—" and "dspex-json" in pre({"a": 1})
