"""Training augmentation: random, per load, and cheap (TorchIO transforms).

Spatial transforms act on source, target and mask together so the pair stays
aligned; intensity transforms act on the source only (``include=["source"]``) so the
network learns to undo them rather than to copy them. Preprocessing is not here: it
is deterministic and cached (``preprocess.py``).
"""

from __future__ import annotations

import torchio as tio

from t7synth.config import AugmentConfig


def build_augmentation(config: AugmentConfig):
    """A ``tio.Compose`` of the enabled augmentations, or ``None`` if all are off."""

    transforms = []
    if config.flip > 0:
        # Axis 0 is left-right in RAS+; brains are roughly symmetric along it only.
        transforms.append(tio.RandomFlip(axes=(0,), flip_probability=config.flip))
    if config.affine_degrees > 0 or config.affine_scale > 0:
        transforms.append(
            tio.RandomAffine(
                scales=config.affine_scale,
                degrees=config.affine_degrees,
                image_interpolation="linear",
                label_interpolation="nearest",
                default_pad_value=0,
            )
        )
    if config.gamma > 0:
        transforms.append(tio.RandomGamma(log_gamma=config.gamma, include=["source"]))
    if config.noise > 0:
        transforms.append(tio.RandomNoise(std=(0, config.noise), include=["source"]))
    return tio.Compose(transforms) if transforms else None
