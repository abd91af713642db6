"""What every t7synth model shares: batches → net inputs, losses, whole-volume scoring.

A model is a :class:`SynthesisModule` subclass that builds its network
(:meth:`SynthesisModule.build_net`) and declares its configuration defaults
(``DEFAULTS``: geometry, losses, optimiser, a demo-sized net). Everything else, from
turning a slab into channels to scoring whole volumes against both baselines, lives
here once, so the four models' numbers are comparable by construction. The module
writes and draws nothing: each validation/test step returns what it scored, and
training's callbacks (:class:`t7synth.training.callbacks.Montages`,
:class:`t7synth.training.callbacks.TestScores`) draw the montages and spectra and write
``test_scores.csv``. A variant overrides one method (nnU-Net's trainer variants).

Metric keys are namespaced: ``train/loss``, ``val/psnr_brain``, ``test/ssim`` for the
model, ``val/identity/...`` and ``val/lut/...`` for the identity baseline (the 3T input
scored as the prediction) and the intensity-mapping baseline.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from t7synth.config import Config
from t7synth.data import batches
from t7synth.data.intensity_lut import DEFAULT_BINS, apply_lut
from t7synth.data.profile import empty_profile, uniform_histogram
from t7synth.errors import UserError
from t7synth.measures.structure import StructureScorer
from t7synth.measures.subject import subject_rows
from t7synth.models.buffers import LATER_BUFFERS, complete_state_dict
from t7synth.models.losses import build_perceptual
from t7synth.models.tiling import predict_volume
from t7synth.scores import (
    HEADLINE,
    MODEL,
    REFERENCES,
    ROW_KINDS,
    metric_key,
    score_names,
    sort_rows,
)


def build_net(net_class: type, kwargs: dict[str, Any], **fixed: Any) -> nn.Module:
    """Instantiate ``net_class`` from config ``model.net``, checking the keys first.

    Args:
        net_class: the ``nn.Module`` class.
        kwargs: ``model.net`` from the config.
        fixed: arguments the model decides (e.g. ``in_channels`` from the geometry);
            setting them in the config as well is an error.
    """
    valid = [name for name in inspect.signature(net_class).parameters if name not in fixed]
    for key in kwargs:
        if key not in valid:
            raise UserError(
                f"unknown config key 'model.net.{key}' for {net_class.__name__}; valid keys: {', '.join(valid)}"
            )
    try:
        return net_class(**kwargs, **fixed)
    except (TypeError, ValueError, AssertionError) as error:
        raise UserError(f"config key model.net: {error}") from None


def one_cycle(total: int, warmup: float = 0.3, start: float = 1 / 25, end: float = 1 / 2.5e5):
    """The one-cycle multiplier of the peak learning rate at each step of ``total``.

    ``OneCycleLR(pct_start=0.3, div_factor=25, final_div_factor=1e4, anneal_strategy="cos")``:
    cosine from ``start`` to 1 over ``warmup * total`` steps, cosine from 1 to ``end``
    over the rest, ``end`` past ``total``.
    """

    rise = max(1.0, warmup * total - 1)
    fall = max(1.0, total - 1 - rise)

    def cosine(low: float, high: float, fraction: float) -> float:
        return high + (low - high) * (1 + math.cos(math.pi * fraction)) / 2

    def factor(step: int) -> float:
        if step <= rise:
            return cosine(start, 1.0, step / rise)
        return cosine(1.0, end, min(1.0, (step - rise) / fall))

    return factor


def _fill_later_buffers(state_dict, prefix, *_args) -> None:
    """``load_state_dict`` pre-hook: give a state dict without a :data:`LATER_BUFFERS` entry its default."""
    for name, make in LATER_BUFFERS.items():
        if prefix + name not in state_dict:
            state_dict[prefix + name] = make()


class SynthesisModule(pl.LightningModule):
    """Base LightningModule for 3T → 7T synthesis.

    Args:
        config: the resolved experiment config as a plain dict (``Config.to_dict()``);
            it is saved in every checkpoint, so a checkpoint alone rebuilds the model.

    Attributes:
        lut: (bins,) buffer, the intensity-mapping baseline fitted on the training
            subjects; copied from the data module when training starts and saved in
            checkpoints so ``predict`` and ``evaluate`` can report it.
        voxel_size: (3,) buffer, the training data's voxel size in mm (0 until fitted).
        train_age: () buffer, the training subjects' median age in years (0 when
            unknown); ``predict --unconditioned`` feeds it to a conditioned net for a
            scan whose age is not known, instead of guessing.
        input_profile, intensity_histogram: buffers, what the training inputs looked
            like (:mod:`t7synth.data.profile`; ``fitted`` 0 until fitted). Checkpoints
            written before they existed load with the "not fitted" values
            (:meth:`complete_state_dict`).
    """

    #: Layered over the dataclass defaults before the experiment file (see config.py).
    DEFAULTS: dict[str, Any] = {}
    #: DDP must look for unused parameters only where some are unused by design (GAN).
    FIND_UNUSED_PARAMETERS = False

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.config = Config.from_dict(config)
        self.geometry = self.config.geometry
        self.net = self.build_net()
        self.register_buffer("lut", torch.linspace(0, 1, DEFAULT_BINS))
        # Voxel size (mm) of the training data, so predict can resample new scans to it.
        self.register_buffer("voxel_size", torch.zeros(3))
        self.register_buffer("train_age", torch.zeros(()))
        # Checkpoints and packages written before train_age existed still load (as 0).
        self._register_load_state_dict_pre_hook(_fill_later_buffers)
        # What the training inputs looked like (preprocessing, brain volumes, intensity
        # histogram: data/profile.py), so predict can warn about and QC a new scan.
        self.register_buffer("input_profile", empty_profile())
        self.register_buffer("intensity_histogram", uniform_histogram())
        self._perceptual = None
        self._baseline_scores: dict[tuple[str, str], dict[str, float]] = {}
        self._rows: list[dict[str, Any]] = []
        self.test_rows: list[dict[str, Any]] = []

    @classmethod
    def complete_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state_dict`` with the buffers added after it was written set to "unknown"
        (:data:`~t7synth.models.buffers.LATER_BUFFERS`)."""
        return complete_state_dict(state_dict)

    # -- to override ------------------------------------------------------------
    def build_net(self) -> nn.Module:
        """Build the network from ``self.config.model.net`` and the geometry."""
        raise NotImplementedError

    def generator(self) -> nn.Module:
        """The network that synthesises images (what ``--summary`` counts)."""
        return self.net

    def uses_context(self) -> bool:
        """Whether the net takes (age, sex, slice position) tokens."""
        return False

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x)

    # -- batches → net --------------------------------------------------------
    def net_input(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The net's input and, for conditioned nets, its (B, 3, 1) context tokens."""
        geometry = self.geometry
        if geometry.mode != "slab":
            return batch["source"], None
        x = batches.slab_to_channels(batch["source"], geometry.axis)
        if not self.uses_context():
            return x, None
        centre = batch["location"][:, geometry.axis] + geometry.slices // 2
        # model.position_divisor: the authors divided by 244, not by the volume's 242 slices.
        divisor = self.config.model.position_divisor
        n_slices = batch["n_slices"] if divisor is None else torch.full_like(batch["n_slices"], float(divisor))
        position = batches.slice_position(centre, batch["brain_mid"], n_slices)
        context = torch.stack([batch["age"].float(), batch["sex"].float(), position.to(batch["age"].device)], dim=1)
        return x, context[..., None].to(x.dtype)

    def net_view(self, volume: torch.Tensor) -> torch.Tensor:
        """A target-like tensor (target or mask) in the layout of the net's output."""
        geometry = self.geometry
        if geometry.mode != "slab":
            return volume
        if geometry.target == "center":
            return batches.centre_slice(volume, geometry.axis)
        return batches.slab_to_channels(volume, geometry.axis)

    # -- training ---------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "fit" and self._perceptual is None:
            # Kept out of the module tree: assigning an nn.Module attribute registers a
            # submodule, which would put the frozen feature weights in every checkpoint
            # (and make them unloadable by predict, which builds no loss). Writing
            # __dict__ directly bypasses nn.Module.__setattr__.
            self.__dict__["_perceptual"] = build_perceptual(
                self.config.loss.perceptual, self.config.loss.perceptual_weights
            )

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and getattr(datamodule, "lut", None) is not None:
            self.lut.copy_(datamodule.lut.to(self.lut.device))
            self.voxel_size.copy_(torch.as_tensor(datamodule.voxel_size, dtype=torch.float32))
            self.train_age.fill_(float(getattr(datamodule, "median_age", 0.0) or 0.0))
            if getattr(datamodule, "input_profile", None) is not None:
                self.input_profile.copy_(datamodule.input_profile.to(self.input_profile.device))
                self.intensity_histogram.copy_(datamodule.intensity_histogram.to(self.intensity_histogram.device))

    def reconstruction_losses(
        self, prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, perceptual: bool = True
    ) -> dict[str, torch.Tensor]:
        """L1 (optionally inside the brain) plus the weighted perceptual term, in fp32.

        ``perceptual=False`` skips the perceptual network (for logging the L1 alone)."""
        loss_config = self.config.loss
        prediction = prediction.float()
        target = target.float()
        error = torch.abs(prediction - target)
        if loss_config.l1_in_mask:
            inside = (mask > 0).float()
            l1 = (error * inside).sum() / inside.sum().clamp(min=1)
        else:
            l1 = error.mean()
        losses = {"l1": l1, "loss": loss_config.l1 * l1}
        if perceptual and self._perceptual is not None:
            perceptual_net = self._perceptual.to(prediction.device)
            centre = prediction.shape[1] // 2
            perceptual = perceptual_net(prediction[:, centre : centre + 1], target[:, centre : centre + 1])
            losses["perceptual"] = perceptual
            losses["loss"] = losses["loss"] + loss_config.perceptual * perceptual
        return losses

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, context = self.net_input(batch)
        prediction = self(x, context)
        losses = self.reconstruction_losses(prediction, self.net_view(batch["target"]), self.net_view(batch["mask"]))
        size = x.shape[0]
        for name, value in losses.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=size)
        return losses["loss"]

    def configure_optimizers(self):
        optim = self.config.optim
        optimizer = torch.optim.Adam(
            self.generator().parameters(), lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay
        )
        return {"optimizer": optimizer, "lr_scheduler": self.lr_schedule(optimizer)}

    def lr_schedule(self, optimizer) -> dict:
        """``optim.schedule``'s scheduler for ``optimizer``, as Lightning's ``lr_scheduler`` entry.

        * ``step``: StepLR, ``optim.lr`` times ``optim.step_gamma`` every
          ``optim.step_every`` epochs.
        * ``onecycle``: the one-cycle policy (Smith & Topin 2019, "Super-convergence"),
          stepped every optimiser step: ``optim.lr / 25`` rising to ``optim.lr`` over
          the first 30% of the run's steps, then annealed to ``optim.lr / 2.5e5``, both
          along half cosines (``torch.optim.lr_scheduler.OneCycleLR``'s defaults and
          formula). Written as a ``LambdaLR`` that holds the final rate past the planned
          step count: OneCycleLR raises there, and an epoch of ``slab_sampling: every``
          may be a batch longer than Lightning's estimate.
        """
        optim = self.config.optim
        if optim.schedule == "step":
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=optim.step_every, gamma=optim.step_gamma)
            return {"scheduler": scheduler, "interval": "epoch"}
        if not self.automatic_optimization:
            raise UserError(
                f"config key optim.schedule onecycle needs automatic optimisation; {self.config.model.name} steps "
                "its optimisers itself: use step"
            )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, one_cycle(total)), "interval": "step"}

    # -- whole volumes ----------------------------------------------------------
    def predict_subject(
        self, source: torch.Tensor, meta: dict[str, float], mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Synthesise a whole preprocessed (1, I, J, K) volume; float32, on the CPU.

        Args:
            source: the 3T volume in [0, 1].
            meta: ``age``, ``sex``, ``brain_mid``, ``n_slices`` (context tokens).
            mask: brain mask; the prediction is zeroed outside it, as the target is,
                and windows that write nothing inside it are skipped (:func:`predict_volume`).
        """

        def predict(patch: torch.Tensor, location: torch.Tensor) -> torch.Tensor:
            size = patch.shape[0]
            batch = {"source": patch.to(self.device), "location": location.to(self.device)}
            batch.update(
                {key: torch.full((size,), float(meta[key]), device=self.device) for key in batches.SUBJECT_KEYS}
            )
            x, context = self.net_input(batch)
            return self(x, context)

        return predict_volume(predict, source, self.geometry, self.config.data.inference_batch_size, mask)

    def _score_batch(self, batch: dict, stage: str) -> dict[str, Any]:
        """Score one subject; returns what was scored (``subject``, the ``source``,
        ``prediction``, ``target`` and ``mask`` volumes and the model's ``row``) for the
        callbacks that draw it."""
        subject = batch["subject"][0]
        source, target, mask = batch["source"][0], batch["target"][0], batch["mask"][0]
        meta = {key: float(batch[key][0]) for key in batches.SUBJECT_KEYS}
        prediction = self.predict_subject(source, meta, mask)
        # The structure scores (tissue segmentation, sharpness) take seconds a volume:
        # the test runs them once, validation keeps to the cheap intensity scores.
        structure = StructureScorer(target, mask) if stage == "test" else None
        # The references of a subject are scored once per stage and reused every validation.
        keys = {b: (b, subject, stage == "test") for b in REFERENCES}
        known = {b: self._baseline_scores[key] for b, key in keys.items() if key in self._baseline_scores}
        guesses: dict[str, torch.Tensor | None] = {MODEL: prediction}
        for baseline in REFERENCES:
            if baseline in known:
                guesses[baseline] = None
            else:
                guesses[baseline] = source if baseline == "identity" else apply_lut(self.lut, source, mask)
        rows = subject_rows(subject, guesses, target, mask, structure, known=known)
        for scored in rows[1:]:
            self._baseline_scores[keys[scored["model"]]] = {
                k: v for k, v in scored.items() if k not in ("model", "subject")
            }
        self._rows.extend(rows)
        return {
            "subject": subject,
            "source": source,
            "prediction": prediction,
            "target": target,
            "mask": mask,
            "row": rows[0],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The epoch whose weights a test scores: the trainer's own counter says how
        # many epochs the fit ran, not which epoch best.ckpt was saved at.
        self._checkpoint_epoch = checkpoint.get("epoch")

    def scored_epoch(self) -> int:
        """The epoch (0-based, as in the validation montages and ``metrics.csv``) whose
        weights a test scores: the checkpoint's, or without one the last epoch's."""
        if self.trainer.ckpt_path and getattr(self, "_checkpoint_epoch", None) is not None:
            return int(self._checkpoint_epoch)
        return max(self.current_epoch - 1, 0)

    def scored_weights(self) -> str:
        """Which weights a test scores, for titles: ``checkpoint best.ckpt (epoch 12)``."""
        if self.trainer.ckpt_path and getattr(self, "_checkpoint_epoch", None) is not None:
            return f"checkpoint {Path(self.trainer.ckpt_path).name} (epoch {self.scored_epoch()})"
        return f"final weights (epoch {self.scored_epoch()})"

    def validation_step(self, batch: dict, batch_idx: int) -> dict[str, Any]:
        return self._score_batch(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> dict[str, Any]:
        return self._score_batch(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_means("val", self._gather_rows())

    def on_test_epoch_end(self) -> None:
        rows = self._gather_rows()
        self._log_means("test", rows)
        # The test's place on epoch axes (metrics.csv, W&B's test/* series): the epoch
        # of the weights scored; Lightning would put the trainer's epoch count there.
        self.log("epoch", float(self.scored_epoch()), sync_dist=False)
        # Written to test_scores.csv and drawn as spectra by training.callbacks.TestScores.
        self.test_rows = rows

    def _gather_rows(self) -> list[dict[str, Any]]:
        """Every rank's score rows, on every rank, one per (model, subject).

        Under DDP the data module pads the shorter validation/test shards with repeats
        (so every rank reaches this gather); a repeat scores the same volume with the
        same weights, so keeping the first row per (model, subject) loses nothing.
        """
        rows, self._rows = self._rows, []
        if self.trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        unique = {(row["model"], row["subject"]): row for row in reversed(rows)}
        return sort_rows(unique.values())

    def _log_means(self, stage: str, rows: list[dict[str, Any]]) -> None:
        # Every rank holds the gathered rows, so each logs the same mean: no sync needed.
        for kind in ROW_KINDS:
            selected = [r for r in rows if r["model"] == kind]
            if not selected:
                continue
            for name in score_names(selected):
                value = sum(r[name] for r in selected) / len(selected)
                self.log(
                    metric_key(stage, kind, name), value, prog_bar=(kind == MODEL and name == HEADLINE), sync_dist=False
                )
