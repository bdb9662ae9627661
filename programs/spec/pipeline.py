"""PipelineModule: the dspy.Module a spec compiles to, and how one execution runs it.

Each step's DSPy module is an attribute named after the step, so `named_predictors()` and
`dump_state()` keys read `answer.predict`, exactly as in a hand-written DSPy program with
`self.answer = dspy.ChainOfThought(...)`. Everything that varies per execution (variables,
LM, observer) travels in a context variable rather than on the module, because one compiled
module is memoised per process and shared by concurrent executions.
"""

import contextvars
import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import dspy

from dspex_site.jsonable import to_jsonable
from programs.spec.errors import PipelineRuntimeError, ProgramSpecError, SpecError
from programs.spec.inputs import check_inputs
from programs.spec.options import check_option
from programs.spec.plan import ProgramPlan, Setting, StepPlan
from programs.spec.references import Ref
from programs.spec.registry import Registry
from programs.spec.state import StateMismatchError, clean_predictor_state
from programs.spec.steps import Shared
from programs.spec.types import as_history, is_history
from programs.spec.variables import resolve_declared

LMFactory = Callable[[dict[str, Any]], dspy.BaseLM]


class StepObserver(Protocol):
    """Told about every step of a run; all values passed are JSON-serialisable."""

    def step_started(self, name: str, module: str, inputs: dict[str, Any]) -> None: ...

    def step_finished(
        self, name: str, outputs: dict[str, Any] | None, error: BaseException | None
    ) -> None: ...


@dataclass(frozen=True)
class _Run:
    owner: "PipelineModule"
    variables: dict[str, Any]
    lm_for: LMFactory | None
    observer: StepObserver | None


_CURRENT_RUN: contextvars.ContextVar[_Run | None] = contextvars.ContextVar("dspex_pipeline_run", default=None)
_ADAPTERS: dict[str, Callable[[], Any]] = {"chat": dspy.ChatAdapter, "json": dspy.JSONAdapter}


