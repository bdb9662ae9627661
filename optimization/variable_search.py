"""Variable search: score a program over combinations of its declared variables (grid or random).

Candidate values come from each declaration's constraints: a choice's choices, both booleans,
`steps` evenly spaced values between an int/float's min and max. `variables` in the config may
list values explicitly (each checked against the declaration) or restrict the search to some
variables. Every combination is scored on the training split and recorded with its cost.
"""

import itertools
import random
from collections.abc import Callable
from typing import Any

from programs.spec import ProgramSpecError, resolve_variables

DEFAULT_STEPS = 3
DEFAULT_MAX_COMBINATIONS = 64


class SearchConfigError(ValueError):
    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['path']}: {e['message']}" for e in errors))
        self.errors = errors


def _values_from_declaration(name: str, decl: dict, steps: int) -> list[Any]:
    kind = decl.get("type")
    if kind == "choice":
        return list(decl["choices"])
    if kind == "bool":
        return [False, True]
    if kind in ("int", "float") and decl.get("min") is not None and decl.get("max") is not None:
        low, high = decl["min"], decl["max"]
        points = [low + (high - low) * i / (steps - 1) for i in range(steps)]
        return sorted({round(p) for p in points}) if kind == "int" else [round(p, 6) for p in points]
    raise SearchConfigError(
        [
            {
                "path": f"config.variables.{name}",
                "message": f"list the values to try ({kind} without min and max)",
            }
        ]
    )


def candidate_values(declarations: dict, config: dict) -> dict[str, list[Any]]:
    """Values to try per variable; raises SearchConfigError naming the offending path."""
    if not declarations:
        raise SearchConfigError(
            [{"path": "optimizer", "message": "the program declares no variables to search"}]
        )
    wanted = config.get("variables") or {name: None for name in declarations}
    steps = config.get("steps", DEFAULT_STEPS)
    errors, values = [], {}
    for name, listed in wanted.items():
        if name not in declarations:
            errors.append({"path": f"config.variables.{name}", "message": "not a declared variable"})
            continue
        if listed is None:
            values[name] = _values_from_declaration(name, declarations[name], steps)
            continue
        if not isinstance(listed, list) or not listed:
            errors.append(
                {"path": f"config.variables.{name}", "message": "must be a non-empty list of values"}
            )
            continue
        for index, value in enumerate(listed):
            try:
                resolve_variables(declarations, {name: value})
            except ProgramSpecError as exc:
                errors.append({"path": f"config.variables.{name}[{index}]", "message": exc.errors[0].message})
        values[name] = listed
    if errors:
        raise SearchConfigError(errors)
    return values


def combinations(declarations: dict, config: dict) -> list[dict[str, Any]]:
    """The combinations to score, defaults first (so the current setting is always a candidate)."""
    values = candidate_values(declarations, config)
    limit = config.get("max_combinations", DEFAULT_MAX_COMBINATIONS)
    names = list(values)
    grid = [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values.values())]
    if config.get("mode", "grid") == "random":
        rng = random.Random(config.get("seed", 0))
        grid = rng.sample(grid, min(config.get("samples", limit), len(grid)))
    elif len(grid) > limit:
        raise SearchConfigError(
            [
                {
                    "path": "config",
                    "message": f"{len(grid)} combinations exceed max_combinations={limit}; "
                    "narrow config.variables or use mode 'random'",
                }
            ]
        )
    defaults = {name: declarations[name].get("default") for name in names}
    grid.sort(key=lambda combo: combo != defaults)
    return grid[:limit]


def with_defaults(declarations: dict, values: dict[str, Any]) -> dict:
    """Declarations whose defaults are `values`: a program compiled from them runs with these values."""
    out = {name: dict(decl) for name, decl in declarations.items()}
    for name, value in values.items():
        out[name]["default"] = value
    return out


def search(
    declarations: dict,
    config: dict,
    score: Callable[[dict[str, Any]], float],
    cost_so_far: Callable[[], dict[str, float]],
    on_trial: Callable[[dict[str, Any], float], None],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score every combination; returns the best (first best wins: defaults on a tie) and the table."""
    table: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    best_score = float("-inf")
    for combo in combinations(declarations, config):
        before = cost_so_far()
        value = score(combo)
        after = cost_so_far()
        table.append(
            {
                "variables": combo,
                "score": value,
                "lm_calls": after["lm_calls"] - before["lm_calls"],
                "cost_usd": round(after["cost_usd"] - before["cost_usd"], 8),
                "tokens": after["tokens"] - before["tokens"],
            }
        )
        if value > best_score:
            best, best_score = combo, value
        on_trial(combo, value)
    return best or {}, table
