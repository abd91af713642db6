"""The MedicalNet distance against MONAI-Generative's published formula.

A narrow MedicalNet-style network is built from MONAI's ``ResNet`` with MedicalNet's
strides and dilations patched in (independently of ``t7synth.nets.features``), its
weights written as MedicalNet ships them (``state_dict`` with ``module.`` prefixes and
a ``conv_seg`` head), and :class:`MedicalNetDistance` compared with
``MedicalNetPerceptualSimilarity`` + ``PerceptualLoss(spatial_dims=3,
is_fake_3d=False)`` of ``generative/losses/perceptual.py``, written out here.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from t7synth.errors import UserError
from t7synth.evaluation.perceptual import MedicalNetDistance


def medicalnet(block: str, seed: int) -> nn.Module:
    """A narrow MedicalNet: stages 3 and 4 at stride 1, dilated 2 and 4; no biases."""
    from monai.networks.nets import ResNet

    net = ResNet(
        block,
        [1, 1, 1, 1],
        [4, 8, 8, 8],
        spatial_dims=3,
        n_input_channels=1,
        conv1_t_size=7,
        conv1_t_stride=2,
        shortcut_type="B",
        bias_downsample=False,
        num_classes=2,
    )
    for stage, dilation in ((net.layer3, 2), (net.layer4, 4)):
        for module in stage.modules():
            if isinstance(module, nn.Conv3d):
                module.stride = (1, 1, 1)
                if module.kernel_size[0] == 3:
                    module.dilation, module.padding = (dilation,) * 3, (dilation,) * 3
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if tensor.dtype.is_floating_point:
                noise = torch.rand(tensor.shape, generator=generator) - 0.5
                if name.endswith("running_var"):
                    tensor.copy_(1 + noise)
                elif tensor.ndim > 1:
                    tensor.copy_(noise * (24 / tensor[0].numel()) ** 0.5)
                else:
                    tensor.copy_((1 + 0.4 * noise) if name.endswith("weight") else 0.2 * noise)
    return net.eval()


def published_formula(net: nn.Module, prediction: torch.Tensor, target: torch.Tensor) -> float:
    def features(volume):
        x = volume[None, None].float()
        x = (x - x.mean()) / x.std()  # medicalnet_intensity_normalisation
        x = net.maxpool(net.act(net.bn1(net.conv1(x))))
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))

    def normalize_tensor(x, eps=1e-10):
        return x / (torch.sqrt(torch.sum(x**2, dim=1, keepdim=True)) + eps)

    with torch.no_grad():
        a, b = normalize_tensor(features(prediction)), normalize_tensor(features(target))
    results = ((a - b) ** 2).sum(dim=1, keepdim=True).mean([2, 3, 4], keepdim=True)
    return float(torch.mean(results))


def volumes(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(24, 20, 22, generator=generator)
    return (target + 0.3 * torch.rand(24, 20, 22, generator=generator)).clamp(0, 1), target


@pytest.mark.parametrize("block", ["basic", "bottleneck"])  # MedicalNet ResNet-10 and ResNet-50
def test_distance_is_the_published_formula(block, tmp_path):
    net = medicalnet(block, seed=1)
    state = {f"module.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    state["module.conv_seg.0.weight"] = torch.zeros(2, 8, 1, 1, 1)  # the segmentation head: ignored
    torch.save({"state_dict": state}, tmp_path / "medicalnet.pth")
    distance = MedicalNetDistance(tmp_path / "medicalnet.pth")
    prediction, target = volumes()
    expected = published_formula(net, prediction, target)
    assert expected > 1e-3
    assert distance(prediction, target) == pytest.approx(expected, rel=1e-5)
    assert distance(target, target) == pytest.approx(0.0, abs=1e-12)


def test_a_2d_file_is_refused(tmp_path):
    torch.save({"conv1.weight": torch.zeros(4, 3, 7, 7)}, tmp_path / "resnet2d.pt")
    with pytest.raises(UserError, match=r"--perceptual-weights: .*\(a 2D network"):
        MedicalNetDistance(tmp_path / "resnet2d.pt")
