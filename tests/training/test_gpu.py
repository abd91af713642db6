"""On a CUDA GPU: bf16-mixed by default, fp32 losses, and NCCL DDP when there are two.

Skipped without a GPU (``-m gpu`` selects them). The CPU suite covers the same code
paths with gloo and fp32; these check what only a GPU can: the precision plugin's
autocast, and the NCCL backend.
"""

from __future__ import annotations

import ddp_helpers
import pytest
import pytorch_lightning as pl
import torch
from helpers import TINY_UNET

from t7synth import fit
from t7synth.cli import run_main
from t7synth.training.precision import resolve_precision

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


class Probe(pl.Callback):
    """Record the precision the Trainer ran with, and what the training step returned."""

    def __init__(self):
        self.seen: dict = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        with trainer.precision_plugin.forward_context():
            x, context = pl_module.net_input(batch)
            prediction = pl_module(x, context)
        self.seen = {
            "precision": trainer.precision,
            "device": next(pl_module.parameters()).device.type,
            "loss_dtype": loss.dtype,
            "net_dtype": prediction.dtype,
        }


def test_one_gpu_fast_dev_run_uses_bf16_with_fp32_losses(dataset, tmp_path):
    probe = Probe()
    sets = [x for item in TINY_UNET for x in ("--set", item)]
    argv = ["--model", "unet", "--data", str(dataset), "--set", f"runs_dir={tmp_path / 'runs'}", *sets]
    argv += ["--gpus", "1", "--fast-dev-run", "--wandb", "disabled"]
    assert run_main(lambda a: fit.main(a, callbacks=[probe]), argv) == 0
    expected = resolve_precision("auto", "cuda").precision
    assert probe.seen["precision"] == expected and probe.seen["device"] == "cuda"
    assert probe.seen["net_dtype"] == (torch.bfloat16 if expected == "bf16-mixed" else torch.float16)
    assert probe.seen["loss_dtype"] == torch.float32  # losses are computed in fp32


@pytest.mark.ddp
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_gpus_train_in_sync_over_nccl(tmp_path):
    from helpers import make_dataset

    data = make_dataset(tmp_path / "data", n_subjects=6)
    record = tmp_path / "record"
    args = ddp_helpers.fit_args(data, tmp_path / "runs", "--gpus", "2", "--max-epochs", "1")
    ddp_helpers.run(args, ddp_helpers.environment(record, tmp_path / "cache"), tmp_path / "gpu.log")
    first, second = ddp_helpers.weights(record, 0), ddp_helpers.weights(record, 1)
    for name in first:
        assert torch.equal(first[name], second[name]), name
