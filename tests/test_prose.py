"""Prose that stays true: every Sphinx cross-reference in the package resolves, and no
doc or comment cites a file that is not in the repository."""

from __future__ import annotations

import importlib
import re
import subprocess

from helpers import REPO

PACKAGE = REPO / "t7synth"
#: ``:mod:`t7synth.x```, ``:func:`~t7synth.x.f```, ``:meth:`Class.method``` ...
REFERENCE = re.compile(r":(mod|func|class|meth|data|attr|exc|obj):`~?([A-Za-z_][\w.]*)`")
#: Files that are not part of the repository (design notes and papers kept beside it).
OUTSIDE = re.compile(
    r"(?<![\w-])(paper|baselines|ecosystem|env-measurements)\.md|DESIGN\.md|\.\./shared\b|(?<![\w.-])shared/"
)


def _module_name(path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _chain(target, names) -> bool:
    try:
        for name in names:
            target = getattr(target, name)
    except AttributeError:
        return False
    return True


def _resolve(dotted: str, home, source: str = "") -> bool:
    """Whether ``dotted`` names something: from the package root, else from ``home`` (the
    module the reference is written in: its names, its classes' members, the instance
    attributes its code assigns to ``self``), else as a module of another library."""
    parts = dotted.split(".")
    if parts[0] == "t7synth":
        for cut in range(len(parts), 0, -1):
            try:
                target = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for name in parts[cut:]:
                    target = getattr(target, name)
            except AttributeError:
                return False
            return True
        return False
    if _chain(home, parts):
        return True
    classes = [v for v in vars(home).values() if isinstance(v, type) and v.__module__ == home.__name__]
    if any(_chain(cls, parts) for cls in classes):
        return True
    if len(parts) <= 2 and re.search(rf"self\.{re.escape(parts[-1])}\b\s*(:[^=]*)?=", source):
        return True
    try:  # another library's object (torch.nn.Module, ...): its module must import
        importlib.import_module(parts[0])
        return parts[0] not in ("t7synth",)
    except ImportError:
        return False


def unresolved_references() -> list[str]:
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        home = importlib.import_module(_module_name(path))
        source = path.read_text()
        for number, line in enumerate(source.splitlines(), 1):
            for _, dotted in REFERENCE.findall(line):
                if not _resolve(dotted, home, source):
                    missing.append(f"{path.relative_to(REPO)}:{number}: {dotted}")
    return missing


def test_every_cross_reference_resolves():
    missing = unresolved_references()
    assert not missing, "\n".join(missing)


def test_the_resolver_tells_a_dead_reference_from_a_live_one():
    home = importlib.import_module("t7synth.scores")
    assert _resolve("t7synth.scores.write_rows", home) and _resolve("write_rows", home)
    assert not _resolve("t7synth.environment.RUN_DIR_ENV", home) and not _resolve("no_such_function", home)


def test_no_doc_or_comment_cites_a_file_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    offenders = []
    for name in tracked.splitlines():
        path = REPO / name
        if name == "tests/test_prose.py" or not path.is_file() or path.suffix in (".png", ".gz", ".zip", ".pt"):
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        offenders += [f"{name}:{n}" for n, line in enumerate(text.splitlines(), 1) if OUTSIDE.search(line)]
    assert not offenders, "\n".join(offenders)
