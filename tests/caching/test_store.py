"""The bounded cache itself: LRU eviction by entries and bytes, expiry, exact JSON, shared stats."""

import json
import subprocess
import sys
import time

import pytest

from caching.registry import EMBEDDINGS, LLM
from tests.support import ROOT

RECORD = {
    "_dspy_format": "dspy-lm15-result-v1",
    "outputs": ["[[ ## answer ## ]]\nZürich — 東京 \u2603\n\n[[ ## completed ## ]]"],
    "usage": {
        "prompt_tokens": 150,
        "completion_tokens": 15,
        "total_tokens": 165,
        "prompt_tokens_details": None,
    },
    "cost": 2.7e-05,
    "cost_details": {"kind": "priced", "parts": [0.1, 1e-300, -0.0, 12345678901234567890]},
    "raw": None,
    "response_model": "openai/gpt-4o-mini",
}


def test_values_survive_the_json_round_trip_exactly():
    LLM.set("llm:m:0.0:exact", RECORD, cost_usd=2.7e-05, tokens=165)
    hit = LLM.get("llm:m:0.0:exact")
    assert hit.value == RECORD
    assert json.dumps(hit.value, sort_keys=True) == json.dumps(RECORD, sort_keys=True)
    assert (hit.cost_usd, hit.tokens) == (2.7e-05, 165)


def test_it_evicts_the_least_recently_used_entry_past_the_entry_limit(settings):
    settings.DSPEX_LLM_CACHE_MAX_ENTRIES = 3
    for i in range(3):
        LLM.set(f"llm:m:0.0:{i}", {"i": i})
    assert LLM.get("llm:m:0.0:0") is not None  # 0 is now the most recently used
    LLM.set("llm:m:0.0:3", {"i": 3})
    present = [i for i in range(4) if LLM.get(f"llm:m:0.0:{i}") is not None]
    assert present == [0, 2, 3]
    stats = LLM.stats()
    assert stats["entries"] == 3 and stats["evictions"] == 1


def test_it_evicts_until_the_byte_limit_holds(settings):
    settings.DSPEX_LLM_CACHE_MAX_BYTES = 2_000
    for i in range(10):
        LLM.set(f"llm:m:0.0:{i}", {"text": "x" * 480})
    stats = LLM.stats()
    assert stats["memory_bytes"] <= 2_000
    assert stats["entries"] == 4  # each entry is ~493 bytes
    assert LLM.get("llm:m:0.0:9") is not None and LLM.get("llm:m:0.0:0") is None


def test_a_value_larger_than_the_whole_cache_is_not_stored(settings):
    settings.DSPEX_LLM_CACHE_MAX_BYTES = 100
    LLM.set("llm:m:0.0:small", {"a": 1})
    LLM.set("llm:m:0.0:huge", {"text": "x" * 500})
    assert LLM.get("llm:m:0.0:huge") is None
    assert LLM.get("llm:m:0.0:small") is not None


def test_expired_entries_leave_the_index_and_the_byte_count(settings):
    settings.DSPEX_LLM_CACHE_TTL_S = 1
    LLM.set("llm:m:0.0:old", {"text": "x" * 100})
    assert LLM.stats()["entries"] == 1
    time.sleep(1.1)
    assert LLM.get("llm:m:0.0:old") is None
    stats = LLM.stats()
    assert stats["entries"] == 0 and stats["memory_bytes"] == 0


def test_batched_lookups_report_hits_and_misses_in_order():
    EMBEDDINGS.set_many([(f"emb:m:{i}", [float(i), 0.5], None, 0) for i in range(0, 1200, 2)])
    found = EMBEDDINGS.get_many([f"emb:m:{i}" for i in range(1200)])  # more than one Lua chunk
    assert [hit is not None for hit in found] == [i % 2 == 0 for i in range(1200)]
    assert found[10].value == [10.0, 0.5]
    stats = EMBEDDINGS.stats()
    assert (stats["hits"], stats["misses"], stats["entries"]) == (600, 600, 600)


def test_stats_are_shared_by_every_process():
    LLM.set("llm:m:0.0:shared", {"a": 1}, cost_usd=0.25, tokens=40)
    code = (
        "import django; django.setup()\n"
        "from caching.registry import LLM\n"
        "assert LLM.get('llm:m:0.0:shared') is not None\n"
        "assert LLM.get('llm:m:0.0:absent') is None\n"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        check=True,
        env={**__import__("os").environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
    )
    stats = LLM.stats()
    assert (stats["hits"], stats["misses"]) == (1, 1)
    assert stats["saved_usd"] == pytest.approx(0.25) and stats["saved_tokens"] == 40
