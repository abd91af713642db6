"""Refuse a run that would train nothing, before anything is written.

Lightning accepts a training loader with no batch: it prints "No training batches",
skips every epoch and ``fit`` would then report a finished run whose checkpoint and
``progress.png`` never existed. The same silent waste happens when validation is asked
for (``data.val_fraction > 0``) but the split leaves no validation subject: the best
checkpoint (highest ``val/psnr_brain``) is never written. Both follow from numbers
known once the data module is set up, so :func:`check_trains_something` refuses them
there, with the numbers and the key to change. (``trainer.max_epochs`` below 1 is
refused earlier, by :func:`t7synth.config.validate`.)
"""

from __future__ import annotations

from t7synth.data import batches
from t7synth.errors import UserError


def training_batches(config, subjects: list, world: int, accumulate: int) -> int:
    """Training batches (micro-batches) one rank runs per epoch.

    Each rank draws from ``len(subjects) // world`` subjects (the DDP subject sampler
    drops the rest, ``drop_last``) ``data.samples_per_volume`` samples each, or with
    ``data.slab_sampling: every`` one per brain slice (``num_samples``, its epoch
    rounded up to whole batches by the data module); the loader drops an incomplete
    last batch.
    """
    micro = batches.micro_batch(config.data, world, accumulate)
    per_rank = len(subjects) // world
    if per_rank == 0:
        return 0
    if config.geometry.mode == "slab" and config.data.slab_sampling == "every":
        samples = sum(int(s.get("num_samples", 0)) for s in subjects) // world
        return -(-samples // micro)
    return per_rank * config.data.samples_per_volume // micro


def check_trains_something(config, subjects: dict[str, list], world: int, accumulate: int) -> None:
    """Refuse an epoch with no training batch, or validation asked for with no subject.

    Args:
        config: the resolved config.
        subjects: the data module's ``{"train"|"val"|"test": [subject]}`` after setup.
        world: processes in the run.
        accumulate: ``trainer.accumulate_grad_batches`` as resolved for the hardware.

    Raises:
        UserError: one line with the numbers and the keys that change them.
    """
    train = subjects.get("train") or []
    if training_batches(config, train, world, accumulate) == 0:
        micro = batches.micro_batch(config.data, world, accumulate)
        raise UserError(
            f"an epoch would have no training batch: {len(train)} training subject(s) x data.samples_per_volume "
            f"{config.data.samples_per_volume} over {world} process(es) is fewer than the {micro} samples of one "
            f"batch (data.batch_size {config.data.batch_size}); raise data.samples_per_volume or lower "
            "data.batch_size"
        )
    if config.trainer.early_stopping_patience is not None and not subjects.get("val"):
        raise UserError(
            f"trainer.early_stopping_patience {config.trainer.early_stopping_patience} watches val/psnr_brain, but "
            "the split has no validation subject: add validation subjects or unset trainer.early_stopping_patience"
        )
    if config.data.val_fraction > 0 and not subjects.get("val"):
        raise UserError(
            f"data.val_fraction {config.data.val_fraction} asks for validation, but the split has no validation "
            f"subject ({len(train)} training, {len(subjects.get('test') or [])} test): add subjects or a 'val' "
            "row to participants.tsv, or set data.val_fraction=0 to train without validation"
        )
