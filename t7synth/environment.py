"""How a run was launched and what it ran on: ranks, run folders, seeds, versions.

Three questions have to be answered before ``torch.distributed`` exists, because
``python -m t7synth.fit`` runs once per rank and the answers must agree:

* **Which process is rank 0?** Under ``--gpus N`` / ``--cpus N`` Lightning starts
  ranks 1..N-1 itself (as children of rank 0, with ``LOCAL_RANK`` set); under SLURM
  (``srun``) and torchrun every rank is started by the launcher, which says so in
  ``SLURM_PROCID`` / ``RANK``. :func:`detect_launch` reads these variables.
* **Which folder is the run's?** When rank 0 starts the others it picks
  ``version_N`` and hands it down in :data:`RUN_DIR_ENV`. When a launcher starts every
  rank at once there is nobody to hand it down, and "the next free ``version_N``" is a
  race between processes on different nodes. The folder is then named after the
  launcher's job: ``slurm_<SLURM_JOB_ID>`` or ``torchrun_<rdzv id>``, which every rank
  reads from its own environment (see :attr:`Launch.run_name`). A requeued SLURM job
  keeps its id, so it finds its own folder again.
* **Which random stream does epoch k use?** :func:`stream_seed` derives it from
  (seed, rank, epoch), so each rank and each epoch draws its own augmentations and an
  epoch's data do not depend on whether the run was resumed before it.

:func:`environment_record` is what ``environment.yaml`` in each run folder holds: the
seed, the launch, library versions and the git revision of the code.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import random
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Rank 0 exports the run directory so the ranks Lightning launches later reuse it; a
#: user may also set it on every node of a multi-node run that no launcher names.
RUN_DIR_ENV = "T7SYNTH_RUN_DIR"

#: Distributions whose versions ``environment.yaml`` records (absent ones are ``null``).
RECORDED_PACKAGES = ("torch", "pytorch-lightning", "torchio", "monai", "numpy", "torchmetrics", "nibabel", "wandb")

# Random streams drawn from one seed; see stream_seed().
STREAM_TRAIN = 0


@dataclass(frozen=True)
class Launch:
    """How this process was started.

    Attributes:
        launcher: ``"slurm"`` (srun started every rank), ``"torchrun"``, or
            ``"lightning"`` (a plain command; Lightning starts any further ranks).
        rank_zero: whether this process is global rank 0 as far as the environment
            tells before ``torch.distributed`` is initialised.
        world_size: processes the launcher started (1 for ``"lightning"``: the ranks
            Lightning adds later are not known yet).
        job_id: the launcher's id for this job (SLURM job id, torchrun rendezvous id),
            or ``None``.
    """

    launcher: str
    rank_zero: bool
    world_size: int
    job_id: str | None

    @property
    def run_name(self) -> str | None:
        """Run-folder name every rank can derive alone, or ``None`` if rank 0 picks it.

        Only for launchers that start several processes at once: a single process (a
        one-task SLURM job, say) numbers its folder ``version_N`` like any local run.
        """
        if self.launcher == "lightning" or self.world_size < 2 or not self.job_id:
            return None
        return f"{self.launcher}_{self.job_id}"


def _int(environ: Mapping[str, str], name: str, default: int = 0) -> int:
    try:
        return int(environ.get(name, default))
    except ValueError:
        return default


def detect_launch(environ: Mapping[str, str] | None = None) -> Launch:
    """Read the launcher's variables (SLURM, torchrun, Lightning's own) into a :class:`Launch`.

    SLURM is detected with Lightning's own rule (``SLURM_NTASKS`` set and the job not
    named ``bash``/``interactive``), so t7synth and the Trainer always agree on whether
    srun started the ranks.

    Args:
        environ: the environment to read; default ``os.environ``.
    """
    env = os.environ if environ is None else environ
    slurm = "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive")
    # Same order as Lightning's cluster-environment detection: SLURM before torchrun.
    if slurm:
        return Launch("slurm", _int(env, "SLURM_PROCID") == 0, _int(env, "SLURM_NTASKS", 1), env.get("SLURM_JOB_ID") or None)
    if "TORCHELASTIC_RUN_ID" in env:
        run_id = env.get("TORCHELASTIC_RUN_ID") or None
        # torchrun's default rendezvous id is the literal "none": not a job identity.
        return Launch("torchrun", _int(env, "RANK") == 0, _int(env, "WORLD_SIZE", 1), None if run_id == "none" else run_id)
    # Ranks that Lightning launched carry LOCAL_RANK (and NODE_RANK on other nodes of
    # a manually launched multi-node run); the first process carries neither, or 0.
    rank_zero = all(_int(env, name) == 0 for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"))
    return Launch("lightning", rank_zero, 1, None)


# -- seeds --------------------------------------------------------------------
def stream_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed for the stream ``keys`` (e.g. rank, epoch) of the run seed ``seed``.

    NumPy's ``SeedSequence`` hashes the whole tuple, so nearby inputs (rank 0 epoch 1
    and rank 1 epoch 0, or seed 1 and seed 2) give unrelated streams, which
    ``seed + rank + epoch`` would not.
    """
    import numpy as np

    words = [int(value) % 2**64 for value in (seed, *keys)]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def seed_all(value: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and CUDA)."""
    import numpy as np
    import torch

    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def training_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of rank ``rank``'s training stream in ``epoch``: augmentation, patch
    positions and order, the Queue's worker seeds and any randomness in the model."""
    return stream_seed(seed, STREAM_TRAIN, rank, epoch)


# -- what ran -------------------------------------------------------------------
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
    package_dir = Path(package_dir) if package_dir else Path(__file__).resolve().parent
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


def environment_record(seed: int, launch: Launch, hardware: Mapping[str, Any], resumed_from: str | None) -> dict[str, Any]:
    """One launch's entry in ``environment.yaml`` (plain types only).

    Args:
        seed: the run seed (``--seed`` / ``seed:``).
        launch: how the process was started.
        hardware: the Trainer's accelerator arguments (see ``fit.trainer_hardware``).
        resumed_from: the checkpoint the launch resumed from, if any.
    """
    import datetime

    import torch

    devices = hardware.get("devices", 1)
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
        "git_revision": git_revision(),
        "versions": package_versions(),
        "cuda": cuda,
    }


def write_environment(run_dir: Path, record: dict[str, Any]) -> Path:
    """Append ``record`` to ``run_dir/environment.yaml`` (``launches:``, oldest first).

    A resumed run adds an entry instead of overwriting, so the file tells which code
    and libraries produced each stretch of training.
    """
    import yaml

    from t7synth.config import save_yaml

    path = run_dir / "environment.yaml"
    launches: list = []
    if path.is_file():
        try:
            launches = list((yaml.safe_load(path.read_text()) or {}).get("launches") or [])
        except (yaml.YAMLError, AttributeError):
            launches = []
    save_yaml({"launches": [*launches, record]}, path)
    return path
