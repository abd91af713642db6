"""``python -m t7synth.fit`` plus a recording callback, for the multi-process tests.

Run as a script (``python ddp_fit_script.py <fit arguments>``). Under ``--cpus 2``
Lightning relaunches the script itself (``sys.argv[0]``) for rank 1, so the callback
is present in every rank, exactly as ``python -m t7synth.fit`` is re-run per rank.

Environment variables:

* ``T7SYNTH_TEST_RECORD``: folder for ``rank<r>.json`` (per epoch: the subjects this
  rank trained on, its batch count, a checksum of each batch, the validation metrics
  it saw), ``initial_rank<r>.pt`` (the rank's parameters when training starts) and,
  at the end of training, ``weights_rank<r>.pt`` (the rank's own copy of every
  parameter).
* ``T7SYNTH_TEST_HOLD_AT_STEP``: after the batch that brings ``global_step`` to this
  value, write ``held_rank<r>`` and sleep, so the test can SIGKILL the job mid-epoch at
  a known point (a real crash, not an exception Lightning could handle).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from t7synth import fit
from t7synth.cli import run_main


class Recorder(pl.Callback):
    """Write what this rank saw to ``T7SYNTH_TEST_RECORD`` as it happens."""

    def __init__(self, folder: Path, hold_at: int | None):
        self.folder = folder
        self.hold_at = hold_at
        self.epochs: dict[str, dict] = {}

    def _epoch(self, trainer) -> dict:
        return self.epochs.setdefault(str(trainer.current_epoch), {"subjects": [], "batches": 0, "sums": [], "val": {}})

    def _flush(self, trainer) -> None:
        path = self.folder / f"rank{trainer.global_rank}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"world_size": trainer.world_size, "epochs": self.epochs}))
        os.replace(tmp, path)

    def on_train_start(self, trainer, pl_module) -> None:
        path = self.folder / f"initial_rank{trainer.global_rank}.pt"
        if not path.exists():
            torch.save(_weights(pl_module), path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        record = self._epoch(trainer)
        record["subjects"].extend(batch["subject"])
        record["batches"] += 1
        # Identifies the exact samples (positions, augmentation) without storing them.
        record["sums"].append([float(batch[key].double().sum()) for key in ("source", "target")])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.hold_at is not None and trainer.global_step >= self.hold_at:
            self._flush(trainer)
            (self.folder / f"held_rank{trainer.global_rank}").write_text(str(trainer.global_step))
            while True:  # wait for SIGKILL
                time.sleep(1)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self._epoch(trainer)["val"] = metrics
        self._flush(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._flush(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._flush(trainer)
        torch.save(_weights(pl_module), self.folder / f"weights_rank{trainer.global_rank}.pt")


def _weights(module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in module.named_parameters()}


def main() -> int:
    folder = Path(os.environ["T7SYNTH_TEST_RECORD"])
    folder.mkdir(parents=True, exist_ok=True)
    hold = os.environ.get("T7SYNTH_TEST_HOLD_AT_STEP")
    recorder = Recorder(folder, int(hold) if hold else None)
    return run_main(lambda argv: fit.main(argv, callbacks=[recorder]), sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
