"""The pipeline spec: validate JSON programs and compile them to DSPy modules.

See the README, "Programs". Nothing in a spec can import a module, read a file, reach
the network or evaluate code: tools, rewards and custom classes are named from a
`Registry`, and types are parsed from an allowlist.
"""

from programs.spec.compiler import compile_program
from programs.spec.errors import PipelineRuntimeError, ProgramSpecError, SpecError
from programs.spec.introspect import (
    input_checker,
    program_input_fields,
    program_output_fields,
    validate_inputs,
)
from programs.spec.pipeline import LMFactory, PipelineModule, StepObserver
from programs.spec.registry import Registry, default_registry
from programs.spec.state import StateMismatchError
from programs.spec.types import TypeExprError, parse_type
from programs.spec.validate import normalize_pipeline, validate_program
from programs.spec.variables import resolve_variables

__all__ = [
    "LMFactory",
    "PipelineModule",
    "PipelineRuntimeError",
    "ProgramSpecError",
    "Registry",
    "SpecError",
    "StateMismatchError",
    "StepObserver",
    "TypeExprError",
    "compile_program",
    "default_registry",
    "input_checker",
    "normalize_pipeline",
    "parse_type",
    "program_input_fields",
    "program_output_fields",
    "resolve_variables",
    "validate_inputs",
    "validate_program",
]
