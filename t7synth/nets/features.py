"""Frozen feature networks of the perceptual losses and distances, from local files.

The paper's perceptual term and its 3D evaluation distance both compare the features
of a pretrained ResNet: MONAI-Generative's ``PerceptualLoss`` fetches RadImageNet's
ResNet-50 (``Warvito/radimagenet-models``) or MedicalNet's 3D ResNets
(``Warvito/MedicalNet-models``) from torch.hub. Here nothing is ever downloaded: the
user names a local file, read with ``weights_only=True`` so that it cannot run code.

The same ResNet-50 weights reach users in several key layouts, which differ in more
than their names, so the network is built to match the file (:func:`load_resnet`):

========== ====================================== ========================= =========
layout     conv biases                            stride of a stage's first BN eps
                                                  bottleneck on
========== ====================================== ========================= =========
radimagenet every convolution (Keras conversion)  its first 1×1 conv        1.001e-5
torchvision none                                  its 3×3 conv              1e-5
monai      the downsample 1×1 conv only           its 3×3 conv              1e-5
medicalnet none (3D; stages 3-4 dilated 2 and 4,  its 3×3 conv              1e-5
           stride 1)
========== ====================================== ========================= =========

The RadImageNet file (``RadImageNet-ResNet50_notop.pth``) is a conversion of Keras'
ResNet50, whose convolutions all carry biases and whose bottlenecks stride in the first
1×1 convolution (Warvito's ``radimagenet_models/models/resnet.py``); torchvision's
ResNet-50 (v1.5) and MONAI's ``resnet50`` stride in the 3×3 convolution instead. The
layout is read from the keys (a bias on ``layer1.0.conv1`` means Keras; a bias on the
downsample convolution alone means MONAI), and the depth and widths from the tensor
shapes, so ResNet-50, a MedicalNet ResNet-10 or ResNet-50, or a narrow test network
all load through one path. Classifier and segmentation heads (``fc``, ``conv_seg``)
and DataParallel's ``module.`` prefixes are ignored; any other missing or unexpected
tensor is an error naming the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from t7synth.errors import UserError

#: Key prefixes of classifier / segmentation heads, never used for features.
HEADS = ("fc.", "conv_seg.")


@dataclass(frozen=True)
class ResNetLayout:
    """How one family of weight files builds its ResNet (see the module docstring).

    Attributes:
        name: the layout's name, as messages show it.
        conv_bias: which convolutions carry a bias: ``all``, ``downsample`` or ``none``.
        stride_in_first_conv: a bottleneck's stride sits on its first 1×1 conv (Keras),
            else on its 3×3 conv.
        eps: BatchNorm epsilon.
        spatial_dims: 2 or 3.
        strides: the four stages' strides.
        dilations: the four stages' dilations (MedicalNet dilates instead of striding).
    """

    name: str
    conv_bias: str
    stride_in_first_conv: bool
    eps: float
    spatial_dims: int = 2
    strides: tuple[int, int, int, int] = (1, 2, 2, 2)
    dilations: tuple[int, int, int, int] = (1, 1, 1, 1)


LAYOUTS = {
    # Keras' BatchNormalization epsilon is 1.001e-5 in keras.applications.ResNet50.
    "radimagenet": ResNetLayout("radimagenet (Keras)", "all", True, 1.001e-5),
    "torchvision": ResNetLayout("torchvision", "none", False, 1e-5),
    "monai": ResNetLayout("monai", "downsample", False, 1e-5),
    # Tencent MedicalNet (Chen et al. 2019): layer3 and layer4 keep stride 1 and use
    # dilation 2 and 4 (Warvito/MedicalNet-models, medicalnet_models/models/resnet.py).
    "medicalnet": ResNetLayout("medicalnet", "none", False, 1e-5, 3, (1, 2, 1, 1), (1, 1, 2, 4)),
}


def _conv(
    dims: int, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1, bias: bool = False
) -> nn.Module:
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    return conv(cin, cout, kernel, stride=stride, padding=dilation * (kernel // 2), dilation=dilation, bias=bias)


def _norm(dims: int, channels: int, eps: float) -> nn.Module:
    return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(channels, eps=eps)


class ResNetBlock(nn.Module):
    """A basic (two 3×3 convs) or bottleneck (1×1, 3×3, 1×1) residual block.

    Args:
        layout: the weight file's conventions.
        bottleneck: the block's kind.
        cin, planes, cout: input, inner and output widths.
        stride, dilation: of the block (the stride is on the first 1×1 conv or on the
            3×3 conv, as the layout says; the downsample conv always strides).
        downsample: whether the shortcut is a 1×1 conv + BatchNorm.
    """

    def __init__(
        self,
        layout: ResNetLayout,
        bottleneck: bool,
        cin: int,
        planes: int,
        cout: int,
        stride: int,
        dilation: int,
        downsample: bool,
    ):
        super().__init__()
        dims, bias, eps = layout.spatial_dims, layout.conv_bias == "all", layout.eps
        self.bottleneck = bottleneck
        if bottleneck:
            first = stride if layout.stride_in_first_conv else 1
            self.conv1 = _conv(dims, cin, planes, 1, stride=first, bias=bias)
            self.bn1 = _norm(dims, planes, eps)
            self.conv2 = _conv(dims, planes, planes, 3, stride=stride // first, dilation=dilation, bias=bias)
            self.bn2 = _norm(dims, planes, eps)
            self.conv3 = _conv(dims, planes, cout, 1, bias=bias)
            self.bn3 = _norm(dims, cout, eps)
        else:
            self.conv1 = _conv(dims, cin, planes, 3, stride=stride, dilation=dilation, bias=bias)
            self.bn1 = _norm(dims, planes, eps)
            self.conv2 = _conv(dims, planes, cout, 3, dilation=dilation, bias=bias)
            self.bn2 = _norm(dims, cout, eps)
        self.relu = nn.ReLU()
        self.downsample = None
        if downsample:
            shortcut_bias = layout.conv_bias in ("all", "downsample")
            self.downsample = nn.Sequential(
                _conv(dims, cin, cout, 1, stride=stride, bias=shortcut_bias), _norm(dims, cout, eps)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.bottleneck:
            out = self.bn3(self.conv3(self.relu(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNetFeatures(nn.Module):
    """The stem and four stages of a ResNet; ``forward`` returns the last stage's output.

    That output (after the final ReLU of ``layer4``) is what MONAI-Generative compares:
    Warvito's RadImageNet and MedicalNet models stop there, and its torchvision variant
    reads ``layer4.2.relu_2``. Build it with :func:`load_resnet`, which reads the
    architecture from a weight file.

    Args:
        layout: the weight file's conventions.
        in_channels, stem_width, stem_kernel: the stem convolution.
        stages: per stage, per block: ``(planes, out_channels, has_downsample)``.
        bottleneck: bottleneck blocks (ResNet-50) or basic blocks (ResNet-10/18/34).
    """

    def __init__(
        self,
        layout: ResNetLayout,
        in_channels: int,
        stem_width: int,
        stem_kernel: int,
        stages: list[list[tuple[int, int, bool]]],
        bottleneck: bool,
    ):
        super().__init__()
        dims = layout.spatial_dims
        self.layout = layout
        self.conv1 = _conv(dims, in_channels, stem_width, stem_kernel, stride=2, bias=layout.conv_bias == "all")
        self.bn1 = _norm(dims, stem_width, layout.eps)
        self.relu = nn.ReLU()
        self.maxpool = (nn.MaxPool2d if dims == 2 else nn.MaxPool3d)(kernel_size=3, stride=2, padding=1)
        width = stem_width
        for index, blocks in enumerate(stages):
            layers = []
            for block, (planes, cout, downsample) in enumerate(blocks):
                stride = layout.strides[index] if block == 0 else 1
                layers.append(
                    ResNetBlock(layout, bottleneck, width, planes, cout, stride, layout.dilations[index], downsample)
                )
                width = cout
            setattr(self, f"layer{index + 1}", nn.Sequential(*layers))

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def normalised_feature_distance(a: Tensor, b: Tensor, eps: float = 1e-10) -> Tensor:
    """Per-sample LPIPS-style distance of two (B, C, *spatial) feature maps, shape (B,).

    MONAI-Generative's formula (``generative/losses/perceptual.py``: ``normalize_tensor``,
    then ``spatial_average(results.sum(dim=1))``), shared by the RadImageNet loss and the
    MedicalNet distance: each feature vector is divided by its L2 norm over channels
    (+ ``eps``), the squared differences are summed over channels and averaged over
    space. The caller averages over the batch, as ``PerceptualLoss.forward`` does.
    """
    a = a / (a.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)
    b = b / (b.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)
    return (a - b).pow(2).sum(dim=1).flatten(1).mean(dim=1)


def read_state_dict(weights: str | Path, what: str) -> dict[str, Tensor]:
    """The tensors of a weight file: ``weights_only``, ``state_dict`` unwrapped, prefixes off.

    Args:
        weights: the file's path.
        what: how the user named the file (a config key or a flag), for messages.

    Raises:
        UserError: a missing or unreadable file, or one that holds no state dict.
    """
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(f"{what}: file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, not a torch file, refused pickle opcodes
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{what}: cannot read {path}: {reason}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"{what}: {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith(HEADS)}


def detect_layout(state: dict[str, Tensor]) -> str:
    """The :data:`LAYOUTS` name of a state dict, from its keys and its convolutions' rank."""
    if state["conv1.weight"].ndim == 5:
        return "medicalnet"
    if "layer1.0.conv1.bias" in state:
        return "radimagenet"
    if any(re.fullmatch(r"layer\d+\.\d+\.downsample\.0\.bias", key) for key in state):
        return "monai"
    return "torchvision"


