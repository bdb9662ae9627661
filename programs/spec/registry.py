"""What a spec may name: tools, custom module classes, rewards and the retriever.

A spec never imports anything itself. Tools and custom classes come from Django settings
(trusted, written by operators), rewards from `programs.rewards.REWARDS`.
"""

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from programs.rewards import REWARDS

Retriever = Callable[[str, str, int], list[str]]

DEFAULT_TOOLS = {"calculator": "programs.tools.calculator", "clock": "programs.tools.clock"}
DEFAULT_CUSTOM_MODULES = ["programs.custom_modules.KeywordExtract"]


@dataclass
class Registry:
    """Names a spec may use. `retriever(corpus, query, k)` serves Retrieve steps when set."""

    tools: dict[str, Callable[..., Any]] = field(default_factory=dict)
    custom_modules: set[str] = field(default_factory=set)
    rewards: dict[str, Callable[..., float]] = field(default_factory=dict)
    retriever: Retriever | None = None


def import_dotted(path: str) -> Any:
    """Import `package.module.attr`. Only ever called with trusted (settings or allowlisted) paths."""
    module_path, _, attr = path.rpartition(".")
    if not module_path:
        raise ImportError(f"{path!r} is not a dotted path")
    return getattr(importlib.import_module(module_path), attr)


@functools.cache
def default_registry() -> Registry:
    """The process-wide registry built from settings on first use (`cache_clear()` rebuilds it).

    Without Django settings (scripts, pure-Python tests) the shipped tools and module apply.
    """
    tools_setting, custom_setting = _settings_or_defaults()
    return Registry(
        tools={name: import_dotted(path) for name, path in tools_setting.items()},
        custom_modules=set(custom_setting),
        rewards=dict(REWARDS),
    )


def _settings_or_defaults() -> tuple[dict[str, str], list[str]]:
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:
        return (
            getattr(settings, "DSPEX_TOOLS", DEFAULT_TOOLS),
            getattr(settings, "DSPEX_CUSTOM_MODULES", DEFAULT_CUSTOM_MODULES),
        )
    except ImproperlyConfigured:  # no settings module at all
        return DEFAULT_TOOLS, DEFAULT_CUSTOM_MODULES
