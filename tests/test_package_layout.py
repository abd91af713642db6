"""The package's shape: thin commands, no command imported by the library, no cycles.

Imports are read from the source (every ``import``/``from`` statement, also those inside
functions, plus the model modules ``registry`` imports by name), so a cycle hidden behind a
lazy import or ``importlib`` counts as much as one at the top of a file.
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
    graph = _modules()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
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
