"""Losses beyond L1: the paper's perceptual term.

The paper trains with ``L1 + 0.01 × P``, where ``P`` is MONAI-Generative's 2D
``PerceptualLoss(spatial_dims=2, network_type="radimagenet_resnet50")``
(``generative/losses/perceptual.py``, ``RadImageNetPerceptualSimilarity``), which
fetches Warvito's Keras-converted RadImageNet ResNet-50 from torch.hub. Here the same
formula runs on weights from a file the user names (``loss.perceptual_weights``;
:func:`t7synth.nets.features.load_resnet` reads the Keras, torchvision and MONAI key
layouts). Without that file a positive weight is a config error: a silently skipped
term would make results look reproduced when they are not.

The feature network is always in eval mode (frozen BatchNorm statistics) and gradients
flow through it to the generator, unlike the reference V-Net code whose perceptual term
ran under ``no_grad`` (Cui et al., MICCAI 2024; abbasilab/Synthetic_7T_MRI).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from t7synth.errors import UserError
from t7synth.nets.features import load_resnet, normalised_feature_distance

#: Per-channel means RadImageNet subtracts from BGR inputs in [0, 1]: MONAI-Generative's
#: ``subtract_mean`` (the Keras "caffe" preprocessing means 103.939, 116.779, 123.68 on
#: the 0-255 scale, there given as 0.406, 0.456, 0.485).
RADIMAGENET_BGR_MEAN = (0.406, 0.456, 0.485)


class PerceptualLoss(nn.Module):
    """MONAI-Generative's RadImageNet ResNet-50 perceptual loss for 2D slices.

    For (B, 1, H, W) prediction ``x`` and target ``y`` (MONAI-Generative,
    ``RadImageNetPerceptualSimilarity.forward`` and ``PerceptualLoss.forward``):

    1. repeat the channel to 3, reorder RGB → BGR and subtract
       :data:`RADIMAGENET_BGR_MEAN` per channel;
    2. take the output of the last ResNet stage (``layer4``, after its final ReLU);
    3. divide each feature vector by its L2 norm over channels (+ 1e-10);
    4. sum the squared differences over channels, average over space, then over the
       batch.

    This value is what the paper's ``perceptual_weight 0.01`` multiplied, so
    ``loss.perceptual: 0.01`` means what it meant there. It is computed in fp32 with
    autocast off (the reference trained in fp32 throughout).

    Args:
        weights: a ResNet-50 state dict in the Keras-converted RadImageNet,
            torchvision or MONAI layout (see :mod:`t7synth.nets.features`).
    """

    def __init__(self, weights: str | Path):
        super().__init__()
        self.features = load_resnet(
            weights,
            "config key loss.perceptual_weights",
            spatial_dims=2,
            kind="a 2D ResNet state dict (e.g. RadImageNet ResNet-50)",
        )
        self.register_buffer("mean", torch.tensor(RADIMAGENET_BGR_MEAN).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        # Frozen features: BatchNorm must keep its pretrained statistics even while the
        # LightningModule that uses this loss is in training mode.
        return super().train(False)

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        """Step 1: grey → 3 channels, RGB → BGR, RadImageNet's mean subtracted."""
        if image.ndim != 4 or image.shape[1] not in (1, 3):
            raise ValueError(f"the perceptual loss takes (B, 1 or 3, H, W) slices, got {tuple(image.shape)}")
        image = image.float()
        if image.shape[1] == 1:
            image = image.repeat(1, 3, 1, 1)
        return image[:, [2, 1, 0]] - self.mean.to(image.device)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
        with torch.autocast(device_type=prediction.device.type, enabled=False):
            distance = normalised_feature_distance(
                self.features(self.prepare(prediction)), self.features(self.prepare(target))
            )
        return distance.mean()


def build_perceptual(weight: float, weights_path: str | None) -> PerceptualLoss | None:
    """The perceptual loss when ``weight > 0``; a clear error if no weights file is set."""
    if weight <= 0:
        return None
    if not weights_path:
        raise UserError(
            f"config key loss.perceptual is {weight} but loss.perceptual_weights is not set: give the path of a "
            "ResNet-50 state dict (e.g. RadImageNet) with --set loss.perceptual_weights=PATH, or --set "
            "loss.perceptual=0"
        )
    return PerceptualLoss(weights_path)
