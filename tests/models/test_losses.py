"""The perceptual loss against MONAI-Generative's published RadImageNet formula.

Each test writes a narrow ResNet's weights in one of the layouts a user will have (the
Keras-converted RadImageNet file, torchvision's, MONAI's) and compares
:class:`PerceptualLoss` with the formula of ``generative/losses/perceptual.py``
(``RadImageNetPerceptualSimilarity`` + ``PerceptualLoss(spatial_dims=2)``) computed
here, on a network built independently of ``t7synth.nets.features``: a Keras-style
bottleneck written below for RadImageNet, MONAI's own ``ResNet`` for the other two.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from t7synth.errors import UserError
from t7synth.models.losses import PerceptualLoss, build_perceptual
from t7synth.nets.features import detect_layout, read_state_dict

WIDTHS = [4, 8, 8, 8]  # bottleneck planes per stage; outputs are 4x


class KerasBottleneck(nn.Module):
    """Warvito's ``radimagenet_models`` bottleneck: biases everywhere, stride on conv1."""

    def __init__(self, cin: int, planes: int, stride: int, downsample: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, stride=stride, bias=True)
        self.bn1 = nn.BatchNorm2d(planes, eps=1.001e-5)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(planes, eps=1.001e-5)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=True)
        self.bn3 = nn.BatchNorm2d(planes * 4, eps=1.001e-5)
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(cin, planes * 4, 1, stride=stride, bias=True), nn.BatchNorm2d(planes * 4, eps=1.001e-5)
            )
            if downsample
            else None
        )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class KerasResNet(nn.Module):
    """A narrow ``radimagenet_models.ResNet50`` (one or two blocks per stage)."""

    def __init__(self, blocks=(2, 1, 1, 1)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, WIDTHS[0], 7, stride=2, padding=3, bias=True)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0], eps=1.001e-5)
        width = WIDTHS[0]
        for stage, (planes, count) in enumerate(zip(WIDTHS, blocks)):
            layers = []
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(KerasBottleneck(width, planes, stride, downsample=index == 0))
                width = planes * 4
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class MonaiTrunk(nn.Module):
    """MONAI's ``ResNet`` up to ``layer4`` (its forward would pool and classify)."""

    def __init__(self, bias_downsample: bool):
        super().__init__()
        from monai.networks.nets import ResNet

        self.net = ResNet(
            "bottleneck",
            [2, 1, 1, 1],
            WIDTHS,
            spatial_dims=2,
            n_input_channels=3,
            conv1_t_size=7,
            conv1_t_stride=2,
            num_classes=5,
            bias_downsample=bias_downsample,
        )

    def forward(self, x):
        n = self.net
        x = n.maxpool(n.act(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))


def randomise(net: nn.Module, seed: int) -> nn.Module:
    """Seeded weights, biases and BatchNorm statistics, so every tensor of the file matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if not tensor.dtype.is_floating_point:
                continue
            noise = torch.rand(tensor.shape, generator=generator) - 0.5
            if name.endswith("running_var"):
                tensor.copy_(1 + noise)
            elif tensor.ndim > 1:  # convolution kernels: He-like scale
                tensor.copy_(noise * (24 / tensor[0].numel()) ** 0.5)
            elif ".bn" in name or name.startswith("bn") or ".downsample.1." in name:
                tensor.copy_((1 + 0.4 * noise) if name.endswith("weight") else 0.2 * noise)
            else:  # convolution biases
                tensor.copy_(0.1 * noise)
    return net.eval()


def published_formula(features: nn.Module, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MONAI-Generative's RadImageNet perceptual loss, written out step by step."""

    def prepare(image):
        if image.shape[1] == 1:
            image = image.repeat(1, 3, 1, 1)
        image = image[:, [2, 1, 0]].clone()
        image[:, 0] -= 0.406
        image[:, 1] -= 0.456
        image[:, 2] -= 0.485
        return image

    def normalize_tensor(x, eps=1e-10):
        return x / (torch.sqrt(torch.sum(x**2, dim=1, keepdim=True)) + eps)

    with torch.no_grad():
        a, b = normalize_tensor(features(prepare(prediction))), normalize_tensor(features(prepare(target)))
    results = ((a - b) ** 2).sum(dim=1, keepdim=True).mean([2, 3], keepdim=True)
    return torch.mean(results)


