"""Build the DSPy module of each step, and the two small modules DSPy has no equivalent for."""

from collections.abc import Callable
from typing import Any

import dspy

from programs.spec.errors import PipelineRuntimeError, ProgramSpecError, SpecError, join
from programs.spec.plan import Setting, StepPlan
from programs.spec.references import Ref
from programs.spec.registry import Registry, import_dotted
from programs.spec.signatures import build_signature


class Shared:
    """A reference that module copies share instead of deep-copying.

    Optimizers deep-copy programs; a registry or retriever may hold connections or locks
    that cannot (and should not) be copied.
    """

    def __init__(self, value: Any) -> None:
        self.value = value

    def __deepcopy__(self, memo: dict) -> "Shared":
        return self


class RetrieveStep(dspy.Module):
    """Top-k passages of a stored corpus, from the registry's retriever (read at run time)."""

    def __init__(self, step_name: str, registry: Registry) -> None:
        super().__init__()
        self._step_name = step_name
        self._registry = Shared(registry)

    def forward(self, query: str, corpus: str, k: int) -> dspy.Prediction:
        retriever = self._registry.value.retriever
        if retriever is None:
            raise PipelineRuntimeError(
                self._step_name, f"no retriever is configured, so corpus {corpus!r} cannot be searched"
            )
        passages = retriever(corpus, str(query), k)
        return dspy.Prediction(passages=[str(passage) for passage in passages][:k])


class MultiChainStep(dspy.Module):
    """`m` ChainOfThought attempts in one call, then DSPy's MultiChainComparison over them."""

    def __init__(self, signature: type[dspy.Signature], m: int) -> None:
        super().__init__()
        self.m = m
        self.generate = dspy.ChainOfThought(signature)
        self.compare = dspy.MultiChainComparison(signature, M=m)

    def forward(self, **inputs: Any) -> dspy.Prediction:
        attempts = self.generate(**inputs, config={"n": self.m})
        completions = [attempts.completions[index] for index in range(len(attempts.completions))]
        # MultiChainComparison asserts exactly m attempts; a provider that ignores `n` returns
        # fewer, and comparing repeats of what we have beats failing the step.
        completions = [completions[index % len(completions)] for index in range(self.m)]
        return self.compare(completions=completions, **inputs)


def literal_or_default(setting: Setting | None, default: Any = None) -> Any:
    """A setting's literal value, or its declared default when it is a `$var` (resolved per run)."""
    if setting is None:
        return default
    return setting.spec.default if isinstance(setting.value, Ref) else setting.value


def build_step_module(step: StepPlan, registry: Registry) -> dspy.Module:
    module = _BUILDERS[step.module](step, registry)
    if step.demos:
        demo_target(step, module).demos = [dspy.Example(**demo) for demo in step.demos]
    return module


def demo_target(step: StepPlan, module: dspy.Module) -> dspy.Predict:
    """The predictor a step's inline demos belong to."""
    if step.module in ("BestOfN", "Refine"):
        module = module.module
    if step.module == "MultiChainComparison":
        module = module.generate
    return module if isinstance(module, dspy.Predict) else module.predict


def _signature(step: StepPlan) -> type[dspy.Signature]:
    # Validation gives every step of a usable plan a signature (Retrieve's is fixed).
    if step.signature is None:
        raise ValueError(f"step {step.name!r} has no signature; build modules from a validated plan only")
    return build_signature(step.signature, step.instructions)


def _predict(step: StepPlan, registry: Registry) -> dspy.Module:
    return dspy.Predict(_signature(step))


def _chain_of_thought(step: StepPlan, registry: Registry) -> dspy.Module:
    return dspy.ChainOfThought(_signature(step))


def _react(step: StepPlan, registry: Registry) -> dspy.Module:
    tools = [dspy.Tool(registry.tools[name], name=name) for name in step.tools]
    max_iters = literal_or_default(step.options.get("max_iters"), 20)
    return dspy.ReAct(_signature(step), tools=tools, max_iters=max_iters)


def _rewarded(step: StepPlan, registry: Registry) -> dspy.Module:
    base = (dspy.ChainOfThought if step.base == "ChainOfThought" else dspy.Predict)(_signature(step))
    reward = registry.rewards[step.options["reward"].value]
    n = literal_or_default(step.options.get("n"), 3)
    threshold = literal_or_default(step.options.get("threshold"), 1.0)
    wrapper = dspy.Refine if step.module == "Refine" else dspy.BestOfN
    try:
        return wrapper(module=base, N=n, reward_fn=reward, threshold=threshold)
    except (OSError, TypeError):
        # Refine shows the reward's source code to the LM; a reward without retrievable
        # source (a builtin, a C function) gets a plain wrapper instead.
        return wrapper(module=base, N=n, reward_fn=_wrap(reward), threshold=threshold)


def _wrap(reward: Callable[..., float]) -> Callable[..., float]:
    def reward_fn(args: dict, pred: dspy.Prediction) -> float:
        return reward(args, pred)

    return reward_fn


def _multi_chain(step: StepPlan, registry: Registry) -> dspy.Module:
    return MultiChainStep(_signature(step), literal_or_default(step.options.get("m"), 3))


def _retrieve(step: StepPlan, registry: Registry) -> dspy.Module:
    return RetrieveStep(step.name, registry)


def _custom(step: StepPlan, registry: Registry) -> dspy.Module:
    path = join(step.path, "class")
    if step.custom_class not in registry.custom_modules:  # validated already; checked again before importing
        raise ProgramSpecError([SpecError(path, "not an allowed custom module")])
    try:
        cls = import_dotted(step.custom_class)
    except (ImportError, AttributeError) as exc:
        raise ProgramSpecError([SpecError(path, f"allowlisted but cannot be imported: {exc}")]) from exc
    if not (isinstance(cls, type) and issubclass(cls, dspy.Module)):
        raise ProgramSpecError([SpecError(path, "allowlisted but not a dspy.Module subclass")])
    try:
        return cls(signature=_signature(step), **step.custom_options)
    except (TypeError, ValueError) as exc:
        raise ProgramSpecError([SpecError(path, f"could not be constructed: {exc}")]) from exc


_BUILDERS: dict[str, Callable[[StepPlan, Registry], dspy.Module]] = {
    "Predict": _predict,
    "ChainOfThought": _chain_of_thought,
    "ReAct": _react,
    "BestOfN": _rewarded,
    "Refine": _rewarded,
    "MultiChainComparison": _multi_chain,
    "Retrieve": _retrieve,
    "Custom": _custom,
}
