"""V-Net baseline of Cui et al. (MICCAI 2024) for 3T -> 7T synthesis, as a plain nn.Module."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from torch import Tensor, nn

from t7synth.nets.layers import norm_layer, norm_spec
from t7synth.nets.unet import pad_to_multiple

__all__ = ["VNet"]

# LUConv counts of the published model: encoder stages 1-4, then decoder stages from the bottleneck up.
_DOWN_CONVS = (2, 3, 3, 3)
_UP_CONVS = (3, 3, 2, 1)
# Attribute names of the reference implementation (named after the published widths), kept so
# its released checkpoint loads with load_state_dict whatever ``channels`` is.
_DOWN_NAMES = ("down_tr32", "down_tr64", "down_tr128", "down_tr256")
_UP_NAMES = ("up_tr256", "up_tr128", "up_tr64", "up_tr32")


def _norm(norm: str, spatial_dims: int, channels: int) -> nn.Module:
    # Instance norm is affine (see nets.layers), so BatchNorm weights load with strict=False.
    return norm_layer(norm, spatial_dims, channels)


class _LUConv(nn.Module):
    """Conv 3^n (bias) - norm - PReLU with one slope per channel."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, norm: str) -> None:
        super().__init__()
        self.conv1 = Conv[Conv.CONV, spatial_dims](cin, cout, 3, padding=1)
        self.bn1 = _norm(norm, spatial_dims, cout)
        self.relu1 = nn.PReLU(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu1(self.bn1(self.conv1(x)))


class _InputTransition(_LUConv):
    """LUConv from the input channels, plus the input replicated to the output width."""

    def forward(self, x: Tensor) -> Tensor:
        repeats = self.conv1.out_channels // x.shape[1]
        return super().forward(x) + x.repeat(1, repeats, *([1] * (x.ndim - 2)))


class _DownTransition(nn.Module):
    """Conv 2^n stride 2 - norm - PReLU, then LUConvs with a residual add (no activation after)."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, n_convs: int, norm: str) -> None:
        super().__init__()
        self.down_conv = Conv[Conv.CONV, spatial_dims](cin, cout, 2, stride=2)
        self.bn1 = _norm(norm, spatial_dims, cout)
        self.relu1 = nn.PReLU(cout)
        self.ops = nn.Sequential(*(_LUConv(spatial_dims, cout, cout, norm) for _ in range(n_convs)))

    def forward(self, x: Tensor) -> Tensor:
        down = self.relu1(self.bn1(self.down_conv(x)))
        return self.ops(down) + down


class _UpTransition(nn.Module):
    """Nearest x2 - conv 3^n (no bias) - norm - PReLU to the skip width, concat skip, LUConvs + residual."""

    def __init__(self, spatial_dims: int, cin: int, cskip: int, n_convs: int, norm: str) -> None:
        super().__init__()
        # Nearest upsampling + conv replaces mattmacy's transposed conv (checkerboard artefacts).
        self.up_conv = Conv[Conv.CONV, spatial_dims](cin, cskip, 3, padding=1, bias=False)
        self.bn1 = _norm(norm, spatial_dims, cskip)
        self.relu1 = nn.PReLU(cskip)
        self.ops = nn.Sequential(*(_LUConv(spatial_dims, 2 * cskip, 2 * cskip, norm) for _ in range(n_convs)))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        up = self.relu1(self.bn1(self.up_conv(F.interpolate(x, scale_factor=2, mode="nearest"))))
        up = torch.cat((up, skip), dim=1)
        return self.ops(up) + up


class VNet(nn.Module):
    """V-Net of Cui et al., "7T MRI Synthesization from 3T Acquisitions" (MICCAI 2024,
    LNCS 15007; code: abbasilab/Synthetic_7T_MRI), a 3T -> 7T baseline.

    The design follows mattmacy/vnet.pytorch with the authors' changes: 3^n kernels
    instead of 5^n, and nearest-neighbour upsampling + a 3^n conv instead of
    transposed convolutions.

    * ``in_tr``: conv 3^n -> norm -> PReLU to ``channels[0]``, plus the input
      replicated to that width (a learned residual on top of the input).
    * Four down stages: conv 2^n stride 2 -> norm -> PReLU = ``d``; then 2, 3, 3, 3
      LUConvs (conv 3^n -> norm -> PReLU, one PReLU slope per channel); output
      ``ops(d) + d``.
    * Four up stages: nearest x2 -> conv 3^n (no bias) -> norm -> PReLU to the skip
      width, concatenated with the skip, then 3, 3, 2, 1 LUConvs + residual.
    * ``out_tr``: conv 1^n with bias; linear output, no global input residual.

    There is no dropout and no activation after the residual adds, as published.
    With the defaults the network has 15,734,497 parameters; the attribute names
    follow the reference code so its released weights load with ``load_state_dict``.

    The published model sees 64^3 patches; any size works here, since inputs are
    zero-padded symmetrically to a multiple of 16 (four stride-2 stages) and the
    output is cropped back.

    Args:
        spatial_dims: 3 as published (2 builds the same network on slices).
        in_channels: input channels; must divide ``channels[0]`` for the input
            replication of ``in_tr``.
        out_channels: output channels.
        channels: the five stage widths, from ``in_tr`` to the bottleneck. The
            depth (LUConv counts) is fixed to the published one.
        norm: ``"batch"`` (published) or ``"instance"`` (affine, same parameter
            count), which does not depend on the per-GPU batch and so needs no
            SyncBatchNorm under DDP.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if len(channels) != 5:
            raise ValueError(f"channels must list the 5 stage widths of the published V-Net, got {channels}")
        if channels[0] % in_channels:
            raise ValueError(f"channels[0]={channels[0]} must be a multiple of in_channels={in_channels}")
        norm_spec(norm)  # a clear error for an unknown name, before any layer is built
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.size_divisor = 16
        self.in_tr = _InputTransition(spatial_dims, in_channels, channels[0], norm)
        for i, (name, n_convs) in enumerate(zip(_DOWN_NAMES, _DOWN_CONVS)):
            self.add_module(name, _DownTransition(spatial_dims, channels[i], channels[i + 1], n_convs, norm))
        cin = channels[4]
        for i, (name, n_convs) in enumerate(zip(_UP_NAMES, _UP_CONVS)):
            cskip = channels[3 - i]
            self.add_module(name, _UpTransition(spatial_dims, cin, cskip, n_convs, norm))
            cin = 2 * cskip
        self.out_tr = Conv[Conv.CONV, spatial_dims](cin, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, in_channels, *spatial) to (B, out_channels, *spatial), any spatial size."""
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected x of shape (B, {self.in_channels}, {self.spatial_dims} spatial dims), got {tuple(x.shape)}"
            )
        x, crop = pad_to_multiple(x, self.size_divisor)
        skips = [self.in_tr(x)]
        for name in _DOWN_NAMES:
            skips.append(getattr(self, name)(skips[-1]))
        h = skips.pop()
        for name in _UP_NAMES:
            h = getattr(self, name)(h, skips.pop())
        return self.out_tr(h)[crop]
