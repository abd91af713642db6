"""How a run was launched: which process is rank 0, and which folder is the run's.

Both questions have to be answered before ``torch.distributed`` exists, because
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
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

#: Rank 0 exports the run directory so the ranks Lightning launches later reuse it; a
#: user may also set it on every node of a multi-node run that no launcher names.
RUN_DIR_ENV = "T7SYNTH_RUN_DIR"


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
        return Launch(
            "slurm", _int(env, "SLURM_PROCID") == 0, _int(env, "SLURM_NTASKS", 1), env.get("SLURM_JOB_ID") or None
        )
    if "TORCHELASTIC_RUN_ID" in env:
        run_id = env.get("TORCHELASTIC_RUN_ID") or None
        # torchrun's default rendezvous id is the literal "none": not a job identity.
        return Launch(
            "torchrun", _int(env, "RANK") == 0, _int(env, "WORLD_SIZE", 1), None if run_id == "none" else run_id
        )
    # Ranks that Lightning launched carry LOCAL_RANK (and NODE_RANK on other nodes of
    # a manually launched multi-node run); the first process carries neither, or 0.
    rank_zero = all(_int(env, name) == 0 for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"))
    return Launch("lightning", rank_zero, 1, None)
