"""Losses beyond L1: the perceptual term (and, for the GAN, the gradient penalty).

The paper's perceptual term is MONAI-Generative's ``PerceptualLoss`` with RadImageNet
ResNet-50 features, which MONAI fetches from torch.hub at construction. No registry
ships those weights and many clusters have no internet, so here the same kind of
LPIPS-style distance is computed on a frozen ResNet-50 (MONAI's ``resnet50``) whose
weights are loaded from a file the user names. Without that file a positive weight is
a config error: a silently skipped term would make results look reproduced when they
are not. The feature network is always in eval mode (frozen BatchNorm statistics) and
gradients flow through it to the generator, unlike the reference V-Net code whose
perceptual term ran under ``no_grad`` (``reference/baselines.md`` §7).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from t7synth.errors import UserError
from t7synth.nets.features import load_feature_weights


class PerceptualLoss(nn.Module):
    """LPIPS-style distance between 2D slices on frozen ResNet-50 features.

    Each (B, 1, H, W) slice is repeated to 3 channels, passed through the stem and the
    four residual stages, and the channel-normalised features of prediction and
    target are compared by mean squared difference, summed over stages.

    Args:
        weights: path of a ResNet-50 state dict in torchvision's key layout
            (``conv1``, ``bn1``, ``layer1``…``layer4``, optional ``fc``), e.g. RadImageNet.
    """

    def __init__(self, weights: str | Path):
        super().__init__()
        from monai.networks.nets import resnet50

        net = resnet50(spatial_dims=2, n_input_channels=3, conv1_t_size=7, conv1_t_stride=2, num_classes=1)
        load_feature_weights(net, weights, "config key loss.perceptual_weights", "a ResNet-50 state dict")
        self.stem = nn.Sequential(net.conv1, net.bn1, net.act, net.maxpool)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> PerceptualLoss:
        # Frozen features: BatchNorm must keep its pretrained statistics even while the
        # LightningModule that owns this loss is in training mode.
        return super().train(False)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = prediction.float().repeat(1, 3, 1, 1)
        y = target.float().repeat(1, 3, 1, 1)
        x, y = self.stem(x), self.stem(y)
        loss = prediction.new_zeros((), dtype=torch.float32)
        for stage in self.stages:
            x, y = stage(x), stage(y)
            loss = loss + torch.mean((_unit(x) - _unit(y)) ** 2)
        return loss


def _unit(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def build_perceptual(weight: float, weights_path: str | None) -> PerceptualLoss | None:
    """The perceptual loss when ``weight > 0``; a clear error if no weights file is set."""
    if weight <= 0:
        return None
    if not weights_path:
        raise UserError(
            f"config key loss.perceptual is {weight} but loss.perceptual_weights is not set: give the path of a "
            "ResNet-50 state dict (e.g. RadImageNet) with --set loss.perceptual_weights=PATH, or --set loss.perceptual=0"
        )
    return PerceptualLoss(weights_path)
