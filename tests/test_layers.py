"""kiln's modules form layers: a module imports its own package or lower layers, never a higher
one, and no chain of imports comes back to where it started. Read from the source (every import
statement, including those inside functions), so the test cannot pass by accident."""

from __future__ import annotations

import ast
import statistics
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# A unit is a top-level module or package of kiln; a unit may import only units of a lower rank
# (and its own modules). Peers of one rank never import each other.
RANKS = {
    "kiln": 0,  # the package root: re-exports lazily, imports nothing itself
    "kiln.errors": 0,
    "kiln.files": 0,
    "kiln.extras": 1,  # which optional extras are installed, and how to install them
    "kiln.metrics": 0,
    "kiln.config": 1,
    "kiln.data": 2,
    "kiln.models": 2,
    "kiln.runtime": 3,
    "kiln.run": 4,  # what a run is, for either trainer: state, run dir, logger, schedule, model/
    "kiln.keras": 5,  # the Keras trainer
    "kiln.evaluate": 5,  # `kiln eval`
    "kiln.predict": 5,  # `kiln predict`: batch scoring of files through the runtime
    "kiln.train": 6,  # the torch loop, and the framework switch above both trainers
    "kiln.export": 6,
    "kiln.bench": 6,
    "kiln.serve": 6,
    "kiln.deploy": 6,  # deployment files, from what export, triton and bench wrote in a run
    "kiln.torchserve": 6,  # a TorchServe model archive (.mar) and its handler, over runtime
    "kiln.report": 6,  # `kiln report`: one HTML page from what every stage wrote in a run
    "kiln.cli": 7,
    "kiln.__main__": 8,
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "kiln").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(module: str, path: Path) -> set[str]:
    """The kiln modules that ``module`` imports, anywhere in its source."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m == "kiln" or m.startswith("kiln.")}


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _unit(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def test_every_module_belongs_to_a_known_layer() -> None:
    assert sorted({_unit(m) for m in MODULES} - set(RANKS)) == []


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Each import of a higher layer or of a peer unit."""
    return sorted(
        f"{module} imports {target}"
        for module, targets in graph.items() for target in targets
        if _unit(target) != _unit(module) and RANKS[_unit(target)] >= RANKS[_unit(module)])


def import_circles(graph: dict[str, set[str]]) -> list[str]:
    """Each chain of imports that comes back to a module on it."""
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return circles


def test_no_module_imports_a_higher_layer_or_a_peer() -> None:
    assert layer_violations(GRAPH) == []


def test_there_is_no_import_circle() -> None:
    assert import_circles(GRAPH) == []


def test_the_checks_catch_what_they_look_for() -> None:
    graph = {"kiln.runtime.load": {"kiln.export.pipeline"}, "kiln.serve.app": {"kiln.train.loop"},
             "kiln.export.pipeline": {"kiln.export.parity"},
             "kiln.export.parity": {"kiln.export.pipeline"}, "kiln.train.loop": {"kiln.config"}}
    assert layer_violations(graph) == ["kiln.runtime.load imports kiln.export.pipeline",
                                       "kiln.serve.app imports kiln.train.loop"]
    assert import_circles(graph) == [
        "kiln.export.parity -> kiln.export.pipeline -> kiln.export.parity"]
    assert "kiln.config" in GRAPH["kiln.cli.common"]  # the real graph is read from the source


def test_functions_are_short() -> None:
    """No function in src/ over 80 lines; the median at or under 10."""
    lengths, long = [], []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                lengths.append(length)
                if length > 80:
                    long.append(f"{module}.{node.name}: {length} lines")
    assert long == []
    assert statistics.median(lengths) <= 10