def _architecture(state: dict[str, Tensor]) -> tuple[list[list[tuple[int, int, bool]]], bool]:
    bottleneck = "layer1.0.conv3.weight" in state
    last = "conv3" if bottleneck else "conv2"
    stages = []
    for stage in range(1, 5):
        indices = sorted({int(m.group(1)) for key in state if (m := re.match(rf"layer{stage}\.(\d+)\.", key))})
        if not indices or indices != list(range(len(indices))):
            raise KeyError(f"layer{stage}")
        stages.append(
            [
                (
                    state[f"layer{stage}.{i}.conv1.weight"].shape[0],
                    state[f"layer{stage}.{i}.{last}.weight"].shape[0],
                    f"layer{stage}.{i}.downsample.0.weight" in state,
                )
                for i in indices
            ]
        )
    return stages, bottleneck


def load_resnet(weights: str | Path, what: str, spatial_dims: int, kind: str) -> ResNetFeatures:
    """A frozen :class:`ResNetFeatures` (eval mode, no gradients) built to fit a weight file.

    Args:
        weights: the file (any layout of :data:`LAYOUTS`).
        what: how the user named the file (a config key or a flag), for messages.
        spatial_dims: 2 (RadImageNet, torchvision, MONAI) or 3 (MedicalNet).
        kind: what the file should hold, for messages (``"a ResNet-50 state dict"``).

    Raises:
        UserError: the file is unreadable, is not a ResNet of that dimensionality, or
            leaves tensors missing or unused.
    """
    state = read_state_dict(weights, what)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = Path(weights).expanduser()
    stem = state.get("conv1.weight")
    if stem is None or stem.ndim != spatial_dims + 2:
        found = "no conv1.weight" if stem is None else f"a {stem.ndim - 2}D network"
        raise UserError(f"{what}: {path} is not {kind} ({found}; expected a {spatial_dims}D ResNet)")
    layout = LAYOUTS[detect_layout(state)]
    try:
        stages, bottleneck = _architecture(state)
    except KeyError as error:
        raise UserError(f"{what}: {path} is not {kind} (no tensors for {error.args[0]})") from None
    net = ResNetFeatures(layout, stem.shape[1], stem.shape[0], stem.shape[2], stages, bottleneck)
    expected = {k for k in net.state_dict() if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    shapes = [k for k in sorted(expected & set(state)) if net.state_dict()[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        detail = f"missing {missing[:3]}, unexpected {unexpected[:3]}" + (
            f", wrong shape {shapes[:3]}" if shapes else ""
        )
        raise UserError(f"{what}: {path} is not {kind} in the {layout.name} layout ({detail})")
    net.load_state_dict(state, strict=False)
    return net.eval().requires_grad_(False)
