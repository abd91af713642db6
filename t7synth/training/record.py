"""What ran: the ``environment.yaml`` entry each launch appends to its run folder.

The seed, the command, the launch, library versions and the git revision of the code.
"""

from __future__ import annotations

import importlib.metadata
import platform
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from t7synth.errors import UserError
from t7synth.run_files import ENVIRONMENT_FILE
from t7synth.textfiles import read_yaml
from t7synth.training.launch import Launch
from t7synth.training.precision import cpu_bf16, cpu_name

#: Distributions whose versions ``environment.yaml`` records (absent ones are ``null``).
RECORDED_PACKAGES = ("torch", "pytorch-lightning", "torchio", "monai", "numpy", "torchmetrics", "nibabel", "wandb")


def package_versions(names: tuple[str, ...] = RECORDED_PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``names`` (distribution names), ``None`` where absent."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_revision(package_dir: str | Path | None = None) -> str | None:
    """The commit the t7synth code was checked out at, or ``None`` outside a checkout.

    Reads ``.git`` directly instead of running ``git``: it works where git is not
    installed and costs no subprocess. Only a ``.git`` beside the package folder
    counts, so an installed copy inside some other repository is not misattributed.
    Worktrees (``.git`` is a file) and packed refs are followed.
    """
    package_dir = Path(package_dir) if package_dir else Path(__file__).resolve().parents[1]
    dot_git = package_dir.parent / ".git"
    try:
        if dot_git.is_file():
            pointer = dot_git.read_text().strip()
            if not pointer.startswith("gitdir:"):
                return None
            git_dir = (dot_git.parent / pointer.split(":", 1)[1].strip()).resolve()
        elif dot_git.is_dir():
            git_dir = dot_git
        else:
            return None
        head = (git_dir / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head or None
        ref = head.split(":", 1)[1].strip()
        common = git_dir
        if (git_dir / "commondir").is_file():
            common = (git_dir / (git_dir / "commondir").read_text().strip()).resolve()
        for folder in dict.fromkeys((git_dir, common)):
            if (folder / ref).is_file():
                return (folder / ref).read_text().strip() or None
            packed = folder / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    parts = line.split()
                    if len(parts) == 2 and parts[1] == ref:
                        return parts[0]
    except OSError:
        return None
    return None


def environment_record(
    seed: int,
    launch: Launch,
    hardware: Mapping[str, Any],
    resumed_from: str | None,
    precision=None,
    batch_plan: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """One launch's entry in ``environment.yaml`` (plain types only).

    Args:
        seed: the run seed (``--seed`` / ``seed:``).
        launch: how the process was started.
        hardware: the Trainer's accelerator arguments (see :func:`t7synth.training.hardware.trainer_hardware`).
        resumed_from: the checkpoint the launch resumed from, if any.
        precision: the :class:`~t7synth.training.precision.PrecisionChoice` of the launch:
            its precision, what was asked for and why, and the CPU's bf16 capability.
        batch_plan: the launch's :class:`~t7synth.data.batches.BatchPlan` as a dict.
    """
    import datetime

    import torch

    devices = hardware.get("devices", 1)
    native, native_bf16 = cpu_bf16()
    nodes = hardware.get("num_nodes", 1)
    cuda = None
    if torch.cuda.is_available():
        cuda = {
            "version": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        }
    return {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seed": int(seed),
        "resumed_from": resumed_from,
        "command": [Path(sys.executable).name, *sys.argv],
        "host": socket.gethostname(),
        "launcher": launch.launcher,
        "job_id": launch.job_id,
        "accelerator": hardware.get("accelerator"),
        "devices_per_node": devices,
        "nodes": nodes,
        "world_size": int(devices) * int(nodes) if isinstance(devices, int) else None,
        "precision": hardware.get("precision"),
        **(precision.record() if precision is not None else {}),
        "cpu": cpu_name(),
        "cpu_bf16": native_bf16 if native else f"none ({native_bf16})",
        "batch_plan": dict(batch_plan) if batch_plan is not None else None,
        "git_revision": git_revision(),
        "versions": package_versions(),
        "cuda": cuda,
    }


def write_environment(run_dir: Path, record: dict[str, Any]) -> Path:
    """Append ``record`` to ``run_dir/environment.yaml`` (``launches:``, oldest first).

    A resumed run adds an entry instead of overwriting, so the file tells which code
    and libraries produced each stretch of training.
    """
    from t7synth.config import save_yaml

    path = run_dir / ENVIRONMENT_FILE
    launches: list = []
    if path.is_file():
        try:  # a damaged record is started afresh: it describes, it decides nothing
            launches = list((read_yaml(path) or {}).get("launches") or [])
        except (UserError, AttributeError, TypeError):
            launches = []
    save_yaml({"launches": [*launches, record]}, path)
    return path
