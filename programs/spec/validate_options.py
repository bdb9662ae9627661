"""Validation of step settings: LM settings, module options, tools, bases and custom classes."""

from typing import Any

from programs.spec.catalog import BASES, ModuleKind
from programs.spec.errors import Errors, join, join_key, listing, show
from programs.spec.options import KIND_NAMES, OptionSpec, check_option
from programs.spec.plan import ProgramPlan, Setting, StepPlan
from programs.spec.references import Ref, is_identifier, is_reference, literal
from programs.spec.registry import Registry
from programs.spec.validate_refs import parse_ref_or_error

MAX_TOOLS = 20
MAX_OPTIONS = 50


class OptionChecks:
    """Mixin of the analyzer (validate.py) for settings; adds errors and returns what is valid."""

    errors: Errors
    registry: Registry | None
    plan: ProgramPlan
    declared_names: set[str]

    def _module_options(self, path: str, raw: dict, kind: ModuleKind) -> dict[str, Setting]:
        options = {}
        for key, spec in kind.options.items():
            if key in raw:
                setting = self._setting(raw[key], join(path, key), spec)
                if setting is not None:
                    options[key] = setting
            elif spec.required:
                self.errors.add(join(path, key), f"required for {kind.name} steps")
            else:
                options[key] = Setting(join(path, key), spec, spec.default)
        reward = options.get("reward")
        if reward is not None and self.registry is not None and reward.value not in self.registry.rewards:
            available = listing(self.registry.rewards)
            self.errors.add(reward.path, f"unknown reward {show(reward.value)} (available: {available})")
        return options

    def _settings(self, raw: Any, path: str, table: dict[str, OptionSpec]) -> dict[str, Setting]:
        if not isinstance(raw, dict):
            self.errors.add(path, "must be an object")
            return {}
        settings = {}
        for key, value in raw.items():
            if key not in table:
                self.errors.add(join_key(path, key), f"unknown setting (allowed: {', '.join(table)})")
                continue
            setting = self._setting(value, join(path, key), table[key])
            if setting is not None:
                settings[key] = setting
        return settings

    def _setting(self, value: Any, path: str, spec: OptionSpec) -> Setting | None:
        if not is_reference(value):
            problem = check_option(spec, literal(value))
            if problem:
                self.errors.add(path, problem)
                return None
            return Setting(path, spec, literal(value))
        ref = parse_ref_or_error(value, path, self.errors)
        if ref is None:
            return None
        if not spec.var:
            self.errors.add(
                path, "must be a literal value here (it shapes the compiled module), not a reference"
            )
            return None
        if ref.scope != "var":
            self.errors.add(path, "only $var.<name> references are allowed in settings")
            return None
        return Setting(path, spec, ref) if self._check_var_use(ref, path, spec) else None

    def _check_var_use(self, ref: Ref, path: str, spec: OptionSpec) -> bool:
        decl = self.plan.variables.get(ref.name)
        if decl is None:
            if ref.name not in self.declared_names:  # declared but invalid: already reported there
                self.errors.add(path, f"undeclared variable {show(ref.name)}")
            return False
        if spec.kind not in decl.kinds:
            self.errors.add(
                path,
                f"variable {show(ref.name)} is of type {decl.type} but this needs {KIND_NAMES[spec.kind]}",
            )
            return False
        for value in decl.choices or (decl.default,):
            problem = check_option(spec, value)
            if problem:
                self.errors.add(
                    path, f"variable {show(ref.name)} allows a value that does not fit here: {problem}"
                )
                return False
        return True

    def _check_special(self, step: StepPlan, raw: dict, kind: ModuleKind) -> None:
        if "tools" in kind.special:
            step.tools = self._tools(raw, step.path)
        if "base" in kind.special:
            step.base = self._base(raw, step.path)
        if "class" in kind.special:
            step.custom_class = self._custom_class(raw, step.path)
            step.custom_options = self._custom_options(raw, step.path)

    def _tools(self, raw: dict, path: str) -> tuple[str, ...]:
        tools, tools_path = raw.get("tools"), join(path, "tools")
        if not isinstance(tools, list) or not 1 <= len(tools) <= MAX_TOOLS:
            self.errors.add(tools_path, f"must be a list of 1 to {MAX_TOOLS} tool names")
            return ()
        names: list[str] = []
        for index, name in enumerate(tools):
            problem = self._tool_problem(name, names)
            if problem:
                self.errors.add(join(tools_path, index), problem)
            else:
                names.append(name)
        return tuple(names)

    def _tool_problem(self, name: Any, seen: list[str]) -> str | None:
        if not isinstance(name, str):
            return "a tool name must be a string"
        if name == "finish":
            return "'finish' is ReAct's own tool and cannot be listed"
        if name in seen:
            return f"tool {show(name)} is listed twice"
        if self.registry is not None and name not in self.registry.tools:
            return f"unknown tool {show(name)} (available: {listing(self.registry.tools)})"
        return None

    def _base(self, raw: dict, path: str) -> str:
        base = raw.get("base", "Predict")
        if base not in BASES:
            self.errors.add(join(path, "base"), f"must be one of {', '.join(BASES)}")
            return "Predict"
        return base

    def _custom_class(self, raw: dict, path: str) -> str | None:
        value, class_path = raw.get("class"), join(path, "class")
        if not isinstance(value, str) or not value:
            self.errors.add(class_path, "required: the dotted path of an allowlisted module class")
            return None
        if self.registry is not None and value not in self.registry.custom_modules:
            allowed = listing(self.registry.custom_modules)
            self.errors.add(class_path, f"{show(value)} is not an allowed custom module (allowed: {allowed})")
            return None
        return value

    def _custom_options(self, raw: dict, path: str) -> dict[str, Any]:
        options, options_path = raw.get("options", {}), join(path, "options")
        if not isinstance(options, dict) or len(options) > MAX_OPTIONS:
            self.errors.add(options_path, f"must be an object with at most {MAX_OPTIONS} keys")
            return {}
        bad = [key for key in options if not is_identifier(key)]
        for key in bad:
            self.errors.add(join_key(options_path, key), "option names must be identifiers")
        return {} if bad else dict(options)