def slices(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    prediction = torch.rand(3, 1, 40, 36, generator=generator)
    target = (prediction + 0.2 * torch.rand(3, 1, 40, 36, generator=generator)).clamp(0, 1)
    return prediction, target


LAYOUTS = {
    "radimagenet": lambda: KerasResNet(),
    "torchvision": lambda: MonaiTrunk(bias_downsample=False),
    "monai": lambda: MonaiTrunk(bias_downsample=True),
}


def write_weights(net: nn.Module, path, wrap: str = "plain"):
    state = net.net.state_dict() if isinstance(net, MonaiTrunk) else net.state_dict()
    if wrap == "dataparallel":
        state = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    torch.save(state, path)
    return path


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_loss_is_the_published_formula_in_every_layout(layout, tmp_path):
    reference = randomise(LAYOUTS[layout](), seed=1)
    path = write_weights(reference, tmp_path / f"{layout}.pt", wrap="dataparallel" if layout == "monai" else "plain")
    loss = PerceptualLoss(path)
    assert detect_layout(read_state_dict(path, "test")) == layout
    prediction, target = slices()
    expected = published_formula(reference, prediction, target)
    value = loss(prediction, target)
    assert float(expected) > 1e-3  # the images differ: a zero would prove nothing
    assert torch.allclose(value, expected, rtol=1e-5, atol=1e-8), (float(value), float(expected))


def test_colour_inputs_are_reordered_to_bgr(tmp_path):
    """3-channel inputs go in as MONAI-Generative feeds them: RGB → BGR, then the means."""
    reference = randomise(KerasResNet(), seed=7)
    loss = PerceptualLoss(write_weights(reference, tmp_path / "keras.pt"))
    generator = torch.Generator().manual_seed(5)
    prediction = torch.rand(2, 3, 40, 36, generator=generator)
    target = torch.rand(2, 3, 40, 36, generator=generator)
    expected = published_formula(reference, prediction, target)
    assert torch.allclose(loss(prediction, target), expected, rtol=1e-5, atol=1e-8)


def test_keras_layout_keeps_its_conventions(tmp_path):
    """Stride on the first 1x1 conv and Keras' BatchNorm epsilon: loading the same file
    as if it were torchvision's (stride on the 3x3) changes the value."""
    reference = randomise(KerasResNet(), seed=2)
    loss = PerceptualLoss(write_weights(reference, tmp_path / "keras.pt"))
    block = loss.features.layer2[0]
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    assert loss.features.bn1.eps == pytest.approx(1.001e-5)
    prediction, target = slices(1)
    value = loss(prediction, target)
    block.conv1.stride, block.conv2.stride = (1, 1), (2, 2)
    assert not torch.allclose(loss(prediction, target), value, rtol=1e-3)


def test_gradients_reach_the_prediction_only(tmp_path):
    loss = PerceptualLoss(write_weights(randomise(MonaiTrunk(False), 3), tmp_path / "tv.pt"))
    prediction, target = slices(2)
    prediction.requires_grad_(True)
    loss(prediction, target).backward()
    assert prediction.grad is not None and float(prediction.grad.abs().sum()) > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.features.parameters())
    loss.train()
    assert not loss.features.training  # frozen BatchNorm statistics


def test_identical_slices_cost_nothing(tmp_path):
    loss = PerceptualLoss(write_weights(randomise(KerasResNet(), 4), tmp_path / "k.pt"))
    prediction, _ = slices(3)
    assert float(loss(prediction, prediction.clone())) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p, "file not found"),
        (lambda p: (p.write_bytes(b"not a torch file"), p)[1], "cannot read"),
        (lambda p: (torch.save({"conv1.weight": torch.zeros(4, 1, 7, 7, 7)}, p), p)[1], "3D network"),
        (lambda p: (torch.save({"weight": torch.zeros(3)}, p), p)[1], "no conv1.weight"),
    ],
)
def test_bad_files_are_one_clear_error(make, message, tmp_path):
    path = make(tmp_path / "weights.pt")
    with pytest.raises(UserError, match=message) as error:
        PerceptualLoss(path)
    assert "loss.perceptual_weights" in str(error.value)


def test_a_stray_tensor_is_refused_with_its_name(tmp_path):
    net = randomise(MonaiTrunk(False), 5)
    state = net.net.state_dict()
    state["layer2.0.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(UserError, match=r"unexpected \['layer2.0.extra.weight'\]"):
        PerceptualLoss(tmp_path / "odd.pt")


def test_positive_weight_needs_a_file():
    assert build_perceptual(0.0, None) is None
    with pytest.raises(UserError, match="loss.perceptual_weights is not set"):
        build_perceptual(0.01, None)


def test_the_loss_network_stays_out_of_checkpoints(tmp_path):
    """Its frozen weights are not the model's: a checkpoint must not carry them."""
    from t7synth.registry import get, resolve

    path = write_weights(randomise(KerasResNet(), 6), tmp_path / "k.pt")
    config = resolve(
        "unet",
        None,
        [
            "model.net.channels=8",
            "model.net.norm_groups=4",
            "model.net.channel_mult=[1,2]",
            "model.net.attention_levels=[1]",
            "loss.perceptual=0.01",
            f"loss.perceptual_weights={path}",
        ],
    )
    module = get("unet")(config.to_dict())
    module.setup("fit")
    assert module._perceptual is not None
    assert not [k for k in module.state_dict() if "perceptual" in k]
