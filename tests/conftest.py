"""Shared fixtures: tiny paired datasets written as real NIfTI files, and test settings.

Every test that needs data makes its own in ``tmp_path`` (TorchIO's habit), so tests
never depend on a download, on the demo cache or on each other.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import REPO, make_dataset


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root (see :data:`REPO`)."""
    return REPO


# Keep W&B quiet and local unless a test asks otherwise; one thread per process keeps
# two-core machines responsive while DDP tests run two processes.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A 4-subject dataset (2 train, 1 val, 1 test) of 20x24x18 volumes."""
    return make_dataset(tmp_path / "data")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own preprocessing cache, so no test reads another's files."""
    monkeypatch.setenv("T7SYNTH_CACHE", str(tmp_path / "cache"))
