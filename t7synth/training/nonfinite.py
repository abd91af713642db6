"""Skip optimiser steps whose loss or gradients are not finite; stop a run that keeps
producing them.

A single NaN or infinite gradient written into Adam's moment estimates poisons every
later step, so one bad batch (an overflow under bf16 or fp16, a degenerate slab, a
discriminator that saturates) would silently end a long GPU run with NaN weights and a
NaN ``last.ckpt``. The guard checks the gradients every optimiser step, after the
backward pass and before the step (Lightning's ``on_before_optimizer_step``, which runs
for automatic and manual optimisation alike, so both of the GAN's optimisers are
covered). A non-finite loss gives non-finite gradients, so one check covers both.

* A bad step is skipped: the gradients are dropped (``grad = None``), and torch's
  optimisers leave parameters without a gradient, and their moment estimates, as they
  were. Under DDP the gradients are already all-reduced, so every rank skips the same
  step. Under ``16-mixed`` the gradient scaler already skips overflowing steps and
  calibrates its scale with them, so the guard only counts there.
* Skipped steps are counted per epoch as ``train/skipped_steps`` in ``metrics.csv`` and
  on W&B.
* After ``trainer.nonfinite_patience`` bad steps in a row the run stops (Lightning's
  ``should_stop``: the epoch ends, ``last.ckpt`` is written from the last good weights)
  and ``fit`` ends with one ``error:`` line naming the step (:meth:`NonFiniteGuard.check`).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from t7synth.errors import UserError
from t7synth.run_files import CHECKPOINTS_DIR, LAST_CHECKPOINT, SKIPPED_STEPS


class NonFiniteGuard(pl.Callback):
    """Skip and count optimiser steps with non-finite gradients; stop after ``patience`` in a row.

    Args:
        patience: bad steps in a row after which the run stops (``trainer.nonfinite_patience``).
    """

    def __init__(self, patience: int):
        self.patience = int(patience)
        self.in_a_row = 0
        self.epoch_skipped = 0
        self.stopped_at: str | None = None
        self._batch_idx = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epoch_skipped = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        # One reduction and one host sync per step: a norm is non-finite iff an element is.
        if bool(torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum())):
            self.in_a_row = 0
            return
        if not str(trainer.precision).startswith("16"):
            for group in optimizer.param_groups:
                for parameter in group["params"]:
                    parameter.grad = None
        self.epoch_skipped += 1
        self.in_a_row += 1
        if self.in_a_row >= self.patience and self.stopped_at is None:
            self.stopped_at = (
                f"step {trainer.global_step} (epoch {trainer.current_epoch}, batch {self._batch_idx}, "
                f"optimiser {_optimizer_index(trainer, optimizer)})"
            )
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pl_module.log(SKIPPED_STEPS, float(self.epoch_skipped), on_step=False, on_epoch=True, reduce_fx="max")

    def check(self) -> None:
        """Raise the run's one-line error if the guard stopped it.

        Raises:
            UserError: naming the step, the patience and what usually helps.
        """
        if self.stopped_at is not None:
            raise UserError(
                f"training stopped at {self.stopped_at}: {self.patience} optimiser steps in a row had a non-finite "
                "loss or gradient and were skipped (trainer.nonfinite_patience); "
                f"{CHECKPOINTS_DIR}/{LAST_CHECKPOINT} holds the "
                "last finite weights. Lower optim.lr, set optim.gradient_clip, or try --precision 32-true"
            )


def _optimizer_index(trainer, optimizer) -> int:
    """The position of ``optimizer`` among the trainer's (the GAN: 0 generator, 1 discriminator)."""
    for index, candidate in enumerate(trainer.optimizers):
        if candidate is optimizer or getattr(optimizer, "optimizer", None) is candidate:
            return index
    return 0
