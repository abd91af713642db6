"""The W&B step of a run's history rows, continued across ``fit --resume``, online and offline.

W&B keeps a run's history in order of its step (``_step``) and drops a row whose step
is not above the last one it holds ("steps must be monotonically increasing", the
rule forking and rewinding are documented under). Left to itself the step counts
``wandb.log`` calls from 0 in every process: online, a resumed run (``resume="allow"``)
starts after the server's last step; offline there is no server, the resumed process
writes a new ``.wandb`` file for the same run id whose steps start at 0 again
(wandb/wandb#4624, wandb/wandb PR 11144), and ``wandb sync`` then drops every resumed
row up to the old run's last step: the resumed epochs and the test could vanish.

So t7synth numbers the rows itself and passes each ``wandb.log`` an explicit step:

* the step where a checkpoint was taken travels in the checkpoint
  (:class:`WandbStepState`, a stateful callback), so a resumed run continues there;
* the run folder's :data:`WANDB_STEP_FILE` holds the highest step written so far, so
  rows that the interrupted attempt logged after its checkpoint (W&B cannot delete
  them offline; rewinding a run is a private preview) are followed, not overwritten
  and dropped;
* online, the server's own next step (``run.step`` after a resume) is a floor too.

The resumed run starts at the largest of the three: its steps continue those already
written, strictly increasing, in one run id. Nothing here imports W&B.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from t7synth.run_files import WANDB_STEP_FILE


def written_step(run_dir: Path) -> int | None:
    """The highest W&B step written for the run in ``run_dir``, ``None`` if none (or unreadable)."""
    try:
        return int((Path(run_dir) / WANDB_STEP_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


class StepCounter:
    """The next W&B step of a run: started past every floor, one per ``wandb.log`` call.

    Args:
        run_dir: the run folder (holds :data:`WANDB_STEP_FILE`).
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self._checkpoint_step = 0
        self._next: int | None = None

    def resume_at(self, step: int) -> None:
        """The W&B step stored with the checkpoint a resumed run starts from."""
        self._checkpoint_step = max(0, int(step))

    @property
    def next(self) -> int:
        """The step the next row gets (before any row: the checkpoint's, 0 for a new run)."""
        return self._next if self._next is not None else self._checkpoint_step

    def take(self, run: Any) -> int:
        """The step for the row logged now; records it in the run folder."""
        if self._next is None:
            written = written_step(self.run_dir)
            floors = [self._checkpoint_step, int(getattr(run, "step", 0) or 0)]
            if written is not None:
                floors.append(written + 1)
            self._next = max(floors)
        step = self._next
        self._next += 1
        # Plain write, no fsync: it must survive the process being killed, not the machine.
        (self.run_dir / WANDB_STEP_FILE).write_text(f"{step}\n")
        return step


class WandbStepState(pl.Callback):
    """Stores the W&B step in every checkpoint and hands it back to a resumed run's counter."""

    def __init__(self, counter: StepCounter | None):
        self.counter = counter

    @classmethod
    def of(cls, loggers) -> WandbStepState:
        """The callback for ``loggers``: the W&B logger's counter, or none (W&B off; the state is stored anyway)."""
        return cls(
            next((logger.steps for logger in loggers if isinstance(getattr(logger, "steps", None), StepCounter)), None)
        )

    def state_dict(self) -> dict[str, Any]:
        return {"wandb_step": self.counter.next if self.counter is not None else 0}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.counter is not None:
            self.counter.resume_at(int(state_dict.get("wandb_step", 0)))
