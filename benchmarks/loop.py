"""Lightning's training loop against a hand-written one: same module, batches and precision.

Both train fresh copies of the demo U-Net on the same in-memory demo batches, in the
precision ``make demo`` runs in on this CPU (``auto``: bf16 where the CPU computes it
natively, else fp32): the hand-written loop calls ``training_step``'s parts itself
(net input, forward, the module's losses, backward, Adam); Lightning runs the module's
own ``training_step`` with its logging, under ``Trainer(precision=...)`` the same.
Timed from the first batch's start to the last batch's end (a callback), the first
step excluded from both (warm-up), interleaved over repetitions. Run:
``python benchmarks/loop.py``.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import common
import torch

from t7synth.training.precision import resolve_precision


def _batches(config, count: int) -> list[dict]:
    module = common.demo_datamodule(config)
    batches = []
    for batch in module.train_dataloader():
        batches.append(batch)
        if len(batches) == count:
            return batches
    return batches


def demo_precision() -> str:
    """The precision ``make demo`` trains in on this CPU."""
    return resolve_precision(common.demo_config("unet").trainer.precision, "cpu").precision


def hand_loop(model, batches: list[dict]) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    bf16 = demo_precision().startswith("bf16")
    start = None
    for index, batch in enumerate(batches):
        if index == 1:
            start = time.perf_counter()
        common.train_step(model, optimizer, batch, bf16=bf16)
    return time.perf_counter() - start


def lightning_loop(model, batches: list[dict]) -> float:
    import logging

    import pytorch_lightning as pl

    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # no banner per repetition

    class Clock(pl.Callback):
        start = end = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 1:
                Clock.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            Clock.end = time.perf_counter()

    # Only Adam, as the hand loop (the module's StepLR steps once per epoch anyway).
    model.configure_optimizers = lambda: torch.optim.Adam(model.parameters(), lr=1e-4)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision=demo_precision(),
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[Clock()],
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda batch: batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on workers and logging, not ours to act on
        trainer.fit(model, train_dataloaders=loader)
    return Clock.end - Clock.start


def run(repeats: int = 3, steps: int = 6) -> dict:
    from t7synth import registry

    config = common.demo_config("unet")
    torch.manual_seed(0)
    template = registry.get("unet")(config.to_dict())
    batches = _batches(config, steps)
    timings = common.interleaved(
        {
            "lightning": lambda: lightning_loop(copy.deepcopy(template), batches),
            "hand": lambda: hand_loop(copy.deepcopy(template), batches),
        },
        repeats,
        warmup=False,
    )
    per_step = len(batches) - 1
    return {
        "lightning_s": timings["lightning"].median / per_step,
        "hand_s": timings["hand"].median / per_step,
        "ratio": common.ratio(timings["lightning"], timings["hand"]),
        "ratio_best": timings["lightning"].best / timings["hand"].best,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = run(args.repeats)
    print(
        f"Lightning {result['lightning_s']:.3f} s/step, hand-written {result['hand_s']:.3f} s/step: "
        f"x{result['ratio']:.3f}"
    )


if __name__ == "__main__":
    main()
