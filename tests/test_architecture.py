"""Architecture contracts: no import cycle between project modules, and the LM path's layers.

Imports inside functions count (grimp reads every import statement of a module, not only the
top-level ones): a cycle hidden behind a function-level import is still a cycle, it only fails
later and further from its cause. Imports under `if TYPE_CHECKING:` do not count: they never run.
The layers are declared in `.importlinter` and drawn in docs/architecture.md.
"""

import configparser
import sys
import textwrap
from pathlib import Path

import grimp
import networkx as nx
import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / ".importlinter"


def root_packages() -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    return parser["importlinter"]["root_packages"].split()


def import_cycles(*packages: str) -> list[list[str]]:
    """One cycle (as `importer (l.N) -> imported` lines) per group of modules that import each
    other, directly or around a loop; empty when the import graph is acyclic."""
    graph = grimp.build_graph(*packages, exclude_type_checking_imports=True, cache_dir=None)
    digraph = nx.DiGraph(
        (module, imported)
        for module in graph.modules
        for imported in graph.find_modules_directly_imported_by(module)
    )
    cycles = []
    for component in sorted((c for c in nx.strongly_connected_components(digraph) if len(c) > 1), key=min):
        edges = nx.find_cycle(digraph.subgraph(component), source=min(component))
        lines = []
        for importer, imported in edges:
            details = graph.get_import_details(importer=importer, imported=imported)
            where = ", ".join(f"l.{d['line_number']}" for d in details)
            lines.append(f"{importer} ({where}) -> {imported}")
        cycles.append([f"{len(component)} modules: {', '.join(sorted(component))}", *lines])
    return cycles


def test_no_import_cycle_between_project_modules() -> None:
    cycles = import_cycles(*root_packages())
    assert not cycles, "import cycles between project modules:\n\n" + "\n\n".join(
        "\n  ".join(cycle) for cycle in cycles
    )


def test_the_import_contracts_hold(capsys: pytest.CaptureFixture[str]) -> None:
    exit_code = lint_imports(config_filename=str(CONFIG), no_cache=True, no_logo=True)
    report = capsys.readouterr().out
    assert exit_code == 0, report


def test_a_cycle_through_a_function_level_import_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check sees what an import inside a function hides (and ignores TYPE_CHECKING ones)."""
    package = tmp_path / "cyclic_sample"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclic_sample import b\n")
    (package / "b.py").write_text(
        textwrap.dedent(
            """
            from typing import TYPE_CHECKING

            if TYPE_CHECKING:
                from cyclic_sample import c


            def later():
                from cyclic_sample import a

                return a
            """
        )
    )
    (package / "c.py").write_text("from cyclic_sample import b\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        [cycle] = import_cycles("cyclic_sample")
    finally:
        sys.modules.pop("cyclic_sample", None)
    assert cycle[0] == "2 modules: cyclic_sample.a, cyclic_sample.b"
    assert "cyclic_sample.b (l.9) -> cyclic_sample.a" in cycle
