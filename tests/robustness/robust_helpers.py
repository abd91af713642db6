"""What every bad-input case asserts, and the hostile files the cases are made of.

A user's mistake must end a command with exit status 2, exactly one ``error:`` line on
stderr, no traceback and no partial output: :func:`assert_refused` checks the first
three and :func:`snapshot` the last (every file under a folder, hidden ones included,
with its size and modification time, so a file created, removed or rewritten shows).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from t7synth.cli import USER_ERROR_EXIT


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def assert_refused(status: int, err: str, *expected: str) -> str:
    """Exit 2, one ``error:`` line containing every ``expected`` text, no traceback."""
    lines = error_lines(err)
    assert status == USER_ERROR_EXIT, f"exit status {status}\n{err[-3000:]}"
    assert len(lines) == 1, f"expected one error line, got {lines}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of everything under ``folder`` (hidden included)."""
    if not folder.exists():
        return {}
    found = {}
    for path in sorted(folder.rglob("*")):
        stat = path.lstat()
        found[str(path.relative_to(folder))] = (stat.st_size if path.is_file() else -1, stat.st_mtime_ns)
    return found


class OpensAFile:
    """Unpickled by a full unpickler, this creates ``marker`` (``builtins.open``): code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def malicious_checkpoint(path: Path, marker: Path, like: dict | None = None) -> Path:
    """A torch file shaped like a t7synth checkpoint whose pickle would create ``marker``."""
    checkpoint = dict(like or {"state_dict": {}, "hyper_parameters": {"config": {}}})
    checkpoint["payload"] = OpensAFile(marker)
    torch.save(checkpoint, path)
    return path


def truncated_copy(source: Path, path: Path, fraction: float = 0.5) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def dead_pid() -> int:
    """A process id that no process has right now (a killed command's)."""
    pid = 999_999
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1
