"""Validation: walk a pipeline and its variables, collect every error with its path, build a plan.

The walk only visits keys it knows and caps every collection, so any JSON value (None,
numbers, deeply nested garbage, huge strings) yields errors rather than exceptions.
"""

import logging
from typing import Any

from programs.spec.catalog import MODULES, RETRIEVE_SIGNATURE, ModuleKind
from programs.spec.errors import Errors, SpecError, join, join_key, show
from programs.spec.options import LM_SETTINGS, SAMPLING
from programs.spec.pipeline import reserved_step_names
from programs.spec.plan import ProgramPlan, Setting, StepPlan
from programs.spec.references import Ref, is_identifier
from programs.spec.registry import Registry, default_registry
from programs.spec.signatures import SignatureSpec, check_field_name, parse_signature
from programs.spec.types import ANY
from programs.spec.validate_options import OptionChecks
from programs.spec.validate_refs import ReferenceChecks
from programs.spec.variables import check_declarations

logger = logging.getLogger(__name__)

TOP_KEYS = frozenset({"steps", "lm", "adapter", "outputs"})
ADAPTERS = ("chat", "json")
MAX_STEPS = 50
MAX_INSTRUCTIONS = 20_000
MAX_DEMOS = 100
MAX_MAPPING = 50
SHORTHAND_NAME = "main"


def validate_program(pipeline: Any, variables: Any, registry: Registry | None = None) -> list[SpecError]:
    """Every error in a program, each with its path; an empty list means it can be compiled."""
    return analyze(pipeline, variables, registry or default_registry())[1]


def analyze(pipeline: Any, variables: Any, registry: Registry | None) -> tuple[ProgramPlan, list[SpecError]]:
    """Validate and plan. `registry=None` skips the checks of tool, reward and class names."""
    try:
        return _Analyzer(registry).run(pipeline, variables)
    except Exception:
        # Bad input must never become a 500; a bug here is logged and reported as an error.
        logger.exception("pipeline validation crashed")
        return ProgramPlan(), [SpecError("pipeline", "internal error while validating this program")]


def normalize_pipeline(pipeline: Any) -> Any:
    """Expand the one-step shorthand `{"signature": ...}` to the full form with `steps`."""
    if not isinstance(pipeline, dict) or "steps" in pipeline or "signature" not in pipeline:
        return pipeline
    top = {key: value for key, value in pipeline.items() if key in TOP_KEYS}
    step = {key: value for key, value in pipeline.items() if key not in TOP_KEYS}
    return {**top, "steps": [{"name": SHORTHAND_NAME, "module": "Predict", **step}]}


