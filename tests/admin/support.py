"""Trace entries for console tests, shaped as the runner stores them."""


def lm_entry(step: str = "main", answer: str = "Paris", **fields: object) -> dict:
    """An LM-call trace entry shaped as executions.tracing.TraceRecorder writes it."""
    return {
        "kind": "lm",
        "step": step,
        "model": "sim/default",
        "messages": [
            {"role": "system", "content": "Your input fields are:\n1. `question` (str)"},
            {"role": "user", "content": "[[ ## question ## ]]\nCapital of France?"},
        ],
        "outputs": [f"[[ ## answer ## ]]\n{answer}\n\n[[ ## completed ## ]]"],
        "prompt_tokens": 120,
        "completion_tokens": 8,
        "cost_usd": 0.000123,
        "latency_ms": 4.5,
        "cache_hit": False,
        "error": None,
        **fields,
    }
