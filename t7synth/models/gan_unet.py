"""``gan_unet``: the paper's U-Net generator trained against a 2D PatchGAN discriminator.

Everything the plain U-Net does (geometry, conditioning, L1 + perceptual, whole-volume
scoring) is inherited; this variant only adds the discriminator, the adversarial and
gradient-penalty terms, and the alternating update schedule, which needs Lightning's
manual optimisation (two optimisers stepped at different rates).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import PatchDiscriminator
from torch import nn

from t7synth.config import deep_merge
from t7synth.errors import UserError
from t7synth.models.unet import UNetModule
from t7synth.nets.layers import NORMS, norm_spec


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast switched off on ``device``; nothing to switch off where autocast does not exist.

    ``torch.autocast`` raises for device types it has no autocast for, such as the meta
    device on which ``training.memory`` runs the training losses for its shapes-only
    estimate; there the context is skipped (on the CPU and CUDA it is entered as before).
    """
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


class GANUNetModule(UNetModule):
    """The GAN U-Net of Gicquel et al. (arXiv:2507.13782, §3.2).

    Generator: the conditioned 2.5D U-Net (:class:`~t7synth.models.unet.UNetModule`);
    the published GAN generator has attention at the bottleneck level only (222.3M
    parameters, ``experiments/paper_gan_unet.yaml``). Discriminator: MONAI's 2D
    ``PatchDiscriminator``, unconditional, on the real or synthetic 7T slice alone
    (``model.discriminator: {channels, num_layers, norm}``). Its forward returns every
    intermediate feature map; the last is the patch logit map.

    Losses (``loss.*`` weights; BCE on logits, i.e. MONAI's ``PatchAdversarialLoss``
    with ``criterion="bce"`` computed stably):

    * generator: ``l1 · L1 + perceptual · P + w · BCE(D(G(x)), real)``, where
      ``w = loss.adversarial`` except in epoch 0, where it is ``loss.adversarial / 10``
      (a warm-up: the untrained discriminator's verdicts are noise);
    * discriminator: ``loss.adversarial · [(BCE(D(fake), fake) + BCE(D(real), real)) / 2
      + loss.gradient_penalty · GP]``, with the WGAN-GP penalty
      ``E[(‖∇D(x̂)‖₂ − 1)²]`` on random interpolates ``x̂`` of real and fake slices.

    Schedule, in the official order (``func/training/LoadingModel.py``): on every batch
    the discriminator steps first, on fakes the generator makes without gradients;
    then, on every ``optim.generator_every``-th batch (``n_crit``, 5: batches 4, 9,
    14, …) and on every batch of epoch 0, the generator makes the fakes again with
    gradients and steps against the discriminator just updated. Both optimisers are
    Adam (G: ``optim.lr``/``betas``; D: ``optim.d_lr``/``d_betas``) with the same
    per-epoch StepLR, stepped here at the end of each training epoch (manual
    optimisation leaves schedulers to the module); both optimisers and both schedulers
    are in the checkpoint, so ``--resume`` restores them.

    Note that ``trainer.global_step`` counts optimiser steps, so it advances by two on
    batches where both networks step: limits and checkpoints are epoch-based for that
    reason. :attr:`generator_steps` and :attr:`discriminator_steps` count each network's
    updates (and are saved in checkpoints).

    Under DDP one wrapper spans both networks and each backward pass leaves the other
    network's parameters unused, hence ``FIND_UNUSED_PARAMETERS``; the discriminator
    uses instance norm by default because DDP's buffer broadcast of BatchNorm running
    statistics between the two backward passes breaks autograd (MONAI
    GenerativeModels#352).
    """

    DEFAULTS = deep_merge(
        UNetModule.DEFAULTS,
        {
            # MONAI-Generative's PatchDiscriminator defaults (24 channels, 3 layers),
            # with instance instead of batch norm (see the class docstring).
            "model": {"discriminator": {"channels": 24, "num_layers": 3, "norm": "instance"}},
            "loss": {"adversarial": 0.1, "gradient_penalty": 10.0},
            "optim": {"step_gamma": 0.9, "d_lr": 2e-4, "d_betas": [0.0, 0.9], "generator_every": 5},
        },
    )
    FIND_UNUSED_PARAMETERS = True

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        # Two optimisers stepped at different rates: Lightning cannot schedule that.
        self.automatic_optimization = False
        self.discriminator = self.build_discriminator()
        self.generator_steps = 0
        self.discriminator_steps = 0

    def build_discriminator(self) -> nn.Module:
        """MONAI's 2D PatchGAN on single 7T slices, from ``model.discriminator``."""

        options = dict(self.config.model.discriminator)
        valid = ("channels", "num_layers", "norm")
        for key in options:
            if key not in valid:
                raise UserError(f"unknown config key 'model.discriminator.{key}'; valid keys: {', '.join(valid)}")
        norm = str(options.get("norm", "instance")).lower()
        if norm not in NORMS:
            # Instance norm is affine (nets.layers), so the parameter count matches the
            # BatchNorm discriminator of the reference code.
            raise UserError(f"config key model.discriminator.norm must be one of {', '.join(NORMS)}, got {norm!r}")
        channels, layers = options.get("channels", 24), options.get("num_layers", 3)
        if not (isinstance(channels, int) and channels > 0 and isinstance(layers, int) and layers > 0):
            raise UserError(
                f"model.discriminator.channels and num_layers must be positive integers, got {channels}, {layers}"
            )
        return PatchDiscriminator(
            spatial_dims=2, in_channels=1, channels=channels, num_layers_d=layers, norm=norm_spec(norm)
        )

    # -- losses -----------------------------------------------------------------
    def adversarial_weight(self) -> float:
        """``loss.adversarial``, divided by 10 in epoch 0 (the paper's warm-up)."""
        weight = self.config.loss.adversarial
        return weight / 10 if self.current_epoch == 0 else weight

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """The discriminator's patch logits for (B, 1, H, W) slices, in fp32."""
        return self.discriminator(image)[-1].float()

    @staticmethod
    def bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
        """Patch-averaged BCE against an all-real or all-fake label map."""
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 1.0 if real else 0.0))

    def gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """WGAN-GP: ``E[(‖∇ₓ D(x̂)‖₂ − 1)²]`` on per-sample random mixes of real and fake.

        Computed in fp32 with autocast off: the penalty differentiates through the
        discriminator twice (``create_graph=True``), and bf16 gradients of gradients
        are too coarse to hold a norm near 1.
        """
        with autocast_off(real.device):
            real, fake = real.detach().float(), fake.detach().float()
            alpha = torch.rand(real.shape[0], *([1] * (real.ndim - 1)), device=real.device)
            mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
            logits = self.discriminator(mixed)[-1].float()
            (grad,) = torch.autograd.grad(logits, mixed, grad_outputs=torch.ones_like(logits), create_graph=True)
            # The epsilon keeps the norm's gradient finite where a gradient is exactly 0.
            norm = torch.sqrt(grad.flatten(1).square().sum(dim=1) + 1e-12)
            return ((norm - 1) ** 2).mean()

    def generator_losses(self, fake: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The generator's loss (``g_loss``) and its parts, scored by the discriminator as it is.

        ``loss`` is the reconstruction part alone (L1 + perceptual); the caller freezes the
        discriminator (``toggled_optimizer``) so that ``g_loss``'s backward reaches the
        generator only. ``training.memory`` runs this same method for its estimate.
        """
        losses = self.reconstruction_losses(fake, target, mask)
        adversarial = self.bce(self.logits(fake.float()), real=True)
        losses["g_loss"] = losses["loss"] + self.adversarial_weight() * adversarial
        losses["adversarial"] = adversarial
        return losses

    def discriminator_losses(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """The discriminator's loss (``d_loss``) and its parts, for detached fakes
        (``training.memory`` runs this same method for its estimate)."""
        loss_config = self.config.loss
        real_logits, fake_logits = self.logits(real), self.logits(fake.detach())
        bce = (self.bce(fake_logits, real=False) + self.bce(real_logits, real=True)) / 2
        gp = self.gradient_penalty(real, fake) if loss_config.gradient_penalty > 0 else bce.new_zeros(())
        return {
            "d_loss": loss_config.adversarial * (bce + loss_config.gradient_penalty * gp),
            "d_bce": bce,
            "gp": gp,
            "d_real": torch.sigmoid(real_logits).mean().detach(),
            "d_fake": torch.sigmoid(fake_logits).mean().detach(),
        }

    # -- training ---------------------------------------------------------------
    def generator_due(self, batch_idx: int) -> bool:
        """Whether the generator steps after the discriminator on this batch: always in
        epoch 0, else on every n-th (``not (step + 1) % n_crit`` in the official code)."""
        return self.current_epoch == 0 or (batch_idx + 1) % max(1, self.config.optim.generator_every) == 0

    def _step(self, optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad()
        self.manual_backward(loss)
        clip = self.config.optim.gradient_clip
        if clip > 0:
            # Trainer(gradient_clip_val) is refused under manual optimisation.
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        optimizer.step()

    def training_step(self, batch: dict, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        x, context = self.net_input(batch)
        target, mask = self.net_view(batch["target"]).float(), self.net_view(batch["mask"])
        size = x.shape[0]
        logged: dict[str, torch.Tensor] = {}

        # The discriminator first, on fakes made without a graph (the official code
        # runs the generator and detaches).
        with torch.no_grad():
            fake = self(x, context)
        with self.toggled_optimizer(opt_d):
            d_losses = self.discriminator_losses(target, fake.float())
            self._step(opt_d, d_losses["d_loss"])
        self.discriminator_steps += 1
        logged.update({name: value.detach() for name, value in d_losses.items()})

        if self.generator_due(batch_idx):
            # A second generator pass, with gradients, scored by the updated
            # discriminator. Toggling freezes the discriminator, so the adversarial
            # term's backward reaches the generator only.
            with self.toggled_optimizer(opt_g):
                fake = self(x, context)
                losses = self.generator_losses(fake, target, mask)
                self._step(opt_g, losses["g_loss"])
            self.generator_steps += 1
            logged.update({name: value.detach() for name, value in losses.items() if name != "loss"})
        else:
            logged["l1"] = self.reconstruction_losses(fake, target, mask, perceptual=False)["l1"]

        for name, value in logged.items():
            self.log(f"train/{name}", value, prog_bar=name in ("g_loss", "d_loss"), batch_size=size)

    def on_train_epoch_end(self) -> None:
        # Manual optimisation: Lightning does not step the schedulers itself.
        for scheduler in self.lr_schedulers():
            scheduler.step()

    def configure_optimizers(self):
        optim = self.config.optim
        generator = super().configure_optimizers()
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=optim.d_lr, betas=tuple(optim.d_betas))
        sched_d = torch.optim.lr_scheduler.StepLR(opt_d, step_size=optim.step_every, gamma=optim.step_gamma)
        return [generator["optimizer"], opt_d], [generator["lr_scheduler"]["scheduler"], sched_d]

    # -- checkpoints ------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["gan_steps"] = {"generator": self.generator_steps, "discriminator": self.discriminator_steps}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        steps = checkpoint.get("gan_steps", {})
        self.generator_steps = int(steps.get("generator", 0))
        self.discriminator_steps = int(steps.get("discriminator", 0))
