"""What a provider call cost, in USD: the one place tokens become money.

Models DSPy knows are priced from DSPy's bundled table (offline snapshot); others from
`settings.DSPEX_PRICES` (per million tokens, by full model name, then by provider prefix).
A model priced nowhere costs None (unknown), never a silent 0. Chat calls, embedding calls and
what a cache hit saved are all priced here.
"""

import functools

from django.conf import settings
from dspy.clients.costs import estimate_cost
from dspy.clients.model_metadata import model_info
from dspy.lm15 import Message, Response, TextPart, Usage

from llm.routing import UnknownProvider, route_for

PER_TOKENS = 1_000_000  # DSPEX_PRICES are USD per million tokens


def configured_price(model: str) -> dict | None:
    prices = settings.DSPEX_PRICES
    return prices.get(model) or prices.get(model.partition("/")[0])


def cost_usd(model: str, lm15_provider: str | None, response: Response) -> float | None:
    """Cost of one provider response: our configured price first, then DSPy's table."""
    usage = response.usage
    prompt, completion = usage.input_tokens or 0, usage.output_tokens or 0
    price = configured_price(model)
    if price is not None:
        return (
            prompt * float(price.get("prompt", 0)) + completion * float(price.get("completion", 0))
        ) / PER_TOKENS
    if lm15_provider is None or not dspy_knows(lm15_provider, model):
        return None
    cost, _provenance = estimate_cost(response, provider=lm15_provider, requested_model=_model_id(model))
    return cost


def _model_id(model: str) -> str:
    return model.partition("/")[2] or model


@functools.lru_cache(maxsize=1024)
def dspy_knows(lm15_provider: str, model: str) -> bool:
    """Whether DSPy's price table has the model. Memoised: a miss scans the whole table (~5 ms)."""
    return bool(model_info(lm15_provider, _model_id(model)))


def cost_for_tokens(model: str, prompt_tokens: int, completion_tokens: int = 0) -> float | None:
    """What this many tokens of `model` cost: an embedding call (prompt tokens only), what a
    cache hit saved, a cache entry written outside a traced call."""
    usage = Usage(
        input_tokens=prompt_tokens,
        output_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )
    response = Response(
        id=None,
        model=_model_id(model),
        message=Message.assistant([TextPart("")]),
        finish_reason="stop",
        usage=usage,
    )
    try:
        lm15_provider = route_for(model).lm15_provider
    except UnknownProvider:
        lm15_provider = None  # only a configured price can apply
    return cost_usd(model, lm15_provider, response)