class PipelineModule(dspy.Module):
    """A compiled pipeline spec. Call it like any DSPy module, or `run()` it for one execution."""

    def __init__(self, plan: ProgramPlan, modules: dict[str, dspy.Module], registry: Registry) -> None:
        super().__init__()
        # Shared, not deep-copied by optimizers: the plan is immutable once compiled.
        self._spec = Shared(_Spec(plan, registry, plan.adapter and _ADAPTERS[plan.adapter]()))
        for name, module in modules.items():
            setattr(self, name, module)

    # --- introspection ---------------------------------------------------------------------------

    @property
    def plan(self) -> ProgramPlan:
        return self._spec.value.plan

    @property
    def step_names(self) -> list[str]:
        return [step.name for step in self.plan.steps]

    @property
    def input_fields(self) -> dict[str, str]:
        return {name: parsed.text for name, parsed in self.plan.input_types.items()}

    @property
    def output_fields(self) -> list[str]:
        return list(self.plan.outputs)

    @property
    def lm_for(self) -> LMFactory | None:
        """The LM factory `forward()` uses when not inside `run()`; None means `dspy.settings.lm`."""
        return self._spec.value.lm_for

    @lm_for.setter
    def lm_for(self, factory: LMFactory | None) -> None:
        self._spec.value.lm_for = factory

    # --- running ---------------------------------------------------------------------------------

    def run(
        self,
        inputs: Any,
        variables: Any = None,
        lm_for: LMFactory | None = None,
        observer: StepObserver | None = None,
    ) -> dict[str, Any]:
        """Run one execution and return its outputs as JSON.

        Inputs and variable overrides are checked first (ProgramSpecError with `input.<field>`
        and `variables.<name>` paths). `lm_for(config)` is called with each step's resolved LM
        config (`{"model": ..., "temperature": ..., ...}`; keys the spec does not set are
        absent) and must return the LM for it; None uses `dspy.settings.lm`.
        """
        clean = check_inputs(self.plan.input_types, inputs, allow_extra=False)
        resolved = resolve_declared(self.plan.variables, variables)
        token = _CURRENT_RUN.set(_Run(self, resolved, lm_for, observer))
        try:
            prediction = self(**clean)
        finally:
            _CURRENT_RUN.reset(token)
        return to_jsonable({name: prediction[name] for name in self.plan.outputs})

    def forward(self, **inputs: Any) -> dspy.Prediction:
        run = _CURRENT_RUN.get()
        if run is None or run.owner is not self:
            # Called by DSPy (an optimizer, Evaluate): declared defaults, extra fields ignored.
            inputs = check_inputs(self.plan.input_types, inputs, allow_extra=True)
            defaults = {name: decl.default for name, decl in self.plan.variables.items()}
            run = _Run(self, defaults, self.lm_for, None)
        return dspy.Prediction(**_Execution(self, run).outputs(self._typed(inputs)))

    def _typed(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Inputs with every History field (stored and sent as JSON) as a dspy.History, the type
        DSPy's adapters format as earlier conversation turns."""
        types = self.plan.input_types
        return {
            name: as_history(value) if name in types and is_history(types[name]) else value
            for name, value in inputs.items()
        }

    # --- state -----------------------------------------------------------------------------------

    def dump_state(self, json_mode: bool = True) -> dict[str, Any]:
        state = super().dump_state(json_mode=json_mode)
        return {name: _without_lm(entry) for name, entry in state.items()}

    def load_state(
        self, state: Any, *, allow_unsafe_lm_state: bool = False, strict: bool = True
    ) -> "PipelineModule":
        """Load DSPy state (ours or plain DSPy's of the same structure), never any LM settings.

        Raises StateMismatchError for a state of another structure or a malformed one, and
        then changes nothing. `lm` entries are dropped whatever `allow_unsafe_lm_state` says
        (see state.py). With `strict=False` predictors missing from `state` keep their
        current state and unknown entries are ignored.
        """
        if not isinstance(state, dict):
            raise StateMismatchError("a DSPy state must be an object keyed by predictor name")
        current = {name: param for name, param in self.named_parameters()}
        missing, unexpected = sorted(current.keys() - state.keys()), sorted(state.keys() - current.keys())
        if strict and (missing or unexpected):
            raise StateMismatchError(
                f"state does not match this program: missing {missing or 'nothing'}, "
                f"unexpected {unexpected or 'nothing'}"
            )
        clean = {
            name: clean_predictor_state(name, state[name]) if name in state else param.dump_state()
            for name, param in current.items()
        }
        try:
            super().load_state(clean)  # DSPy applies it to a copy first: a bad state changes nothing
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateMismatchError(f"malformed DSPy state: {exc!r}") from exc
        return self


@dataclass
class _Spec:
    plan: ProgramPlan
    registry: Registry
    adapter: Any
    lm_for: LMFactory | None = None


def _without_lm(entry: Any) -> Any:
    return {**entry, "lm": None} if isinstance(entry, dict) else entry


class _Execution:
    """One pass through the steps of a program."""

    def __init__(self, program: PipelineModule, run: _Run) -> None:
        self.program = program
        self.run = run
        self.spec: _Spec = program._spec.value
        self.results: dict[str, dict[str, Any]] = {}
        self.lms: dict[tuple, Any] = {}

    def outputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        self.inputs = inputs
        for step in self.spec.plan.steps:
            self.results[step.name] = self.step(step)
        return {name: self.value(binding, "outputs") for name, binding in self.spec.plan.outputs.items()}

    def step(self, step: StepPlan) -> dict[str, Any]:
        inputs = {field: self.value(binding, step.name) for field, binding in step.bindings.items()}
        observer = self.run.observer
        if observer is not None:
            observer.step_started(step.name, step.module, to_jsonable(inputs))
        try:
            with dspy.context(**self.context(step)):
                outputs = self.invoke(step, getattr(self.program, step.name), inputs)
        except BaseException as exc:
            if observer is not None:
                observer.step_finished(step.name, None, exc)
            raise
        if observer is not None:
            observer.step_finished(step.name, to_jsonable(outputs), None)
        return outputs

    def invoke(self, step: StepPlan, module: dspy.Module, inputs: dict[str, Any]) -> dict[str, Any]:
        if step.module == "Retrieve":
            prediction = module(
                query=inputs.get("query"), corpus=self.option(step, "corpus"), k=self.option(step, "k")
            )
        elif step.module == "ReAct":
            prediction = module(**inputs, max_iters=self.option(step, "max_iters"))
        elif step.module in ("BestOfN", "Refine"):
            prediction = self.rewarded(step, module, inputs)
        else:
            prediction = module(**inputs)
        return dict(prediction.items()) if isinstance(prediction, dspy.Example) else {}

    def rewarded(self, step: StepPlan, module: dspy.Module, inputs: dict[str, Any]) -> Any:
        # DSPy's BestOfN/Refine decrement `fail_count` on the instance on every failure, which
        # would leak between executions sharing the module: each run works on a shallow copy.
        attempt = copy.copy(module)
        attempt.N = attempt.fail_count = self.option(step, "n")
        attempt.threshold = self.option(step, "threshold")
        prediction = attempt(**inputs)
        if prediction is None:
            raise PipelineRuntimeError(step.name, f"all {attempt.N} attempts failed")
        return prediction

    def context(self, step: StepPlan) -> dict[str, Any]:
        overrides: dict[str, Any] = {}
        if self.spec.adapter is not None:
            overrides["adapter"] = self.spec.adapter
        if step.uses_lm:
            lm = self.lm(step)
            if lm is not None:
                overrides["lm"] = lm
        return overrides

    def lm(self, step: StepPlan) -> Any:
        config = {key: self.setting(setting) for key, setting in step.lm.items()}
        key = tuple(sorted(config.items()))
        if key not in self.lms:
            self.lms[key] = self.run.lm_for(config) if self.run.lm_for else _settings_lm(config)
        return self.lms[key]

    def option(self, step: StepPlan, name: str) -> Any:
        return self.setting(step.options[name])

    def setting(self, setting: Setting) -> Any:
        if not isinstance(setting.value, Ref):
            return setting.value
        value = self.run.variables[setting.value.name]
        problem = check_option(setting.spec, value)
        if problem:
            message = f"variable {setting.value.name!r} does not fit here: {problem}"
            raise ProgramSpecError([SpecError(setting.path, message)])
        return value

    def value(self, binding: Any, where: str) -> Any:
        if not isinstance(binding, Ref):
            return binding
        if binding.scope == "input":
            return self.inputs.get(binding.name)
        if binding.scope == "var":
            return self.run.variables[binding.name]
        produced = self.results[binding.scope]
        if binding.name not in produced:
            raise PipelineRuntimeError(where, f"step {binding.scope!r} produced no output {binding.name!r}")
        return produced[binding.name]


def _settings_lm(config: dict[str, Any]) -> Any:
    """Without an LM factory: the context's LM, with the step's sampling settings applied.

    `model` cannot be honoured here (there is no factory to build another LM); a copy is
    made only when a sampling setting differs, and copies are cheap (shallow).
    """
    base = dspy.settings.lm
    sampling = {key: value for key, value in config.items() if key != "model"}
    if base is None or all(base.kwargs.get(key) == value for key, value in sampling.items()):
        return None
    return base.copy(**sampling)


@functools.cache
def reserved_step_names() -> frozenset[str]:
    """Names a step cannot take: attributes of the compiled module and the reference scopes."""
    attributes = {name for name in dir(PipelineModule) if not name.startswith("_")}
    return frozenset(attributes | {"callbacks", "history", "input", "var", "self"})
