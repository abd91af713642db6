"""WATNet: the official 2.5D spatial + wavelet network of Qu et al. (MedIA 2020)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t7synth.nets.haar import haar_pyramid

__all__ = ["WATNet", "WAVELET_SUBBANDS"]

#: Subband types that get their own normalisation statistics, in the order of
#: :attr:`WATNet.wavelet_mean` / :attr:`WATNet.wavelet_std`. ``L<l>_<X>`` is
#: subband ``X`` (A = approximation, H/V/D = horizontal/vertical/diagonal
#: detail) at decomposition level ``l``; W1 and W2 carry details only, W3 the
#: approximation too. The statistics are pooled over the input slices, which are
#: interchangeable neighbouring slices of one volume.
WAVELET_SUBBANDS: tuple[str, ...] = (
    "L1_H", "L1_V", "L1_D",
    "L2_H", "L2_V", "L2_D",
    "L3_A", "L3_H", "L3_V", "L3_D",
)  # fmt: skip

# Three DWT levels: the network's three stride-2 stages each get the wavelets of
# their own resolution, so inputs are padded to a multiple of 2**3.
_LEVELS = 3
_MULTIPLE = 2**_LEVELS
# A subband whose fitted std falls below this carries no information (e.g. a
# constant calibration set); it keeps std 1 instead of amplifying rounding noise.
_MIN_STD = 1e-6


def _conv3x3(in_channels: int, out_channels: int, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, groups=groups)


def _bilinear_kernel(size: int) -> Tensor:
    """Caffe's ``bilinear`` filler: a separable tent that makes a stride-``size/2``
    transposed conv an exact bilinear 2× upsampler (away from the border)."""
    factor = math.ceil(size / 2)
    centre = (2 * factor - 1 - factor % 2) / (2.0 * factor)
    tent = 1.0 - (torch.arange(size, dtype=torch.float64) / factor - centre).abs()
    return torch.outer(tent, tent)


class _DistillationBlock(nn.Module):
    """IDN-style information distillation unit (Hui et al., CVPR 2018).

    With ``features = F = 64`` (``d = F/4 = 16``): three 3×3 convs
    ``F → 3F/4 → F/2 (grouped) → F``; the first ``d`` channels are distilled
    (kept), the other ``3F/4`` go through ``3F/4 → F → 3F/4 (grouped) → F + d``;
    the result is added to ``concat(block input, distilled)`` (``F + d``
    channels) and compressed by a 1×1 conv back to ``F``. Every 3×3 conv is
    followed by LeakyReLU.

    Args:
        features: Channels in and out (64 in the paper).
        groups: Groups of the two grouped 3×3 convs.
        stride: Stride of the 1×1 compression conv (2 in E1–E3, else 1).
        activate_output: Apply LeakyReLU after the compression; the encoder's
            stride-2 blocks leave it out because the following WAT layer ends
            in its own LeakyReLU.
        negative_slope: LeakyReLU slope.
    """

    def __init__(self, features: int, groups: int, stride: int, activate_output: bool, negative_slope: float) -> None:
        super().__init__()
        self.distilled = features // 4
        wide = features - self.distilled
        self.enhance_a = nn.Sequential(
            _conv3x3(features, wide),
            nn.LeakyReLU(negative_slope, inplace=True),
            _conv3x3(wide, features // 2, groups=groups),
            nn.LeakyReLU(negative_slope, inplace=True),
            _conv3x3(features // 2, features),
            nn.LeakyReLU(negative_slope, inplace=True),
        )
        self.enhance_b = nn.Sequential(
            _conv3x3(wide, features),
            nn.LeakyReLU(negative_slope, inplace=True),
            _conv3x3(features, wide, groups=groups),
            nn.LeakyReLU(negative_slope, inplace=True),
            _conv3x3(wide, features + self.distilled),
            nn.LeakyReLU(negative_slope, inplace=True),
        )
        self.compress = nn.Conv2d(features + self.distilled, features, kernel_size=1, stride=stride)
        self.out_act: nn.Module = nn.LeakyReLU(negative_slope, inplace=True) if activate_output else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.enhance_a(x)
        # Caffe Slice at slice_point d: the first d channels skip the second stage.
        kept, rest = y[:, : self.distilled], y[:, self.distilled :]
        y = self.enhance_b(rest) + torch.cat((x, kept), dim=1)
        return self.out_act(self.compress(y))


class _WaveletAffine(nn.Module):
    """WAT layer: feature-wise affine modulation conditioned on wavelets.

    ``out = LeakyReLU(F ⊙ γ(W) + β(W))`` where γ and β are two separate
    ``conv3×3(W → F/2), LeakyReLU, conv3×3(F/2 → F)`` branches with their own
    weights (Cui et al. share one branch for both, which forces γ ≡ β).

    Args:
        wavelet_channels: Channels of the wavelet input ``W``.
        features: Channels of the modulated features ``F``.
        negative_slope: LeakyReLU slope.
    """

    def __init__(self, wavelet_channels: int, features: int, negative_slope: float) -> None:
        super().__init__()
        hidden = features // 2

        def branch() -> nn.Sequential:
            return nn.Sequential(
                _conv3x3(wavelet_channels, hidden),
                nn.LeakyReLU(negative_slope, inplace=True),
                _conv3x3(hidden, features),
            )

        self.scale = branch()
        self.shift = branch()
        self.act = nn.LeakyReLU(negative_slope, inplace=True)

    def forward(self, features: Tensor, wavelets: Tensor) -> Tensor:
        return self.act(features * self.scale(wavelets) + self.shift(wavelets))


class WATNet(nn.Module):
    """WATNet of Qu et al. (MedIA 2020), the official (Caffe) design.

    Reference: L. Qu, Y. Zhang, S. Wang, P.-T. Yap, D. Shen, "Synthesized 7T
    MRI from 3T MRI via deep learning in spatial and wavelet domains", *Medical
    Image Analysis* 62:101663, 2020; reimplemented from the authors' release
    (github.com/Liangqiong/WATNet, ``AF_encod_3layer_decod_3input.prototxt``).

    This is a 2.5D network: three consecutive axial slices enter as channels and
    three slices come out. Layout (sizes for a 64×64 patch; ``F = features``)::

        head   conv3×3 in→F, LReLU, conv3×3 F→F, LReLU                  64²
        E1     DBlock, 1×1 compression stride 2, then WAT(W1,  9 ch)    32²
        E2     DBlock, stride 2, then WAT(W2,  9 ch)                    16²
        E3     DBlock, stride 2, then WAT(W3, 12 ch)                     8²
        E4, D4 DBlock, stride-1 compression + LReLU                      8²
        D3..D1 DBlock + depthwise ConvTranspose 4×4/2 (bilinear init)  16²..64²
        out    conv17×17 F→out_channels, pad 8, + input slices (global residual)

    DBlock is the IDN distillation unit (see :class:`_DistillationBlock`); the
    WAT layer is ``LReLU(F ⊙ γ(W) + β(W))`` with separate γ and β branches. All
    activations are LeakyReLU(0.05). There are no skip connections besides the
    distillation concat and the global residual.

    Wavelets: the official code precomputed 3-level Haar DWTs of each slice
    offline (on image×255) and z-scored each subband type with dataset
    statistics. Here they are computed inside :meth:`forward` from the input with
    the exact torch transform of :mod:`t7synth.nets.haar` (on the input's
    device; channel order slice-major as in ``pywt.dwt2``), then normalised with
    the buffers ``wavelet_mean`` / ``wavelet_std`` (shape ``(10,)``, one entry
    per subband type of :data:`WAVELET_SUBBANDS`, pooled over slices). They
    start at mean 0 / std 1 (identity) and must be fitted on training inputs with
    :meth:`fit_wavelet_stats`; being buffers, they are saved in checkpoints.

    Differences from Cui et al.'s simplified WATNet-2D (which this is *not*):
    no weight sharing between the three encoder DBlocks, WAT layers or decoder
    DBlocks; separate γ and β branches instead of γ ≡ β; LeakyReLU(0.05) and
    MSRA init instead of ReLU and PyTorch defaults (and, with the default
    ``groups=4``, IDN's grouped convs instead of dense ones); depthwise,
    bilinear-initialised, bias-free upsampling instead of a dense 64→64
    ConvTranspose; a 3-channel output added slice-by-slice instead of one
    channel broadcast onto three slices; and normalised, on-device wavelets
    instead of un-normalised PyWavelets coefficients computed on the CPU.

    Parameter count: with the defaults this module has exactly **1,219,139**
    parameters, the count of the reference spec (head 38,720; 8 DBlocks
    8 × 124,176; WAT layers 128,448; 3 upsamplers 3,072; output conv 55,491).
    Caveat on ``groups``: the released prototxts *comment out* the
    ``group: 4`` lines of IDN (``#group: 4``) and the released training log's
    parsed network has no ``group`` field, so the model Qu et al. actually
    trained used dense convs: ``groups=1`` reproduces it exactly with
    **1,467,971** parameters (+31,104 per DBlock). ``groups=4`` is the
    IDN design of the project's reference spec.

    Initialisation follows the prototxt: conv weights use Caffe's ``msra`` filler
    with ``variance_norm: AVERAGE``, i.e. ``N(0, 4 / (fan_in + fan_out))``
    (:func:`torch.nn.init.xavier_normal_` with gain √2), biases are zero, and the
    upsamplers start as bilinear interpolation but stay trainable. The Caffe
    learning-rate and weight-decay multipliers are exposed by
    :meth:`param_groups`.

    Args:
        in_channels: Input slices (3 in the paper).
        out_channels: Output slices (3 in the paper). When it differs from
            ``in_channels`` the global residual adds the centre input slice
            (index ``in_channels // 2``) to every output channel.
        features: Width ``F`` of the network (64 in the paper). Must be
            divisible by 4, and ``F/2``, ``3F/4`` and ``F`` by ``groups``.
        negative_slope: LeakyReLU slope (0.05 in the paper).
        spatial_dims: Must be 2; accepted for a MONAI-like signature.
        groups: Groups of the two grouped 3×3 convs in every DBlock (see the
            parameter-count caveat above).

    Input ``(B, in_channels, H, W)`` with any ``H, W``: the input is padded at
    the bottom/right to a multiple of 8 (reflect, or replicate when the image is
    too small to reflect) and the output is cropped back to
    ``(B, out_channels, H, W)``.

    Raises:
        ValueError: For ``spatial_dims != 2`` or incompatible channel settings.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        out_channels: int = 3,
        features: int = 64,
        negative_slope: float = 0.05,
        spatial_dims: int = 2,
        groups: int = 4,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"WATNet is a 2D (2.5D) network; spatial_dims must be 2, got {spatial_dims}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channels must be positive, got in={in_channels}, out={out_channels}")
        grouped_widths = (features // 2, features - features // 4, features)
        if groups < 1 or features % 4 or any(width % groups for width in grouped_widths):
            raise ValueError(
                f"features={features} must be divisible by 4, and features/2, 3*features/4 and "
                f"features by groups={groups}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.features = features

        def dblock(stride: int) -> _DistillationBlock:
            return _DistillationBlock(features, groups, stride, stride == 1, negative_slope)

        def upsampler() -> nn.ConvTranspose2d:
            return nn.ConvTranspose2d(
                features, features, kernel_size=4, stride=2, padding=1, groups=features, bias=False
            )

        self.head = nn.Sequential(
            _conv3x3(in_channels, features),
            nn.LeakyReLU(negative_slope, inplace=True),
            _conv3x3(features, features),
            nn.LeakyReLU(negative_slope, inplace=True),
        )
        self.enc1, self.enc2, self.enc3 = dblock(2), dblock(2), dblock(2)
        self.wat1 = _WaveletAffine(3 * in_channels, features, negative_slope)
        self.wat2 = _WaveletAffine(3 * in_channels, features, negative_slope)
        self.wat3 = _WaveletAffine(4 * in_channels, features, negative_slope)
        self.enc4, self.dec4 = dblock(1), dblock(1)
        self.dec3, self.dec2, self.dec1 = dblock(1), dblock(1), dblock(1)
        self.up3, self.up2, self.up1 = upsampler(), upsampler(), upsampler()
        self.out_conv = nn.Conv2d(features, out_channels, kernel_size=17, padding=8)

        self.register_buffer("wavelet_mean", torch.zeros(len(WAVELET_SUBBANDS)))
        self.register_buffer("wavelet_std", torch.ones(len(WAVELET_SUBBANDS)))
        self.wavelet_mean: Tensor
        self.wavelet_std: Tensor
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-initialise the weights as the Caffe prototxt does (buffers untouched)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # Caffe msra + variance_norm AVERAGE: std = sqrt(2 / ((fan_in + fan_out) / 2)),
                # which is exactly xavier_normal_ with gain sqrt(2) (same fan definitions,
                # including grouped convs).
                nn.init.xavier_normal_(module.weight, gain=math.sqrt(2.0))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.ConvTranspose2d):
                kernel = _bilinear_kernel(module.kernel_size[0]).to(module.weight)
                module.weight.copy_(kernel.expand_as(module.weight))

    # ------------------------------------------------------------------ forward

    def forward(self, x: Tensor) -> Tensor:
        """Synthesise ``out_channels`` 7T-like slices from ``in_channels`` 3T slices.

        Args:
            x: ``(B, in_channels, H, W)`` input slices, intensities in [0, 1].

        Returns:
            ``(B, out_channels, H, W)``: the residual prediction plus the input.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"WATNet expects (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        x = self._pad(x)
        w1, w2, w3 = self._normalised_wavelets(x)

        f = self.head(x)
        f = self.wat1(self.enc1(f), w1)
        f = self.wat2(self.enc2(f), w2)
        f = self.wat3(self.enc3(f), w3)
        f = self.dec4(self.enc4(f))
        f = self.up3(self.dec3(f))
        f = self.up2(self.dec2(f))
        f = self.up1(self.dec1(f))
        out = self.out_conv(f) + self._residual(x)
        return out[..., :height, :width]

    def _pad(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % _MULTIPLE, -width % _MULTIPLE
        if pad_h == 0 and pad_w == 0:
            return x
        # Reflect avoids a flat band at the border; it needs pad < size, so tiny
        # inputs fall back to replicate.
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)

    def _residual(self, x: Tensor) -> Tensor:
        if self.out_channels == self.in_channels:
            return x
        centre = self.in_channels // 2
        return x[:, centre : centre + 1]  # broadcast onto every output channel

    def _normalised_wavelets(self, x: Tensor) -> list[Tensor]:
        """Haar pyramid of ``x`` z-scored per subband type with the fitted buffers.

        The official code transformed image×255; the transform is linear, so
        that constant is absorbed into ``wavelet_mean`` / ``wavelet_std`` fitted on
        our [0, 1] inputs and the normalised wavelets are the same.
        """
        slices = x.shape[1]
        normalised = []
        start = 0
        for wavelets in haar_pyramid(x, levels=_LEVELS):
            bands = wavelets.shape[1] // slices
            stop = start + bands
            # Slice-major channels (slice 0: H, V, D, slice 1: H, V, D, ...) so the
            # per-type statistics repeat once per slice.
            mean = self.wavelet_mean[start:stop].to(wavelets.dtype).repeat(slices)
            std = self.wavelet_std[start:stop].to(wavelets.dtype).repeat(slices)
            normalised.append((wavelets - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1))
            start = stop
        return normalised

    # ------------------------------------------------------------ wavelet stats

    @property
    def wavelet_stats_fitted(self) -> bool:
        """Whether the normalisation buffers differ from their identity defaults."""
        return bool((self.wavelet_mean != 0).any() or (self.wavelet_std != 1).any())

    @torch.no_grad()
    def fit_wavelet_stats(self, batches: Iterable[Tensor]) -> None:
        """Fit ``wavelet_mean`` / ``wavelet_std`` on training input slabs.

        Streams over ``batches``, accumulating per-subband-type sums and sums of
        squares (in float64, or float32 on MPS which lacks float64), so any
        number of batches fits in memory. Inputs are padded exactly as in
        :meth:`forward`, so the statistics describe what the WAT layers see.
        Subbands with a std below 1e-6 keep std 1.

        Args:
            batches: Iterable of ``(B, in_channels, H, W)`` input tensors (the 3T
                slabs, not the 7T targets), e.g. the input of every training
                batch of one epoch.

        Raises:
            TypeError: If an item is not a tensor.
            ValueError: If an item has the wrong shape or ``batches`` is empty.
        """
        device = self.wavelet_mean.device
        dtype = torch.float32 if device.type == "mps" else torch.float64
        sums = torch.zeros(len(WAVELET_SUBBANDS), dtype=dtype, device=device)
        squares = torch.zeros_like(sums)
        counts = torch.zeros_like(sums)
        for batch in batches:
            if not isinstance(batch, Tensor):
                raise TypeError(f"fit_wavelet_stats expects tensors, got {type(batch).__name__}")
            if batch.ndim != 4 or batch.shape[1] != self.in_channels:
                raise ValueError(
                    f"fit_wavelet_stats expects (B, {self.in_channels}, H, W), got shape {tuple(batch.shape)}"
                )
            x = self._pad(batch.to(device=device, dtype=dtype))
            start = 0
            for wavelets in haar_pyramid(x, levels=_LEVELS):
                n, channels, h, w = wavelets.shape
                bands = channels // self.in_channels
                # (B, slices, bands, h, w): reduce everything but the subband type.
                per_type = wavelets.reshape(n, self.in_channels, bands, h, w)
                sums[start : start + bands] += per_type.sum(dim=(0, 1, 3, 4))
                squares[start : start + bands] += per_type.square().sum(dim=(0, 1, 3, 4))
                counts[start : start + bands] += n * self.in_channels * h * w
                start += bands
        if not bool((counts > 0).all()):
            raise ValueError("fit_wavelet_stats got no batches")
        mean = sums / counts
        std = (squares / counts - mean.square()).clamp_min(0).sqrt()
        std = torch.where(std > _MIN_STD, std, torch.ones_like(std))
        self.wavelet_mean.copy_(mean)
        self.wavelet_std.copy_(std)

    # ------------------------------------------------------------ optimisation

    def param_groups(self, lr: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Optimizer parameter groups with the Caffe ``lr_mult`` / ``decay_mult``.

        The prototxt gives every conv weight ``lr_mult 1``, every bias
        ``lr_mult 0.1``, the 17×17 output conv ``lr_mult 0.1`` for both weight
        and bias, and the upsamplers ``lr_mult 1, decay_mult 0.1``. The groups are:

        ========== ===================================== ======== ================
        name       parameters                            lr       weight_decay
        ========== ===================================== ======== ================
        weights    conv weights (except output conv)     lr       weight_decay
        biases     conv biases (except output conv)      0.1·lr   weight_decay
        upsample   ConvTranspose weights                 lr       0.1·weight_decay
        output     output conv weight and bias           0.1·lr   weight_decay
        ========== ===================================== ======== ================

        Caffe's ``weight_decay`` with ``regularization_type: L2`` adds the decay to
        the gradient before the Adam update, which is :class:`torch.optim.Adam`'s
        ``weight_decay`` (not AdamW's decoupled decay). The official solver used
        Adam, lr 2.5e-4, weight decay 1e-4. LR schedulers scale each group's lr,
        so the multipliers are kept. Frozen parameters are left out.

        Args:
            lr: Base learning rate.
            weight_decay: Base weight decay.

        Returns:
            A list of dicts with keys ``params``, ``lr``, ``weight_decay`` and
            ``name``, ready for ``torch.optim.Adam(model.param_groups(lr, wd))``.
        """
        output_ids = {id(p) for p in self.out_conv.parameters()}
        upsample_ids = {id(p) for m in (self.up1, self.up2, self.up3) for p in m.parameters()}
        # name -> (lr multiplier, weight-decay multiplier, params)
        groups: dict[str, tuple[float, float, list[nn.Parameter]]] = {
            "weights": (1.0, 1.0, []),
            "biases": (0.1, 1.0, []),
            "upsample": (1.0, 0.1, []),
            "output": (0.1, 1.0, []),
        }
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            if id(param) in output_ids:
                key = "output"
            elif id(param) in upsample_ids:
                key = "upsample"
            elif name.endswith("bias"):
                key = "biases"
            else:
                key = "weights"
            groups[key][2].append(param)
        return [
            {"params": params, "lr": lr * lr_mult, "weight_decay": weight_decay * decay_mult, "name": key}
            for key, (lr_mult, decay_mult, params) in groups.items()
            if params
        ]