class _Analyzer(OptionChecks, ReferenceChecks):
    def __init__(self, registry: Registry | None) -> None:
        self.registry = registry
        self.errors = Errors()
        self.plan = ProgramPlan()
        self.declared_names: set[str] = set()
        self.input_origins: dict[str, str] = {}
        self.steps_by_name: dict[str, StepPlan] = {}
        self.step_indexes: dict[str, int] = {}
        self.current: tuple[int, str | None] = (0, None)

    def run(self, pipeline: Any, variables: Any) -> tuple[ProgramPlan, list[SpecError]]:
        self.plan.variables = check_declarations(variables, self.errors)
        if isinstance(variables, dict):
            self.declared_names = {name for name in variables if isinstance(name, str)}
        if not isinstance(pipeline, dict):
            self.errors.add(
                "pipeline", 'must be an object with "steps" (or "signature" for a one-step program)'
            )
            return self.plan, self.errors.items
        entries = self._step_entries(pipeline)
        top_lm = self._settings(pipeline.get("lm"), "pipeline.lm", LM_SETTINGS) if "lm" in pipeline else {}
        self._check_adapter(pipeline)
        self._check_steps(entries, top_lm)
        self._check_outputs(pipeline)
        return self.plan, self.errors.items

    # --- top level --------------------------------------------------------------------------

    def _step_entries(self, pipeline: dict) -> list[tuple[str, Any]]:
        if "steps" not in pipeline:
            if "signature" not in pipeline:
                self.errors.add("pipeline", 'needs "steps" (or "signature" for a one-step program)')
                return []
            step = {key: value for key, value in pipeline.items() if key not in TOP_KEYS}
            return [("pipeline", {"name": SHORTHAND_NAME, "module": "Predict", **step})]
        for key in pipeline:
            if key not in TOP_KEYS:
                hint = " (use either a one-step shorthand or steps)" if key in MODULES["Predict"].keys else ""
                self.errors.add(join_key("pipeline", key), f"unknown key{hint}")
        steps = pipeline["steps"]
        if not isinstance(steps, list) or not 1 <= len(steps) <= MAX_STEPS:
            self.errors.add("pipeline.steps", f"must be a list of 1 to {MAX_STEPS} steps")
            return []
        return [(join("pipeline.steps", index), step) for index, step in enumerate(steps)]

    def _check_adapter(self, pipeline: dict) -> None:
        adapter = pipeline.get("adapter")
        if adapter is None:
            return
        if adapter not in ADAPTERS:
            self.errors.add(
                "pipeline.adapter", f"unknown adapter {show(adapter)} (expected one of chat, json)"
            )
            return
        self.plan.adapter = adapter

    # --- steps ----------------------------------------------------------------------------------

    def _check_steps(self, entries: list[tuple[str, Any]], top_lm: dict[str, Setting]) -> None:
        for index, (_, raw) in enumerate(entries):
            name = raw.get("name") if isinstance(raw, dict) else None
            if isinstance(name, str):
                self.step_indexes.setdefault(name, index)
        for index, (path, raw) in enumerate(entries):
            step = self._check_step(index, path, raw, top_lm)
            if step is not None:
                self.plan.steps.append(step)
                self.steps_by_name.setdefault(step.name, step)

    def _check_step(self, index: int, path: str, raw: Any, top_lm: dict[str, Setting]) -> StepPlan | None:
        if not isinstance(raw, dict):
            self.errors.add(path, "a step must be an object")
            return None
        name = self._check_step_name(index, path, raw)
        self.current = (index, name)
        kind = self._check_module(path, raw)
        step = StepPlan(index, path, name or f"step{index}", kind.name if kind else "?")
        if kind is not None:
            self._check_keys(path, raw, kind)
            step.options = self._module_options(path, raw, kind)
            self._check_special(step, raw, kind)
        step.signature = self._step_signature(path, raw, kind, step.base)
        step.instructions = self._instructions(path, raw)
        step.lm = {**top_lm, **self._step_lm(path, raw, kind)}
        step.bindings = self._bindings(path, raw, step.signature)
        if kind is not None and step.signature is not None:
            step.demos = self._demos(path, raw, step, step.signature, kind)
            step.outputs = self._extra_outputs(kind, step.base) + tuple(step.signature.output_names)
        return step if name is not None else None

    def _check_step_name(self, index: int, path: str, raw: dict) -> str | None:
        name, name_path = raw.get("name"), join(path, "name")
        if name is None:
            self.errors.add(name_path, "every step needs a name")
            return None
        if not is_identifier(name):
            self.errors.add(
                name_path, f"{show(name)} is not a valid step name (an identifier, not starting with _)"
            )
            return None
        if name in reserved_step_names():
            self.errors.add(
                name_path, f"{show(name)} is reserved (a DSPy module attribute or reference scope)"
            )
            return None
        if self.step_indexes.get(name, index) != index:
            self.errors.add(name_path, f"duplicate step name {show(name)}")
            return None
        return name

    def _check_module(self, path: str, raw: dict) -> ModuleKind | None:
        module = raw.get("module", "Predict")
        kind = MODULES.get(module) if isinstance(module, str) else None
        if kind is None:
            self.errors.add(
                join(path, "module"), f"unknown module {show(module)} (expected one of {', '.join(MODULES)})"
            )
        return kind

    def _check_keys(self, path: str, raw: dict, kind: ModuleKind) -> None:
        for key in raw:
            if key in kind.keys:
                continue
            if key == "demos" and key in MODULES["Predict"].keys:
                message = f"demos are not supported by {kind.name} steps"
            elif kind.fixed_signature and key in MODULES["Predict"].keys:
                message = f"not used by {kind.name} steps (their signature is {RETRIEVE_SIGNATURE})"
            else:
                message = f"unknown key for a {kind.name} step"
            self.errors.add(join_key(path, key), message)

    def _step_signature(
        self, path: str, raw: dict, kind: ModuleKind | None, base: str
    ) -> SignatureSpec | None:
        if kind is not None and kind.fixed_signature:
            return parse_signature(RETRIEVE_SIGNATURE, Errors(), path)
        if "signature" not in raw:
            if kind is not None:  # with an unknown module, whether it needs one is unknown
                self.errors.add(join(path, "signature"), "a signature is required")
            return None
        sig_path = join(path, "signature")
        signature = parse_signature(raw["signature"], self.errors, sig_path)
        if signature is None or kind is None:
            return signature
        reserved = [
            f.name for f in (*signature.inputs, *signature.outputs) if self._is_reserved(kind, base, f.name)
        ]
        for field_name in reserved:
            self.errors.add(sig_path, f"field {show(field_name)} is added by {kind.name} itself; rename it")
        return None if reserved else signature

    @staticmethod
    def _is_reserved(kind: ModuleKind, base: str, field_name: str) -> bool:
        return kind.is_reserved(field_name) or (base == "ChainOfThought" and field_name == "reasoning")

    @staticmethod
    def _extra_outputs(kind: ModuleKind, base: str) -> tuple[str, ...]:
        if kind.name in ("BestOfN", "Refine") and base == "ChainOfThought":
            return ("reasoning",)
        return kind.extra_outputs

    def _instructions(self, path: str, raw: dict) -> str | None:
        value = raw.get("instructions")
        if value is not None and (not isinstance(value, str) or len(value) > MAX_INSTRUCTIONS):
            self.errors.add(
                join(path, "instructions"), f"must be a string of at most {MAX_INSTRUCTIONS} characters"
            )
            return None
        return value or None

    def _step_lm(self, path: str, raw: dict, kind: ModuleKind | None) -> dict[str, Setting]:
        # In the one-step shorthand `lm` is the top-level setting: `raw` then holds only `config`.
        settings: dict[str, Setting] = {}
        if kind is not None and kind.fixed_signature:
            return settings
        if "lm" in raw:
            settings.update(self._settings(raw["lm"], join(path, "lm"), LM_SETTINGS))
        if "config" in raw:
            settings.update(self._settings(raw["config"], join(path, "config"), SAMPLING))
        return settings

    # --- demos and outputs -----------------------------------------------------------------------

    def _demos(
        self, path: str, raw: dict, step: StepPlan, signature: SignatureSpec, kind: ModuleKind
    ) -> list[dict[str, Any]]:
        demos, demos_path = raw.get("demos"), join(path, "demos")
        if demos is None or not kind.demos:
            return []
        if not isinstance(demos, list) or len(demos) > MAX_DEMOS:
            self.errors.add(demos_path, f"must be a list of at most {MAX_DEMOS} examples")
            return []
        allowed = set(signature.input_names) | set(signature.output_names)
        if kind.name in ("ChainOfThought", "MultiChainComparison") or step.base == "ChainOfThought":
            allowed.add("reasoning")
        valid = []
        for index, demo in enumerate(demos):
            demo_path = join(demos_path, index)
            if not isinstance(demo, dict) or not demo:
                self.errors.add(demo_path, "a demo must be an object mapping signature fields to values")
                continue
            unknown = [key for key in demo if key not in allowed]
            for key in unknown:
                self.errors.add(join_key(demo_path, key), "not a field of the step's signature")
            if not unknown:
                valid.append(dict(demo))
        return valid

    def _check_outputs(self, pipeline: dict) -> None:
        self.current = (MAX_STEPS + 1, None)
        if "outputs" not in pipeline:
            self.plan.outputs = self._default_outputs()
            return
        raw = pipeline["outputs"]
        if not isinstance(raw, dict) or not 1 <= len(raw) <= MAX_MAPPING:
            self.errors.add(
                "pipeline.outputs", f"must be an object mapping 1 to {MAX_MAPPING} output names to values"
            )
            return
        for name, value in raw.items():
            path = join_key("pipeline.outputs", name)
            problem = check_field_name(name)
            if problem:
                self.errors.add(path, problem)
                continue
            binding = self._binding(value, path, ANY)
            if binding is not None:
                self.plan.outputs[name] = binding

    def _default_outputs(self) -> dict[str, Any]:
        last = self.plan.steps[-1] if self.plan.steps else None
        if last is None or last.signature is None:
            return {}
        return {name: Ref(last.name, name) for name in last.signature.output_names}
