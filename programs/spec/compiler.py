"""Compile a validated pipeline spec into a PipelineModule."""

from typing import Any

from programs.spec.errors import ProgramSpecError
from programs.spec.pipeline import PipelineModule
from programs.spec.registry import Registry, default_registry
from programs.spec.steps import build_step_module
from programs.spec.validate import analyze


def compile_program(pipeline: Any, variables: Any, registry: Registry | None = None) -> PipelineModule:
    """Validate and build the program's DSPy modules; raise ProgramSpecError listing every error.

    Compiling imports nothing named by the spec except an allowlisted Custom class, and
    costs a few milliseconds per step (DSPy builds a pydantic model per signature).
    """
    registry = registry or default_registry()
    plan, errors = analyze(pipeline, variables, registry)
    if errors:
        raise ProgramSpecError(errors)
    modules = {step.name: build_step_module(step, registry) for step in plan.steps}
    return PipelineModule(plan, modules, registry)
