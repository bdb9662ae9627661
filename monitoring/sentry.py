"""Sentry error reporting (enabled by SENTRY_DSN), tagged and scrubbed.

Prompts, program inputs and outputs are user data: they are removed from events unless
DSPEX_SENTRY_SEND_PROMPTS=1. Stack-frame locals are never sent (they hold prompts and, in the
provider client, the API key), and the configured provider key is replaced wherever it appears.
"""

import os
from typing import TYPE_CHECKING, Any

from dspex_site.env import env_bool, env_str

if TYPE_CHECKING:
    from sentry_sdk.types import Event, Hint

SCRUBBED = "[scrubbed]"
# Keys whose values are prompts or program data (sent only when explicitly allowed) or secrets
# (never sent), wherever they appear in an event.
PROMPT_KEYS = {"messages", "prompt", "input", "inputs", "output", "outputs", "content", "demos"}
SECRET_KEYS = {"api_key", "authorization", "token", "password", "secret", "dspex_lm_api_key", "cookie"}


def _secrets() -> list[str]:
    values = [env_str("DSPEX_LM_API_KEY"), env_str("OPENAI_API_KEY"), env_str("DJANGO_SECRET_KEY")]
    return [v for v in values if v and len(v) >= 8]


def _sensitive(key: object, send_prompts: bool) -> bool:
    name = str(key).lower()
    return name in SECRET_KEYS or (name in PROMPT_KEYS and not send_prompts)


def scrub(value: Any, secrets: list[str], send_prompts: bool, depth: int = 0) -> Any:
    """Recursively replace sensitive keys' values and any secret substring."""
    if depth > 30:
        return SCRUBBED
    if isinstance(value, dict):
        return {
            k: SCRUBBED if _sensitive(k, send_prompts) else scrub(v, secrets, send_prompts, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrub(v, secrets, send_prompts, depth + 1) for v in value]
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, SCRUBBED)
        return value
    return value


def before_send(event: "Event", hint: "Hint") -> "Event":
    send_prompts = env_bool("DSPEX_SENTRY_SEND_PROMPTS", False)
    request = event.get("request")
    if isinstance(request, dict) and not send_prompts:
        request.pop("data", None)  # request bodies carry program inputs
    return scrub(event, _secrets(), send_prompts)


def init_sentry(dsn: str, *, environment: str, release: str) -> None:
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration

    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        release=release,
        integrations=[DjangoIntegration(), CeleryIntegration(monitor_beat_tasks=False), LoggingIntegration()],
        send_default_pii=False,
        include_local_variables=False,
        max_request_body_size="never",
        before_send=before_send,
        traces_sample_rate=float(os.environ.get("SENTRY_TRACES_SAMPLE_RATE", "0") or 0),
    )
    sentry_sdk.set_tag("app", "dspex")
