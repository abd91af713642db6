"""A 3D perceptual distance on MedicalNet features, from a local weights file."""

from __future__ import annotations

from pathlib import Path

import torch

from t7synth.nets.features import load_resnet, normalised_feature_distance


class MedicalNetDistance:
    """The authors' 3D perceptual distance on MedicalNet features.

    The authors scored test volumes with MONAI-Generative's
    ``PerceptualLoss(spatial_dims=3, is_fake_3d=False,
    network_type="medicalnet_resnet10_23datasets")`` (and ``..._resnet50_...``), i.e.
    ``MedicalNetPerceptualSimilarity`` (``generative/losses/perceptual.py``):

    1. z-score each volume over all its voxels (``medicalnet_intensity_normalisation``,
       after Tencent MedicalNet's ``brains18.py``: mean, unbiased std);
    2. take the last stage of MedicalNet (Chen et al. 2019, ``resnet_10_23dataset.pth``
       or ``resnet_50_23dataset.pth``: a 3D ResNet whose stages 3 and 4 keep stride 1
       and dilate by 2 and 4);
    3. the shared normalise-and-compare step
       (:func:`t7synth.nets.features.normalised_feature_distance`): unit-normalise over
       channels, sum the squared differences over channels, average over space.

    The depth (ResNet-10 or -50) is read from the file. The weights are read with
    ``weights_only=True`` from a file the user supplies (nothing is downloaded);
    ``module.`` prefixes and the segmentation head ``conv_seg`` are ignored.

    Args:
        weights: a MedicalNet state dict, or a dict holding one under ``state_dict``.
        device: where the features are computed.
    """

    def __init__(self, weights: str | Path, device: str = "cpu"):

        self.net = load_resnet(weights, "--perceptual-weights", spatial_dims=3, kind="a MedicalNet 3D ResNet").to(
            device
        )
        self.device = device

    def features(self, volume):

        x = volume.float().reshape(1, 1, *volume.shape[-3:]).to(self.device)
        # The clamp only matters for a constant volume, where MONAI's formula divides by 0.
        x = (x - x.mean()) / x.std().clamp(min=1e-8)
        with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            return self.net(x)

    def __call__(self, prediction, target) -> float:

        return float(normalised_feature_distance(self.features(prediction), self.features(target)).mean())
