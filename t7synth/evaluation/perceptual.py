"""A 3D perceptual distance on MedicalNet features, from a local weights file."""

from __future__ import annotations

from pathlib import Path


class MedicalNetDistance:
    """3D perceptual distance on MedicalNet ResNet-10 features (the authors' metric).

    MedicalNet (Chen et al. 2019; ``resnet_10_23dataset.pth``) is a 3D ResNet-10 whose
    layers 3 and 4 keep stride 1 and use dilation 2 and 4. MONAI's ``resnet10`` has the
    same weights' shapes but strides instead, so its convolutions are set to
    MedicalNet's strides and dilations after it is built. The distance follows MONAI's
    ``MedicalNetPerceptualSimilarity``: z-score each volume, take the last stage's
    features, normalise them over channels, and average the squared difference summed
    over channels across space. The weights are read with ``weights_only=True`` from a
    file the user supplies (nothing is downloaded).

    Args:
        weights: a MedicalNet ResNet-10 state dict (``module.`` prefixes and the
            segmentation head ``conv_seg`` are ignored), or a dict holding one under
            ``state_dict``.
        device: where the features are computed.
    """

    def __init__(self, weights: str | Path, device: str = "cpu"):
        import torch
        from monai.networks.nets import resnet10

        from t7synth.nets.features import load_feature_weights

        net = resnet10(spatial_dims=3, n_input_channels=1, conv1_t_size=7, conv1_t_stride=2, shortcut_type="B", bias_downsample=False, num_classes=1)
        load_feature_weights(net, weights, "--perceptual-weights", "a MedicalNet ResNet-10", skip=("conv_seg", "fc."))
        for stage, dilation in ((net.layer3, 2), (net.layer4, 4)):
            for module in stage.modules():
                if isinstance(module, torch.nn.Conv3d):
                    module.stride = (1, 1, 1)
                    if module.kernel_size[0] == 3:
                        module.dilation = (dilation,) * 3
                        module.padding = (dilation,) * 3
        self.net = torch.nn.Sequential(net.conv1, net.bn1, net.act, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
        self.net.eval().requires_grad_(False).to(device)
        self.device = device

    def features(self, volume):
        import torch

        x = volume.float().reshape(1, 1, *volume.shape[-3:]).to(self.device)
        x = (x - x.mean()) / x.std().clamp(min=1e-8)
        with torch.no_grad():
            f = self.net(x)
        return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)

    def __call__(self, prediction, target) -> float:
        difference = (self.features(prediction) - self.features(target)) ** 2
        return float(difference.sum(dim=1).mean())
