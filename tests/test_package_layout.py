"""The package's shape: thin commands, layers that only point down, no cycles.

Imports are read from the source (every ``import``/``from`` statement, also those inside
functions, plus the model modules ``registry`` imports by name), so an upward import or a
cycle hidden behind a lazy import or ``importlib`` counts as much as one at the top of a file.
"""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from helpers import REPO

PACKAGE = REPO / "t7synth"
COMMANDS = ("fit", "predict", "evaluate", "compare", "sweep", "prepare", "demo", "convert", "export", "montage")
MAX_COMMAND_LINES = 120

#: The layer table of docs/architecture.md, lowest first. A module may import only from
#: its own layer or a lower one; within a layer the package-level graph must stay acyclic.
#: A top-level module is its own "package" (``t7synth.config`` -> ``config``), a module in
#: a stage package belongs to the package (``t7synth.data.volumes`` -> ``data``).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("t7synth", "errors", "files", "textfiles", "cli"),
    ("config", "scores", "statistics"),
    ("run_files", "plotting"),
    ("data", "nets"),
    ("measures",),
    ("models",),
    ("registry",),
    ("training",),
    ("inference",),
    ("evaluation",),
    ("tuning",),
    COMMANDS,
)


def _module_name(path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, set[str]]:
    """``{module: the t7synth modules it imports}`` for every module of the package."""
    from t7synth import registry

    names = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        edges: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                    )
                # "from t7synth.data import naming" imports the module t7synth.data.naming.
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in names else base for alias in node.names]
            else:
                continue
            edges.update(t for t in targets if t in names and t != name)
        graph[name] = edges
    graph["t7synth.registry"] |= {spec.split(":")[0] for spec in registry.MODELS.values()}
    return graph


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _layer(module: str) -> int:
    package = _package(module)
    for number, members in enumerate(LAYERS):
        if package in members:
            return number
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS (and docs/architecture.md)")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``"a -> b"`` for every import of ``b`` by ``a`` where ``b``'s layer is above ``a``'s."""
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if _layer(target) > _layer(module)
    )


def package_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles of the package-level graph (``data -> config`` for ``data.layout -> config``)."""
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        packages.setdefault(_package(module), set()).update(_package(t) for t in targets)
    for package, targets in packages.items():
        targets.discard(package)
    return _cycles(packages)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_every_module_has_a_layer():
    for module in _modules():
        _layer(module)


def test_layers_only_point_down():
    offenders = upward_imports(_modules())
    assert not offenders, "imports from a higher layer: " + "; ".join(offenders)


def test_the_layer_check_sees_lazy_and_registry_imports():
    # The checker itself: a lazy import inside a function, and a registry importlib target, count.
    graph = _modules()
    assert "t7synth.models.unet" in graph["t7synth.registry"]
    assert upward_imports({"t7synth.models.base": {"t7synth.training.loggers"}}) == [
        "t7synth.models.base -> t7synth.training.loggers"
    ]
    assert package_cycles({"t7synth.data.a": {"t7synth.config"}, "t7synth.config": {"t7synth.data.a"}})


def test_package_graph_has_no_cycle():
    cycles = package_cycles(_modules())
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)


def test_commands_are_thin():
    for name in COMMANDS:
        path = PACKAGE / f"{name}.py"
        if path.exists():
            assert len(path.read_text().splitlines()) <= MAX_COMMAND_LINES, (
                f"{path.name} holds logic: move it to its stage's package"
            )


def test_no_library_module_imports_a_command():
    commands = {f"t7synth.{name}" for name in COMMANDS}
    offenders = {
        module: sorted(edges & commands)
        for module, edges in _modules().items()
        if module not in commands and edges & commands
    }
    assert not offenders


def test_no_import_cycles():
    cycles = _cycles(_modules())
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)


def test_nets_do_not_import_the_framework():
    for module, edges in _modules().items():
        if module.startswith("t7synth.nets"):
            assert not {
                e for e in edges if e.startswith(("t7synth.training", "t7synth.models", "t7synth.evaluation"))
            }, module
    for path in (PACKAGE / "nets").glob("*.py"):
        assert "pytorch_lightning" not in path.read_text(), path.name


@pytest.mark.parametrize("command", [c for c in COMMANDS if (PACKAGE / f"{c}.py").exists()])
def test_importing_a_command_is_cheap(command):
    # A command's --help must answer at once: no torch, Lightning or MONAI at import time.
    code = (
        f"import sys, t7synth.{command}; print(sorted(m for m in ('torch', 'pytorch_lightning', 'monai', "
        "'torchio') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
