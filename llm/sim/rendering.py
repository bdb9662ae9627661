"""Rendering: the reply text in the adapter's format (`[[ ## field ## ]]` sections, XML
tags or a JSON object)."""

from __future__ import annotations

import json
from typing import Any

from llm.sim.prompts import FieldSpec
from llm.sim.text import format_number

# ---------------------------------------------------------------------------------------------
# Rendering


def render_chat(values: dict[str, Any], specs: list[FieldSpec]) -> str:
    parts = [f"[[ ## {spec.name} ## ]]\n{_chat_value(values[spec.name])}" for spec in specs]
    parts.append("[[ ## completed ## ]]")
    return "\n\n".join(parts)


def _chat_value(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return format_number(value) if value.is_integer() else repr(value)
    return str(value)


def render_xml(values: dict[str, Any], specs: list[FieldSpec]) -> str:
    return "\n\n".join(_xml_value(values[spec.name], spec.name) for spec in specs)


def _xml_value(value: Any, tag: str) -> str:
    """XMLAdapter's own nesting: lists as <item> children, dicts as child elements."""
    if isinstance(value, list):
        return f"<{tag}>{''.join(_xml_value(item, 'item') for item in value)}</{tag}>"
    if isinstance(value, dict):
        children = "".join(
            _xml_value(v, str(k))
            if str(k).isidentifier()
            else _xml_value(v, "entry").replace("<entry>", f'<entry key="{_xml_escape(str(k))}">', 1)
            for k, v in value.items()
        )
        return f"<{tag}>{children}</{tag}>"
    return f"<{tag}>{_xml_escape(_chat_value(value))}</{tag}>"


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")


def render_json(values: dict[str, Any]) -> str:
    return json.dumps(values, ensure_ascii=False)
