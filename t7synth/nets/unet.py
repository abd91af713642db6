"""Conditioned 2.5D U-Net of arXiv:2507.13782 (3T -> 7T T1-weighted MRI).

The network is the diffusion-brain latent-diffusion U-Net by Warvito
(``models_unet_v2_conditioned_AdaDM_2D.py`` + ``models_attention_2D.py``), used
as a one-shot regressor: timesteps are fixed to 1 and the conditioning tokens
(age, sex, slice position) enter through cross-attention. The module and
parameter names mirror the reference code (``input_blocks.N.M``, ``in_layers``,
``emb_layers``, ``out_layers``, ``phi``, ``transformer_blocks.0.attn1.to_q``,
...), so the released checkpoints load with ``load_state_dict`` once the
DataParallel ``module.`` prefix is stripped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["ConditionedUNet", "pad_to_multiple"]


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[slice, ...]]:
    """Zero-pad the spatial dims of ``x`` (B, C, *spatial) up to multiples of ``multiple``.

    The padding is split as evenly as possible between both sides (one extra voxel
    after when the total is odd), which is how the paper pads 288x222 slices to
    288x224; keeping the anatomy centred keeps it away from the zero border that
    strided convolutions see.

    Args:
        x: tensor of shape (B, C, *spatial).
        multiple: every spatial size of the result is a multiple of this.

    Returns:
        The padded tensor, and an index that crops a (B, C', *padded) output of the
        network back to the original spatial size (``y[crop]``).
    """
    spatial = x.shape[2:]
    totals = [-s % multiple for s in spatial]
    crop = (slice(None), slice(None)) + tuple(slice(t // 2, t // 2 + s) for t, s in zip(totals, spatial))
    if not any(totals):
        return x, crop
    pad: list[int] = []
    for total in reversed(totals):  # F.pad lists the last dimension first
        pad += [total // 2, total - total // 2]
    return F.pad(x, pad), crop


def _zero(module: nn.Module) -> nn.Module:
    # Zero-initialised last layers make every residual block start as the identity,
    # which is what lets this deep U-Net train stably without normalisation at the head.
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


def _timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ordered [cos | sin], as in the reference diffusion code."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class _ResBlock(nn.Module):
    """GN-SiLU-conv, + embedding, GN-SiLU-dropout-zero conv, AdaDM scale, residual add."""

    def __init__(
        self, spatial_dims: int, cin: int, cout: int, emb_dim: int, groups: int, use_ada: bool, dropout: float
    ) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.in_layers = nn.Sequential(_group_norm(cin, groups), nn.SiLU(), conv(cin, cout, 3, padding=1))
        self.phi: nn.Module | None = None
        if use_ada:
            # phi is a 1x1 conv on a single value (2 parameters), kept as a conv so the
            # checkpoint keys and shapes match the reference; w=1, b=0 starts as exp(log s) = s.
            self.phi = conv(1, 1, 1)
            nn.init.ones_(self.phi.weight)
            nn.init.zeros_(self.phi.bias)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, cout)) if emb_dim else None
        self.out_layers = nn.Sequential(
            _group_norm(cout, groups), nn.SiLU(), nn.Dropout(dropout), _zero(conv(cout, cout, 3, padding=1))
        )
        self.skip_connection = nn.Identity() if cin == cout else conv(cin, cout, 1)

    def forward(self, x: Tensor, emb: Tensor | None) -> Tensor:
        h = self.in_layers(x)
        if self.emb_layers is not None and emb is not None:
            e = self.emb_layers(emb).to(h.dtype)
            h = h + e.reshape(*e.shape, *([1] * (h.ndim - 2)))
        h = self.out_layers(h)
        if self.phi is not None:
            # AdaDM (Liu et al. 2022): rescale the branch by the input's deviation so that
            # the normalisations do not wash out local contrast ("sharpens the edges").
            # The statistic is taken in fp32 and clamped: log(0) on a constant input
            # (an empty slice) would otherwise give NaN gradients; below 1e-6 the branch
            # is scaled to ~0 either way, so normal inputs see the reference behaviour.
            s = x.float().std(dim=tuple(range(1, x.ndim)), keepdim=True).clamp_min(1e-6)
            w, b = self.phi.weight.reshape(()), self.phi.bias.reshape(())
            h = h * torch.exp(w.float() * s.log() + b.float()).to(h.dtype)
        return self.skip_connection(x) + h


class _Attention(nn.Module):
    """Single-head attention (head dim = channels), self- or cross- depending on ``context_dim``."""

    def __init__(self, dim: int, context_dim: int | None = None) -> None:
        super().__init__()
        kv_dim = context_dim or dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(kv_dim, dim, bias=False)
        self.to_v = nn.Linear(kv_dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        src = x if context is None else context
        q, k, v = (t.unsqueeze(1) for t in (self.to_q(x), self.to_k(src), self.to_v(src)))
        # SDPA picks a fused (flash / memory-efficient) kernel: the L2 self-attention has
        # 4,032 tokens at 288x224, where an explicit N x N matrix would be wasteful.
        return self.to_out(F.scaled_dot_product_attention(q, k, v).squeeze(1))


class _GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class _FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(_GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _TransformerBlock(nn.Module):
    """Pre-LN self-attention, cross-attention to the context tokens, GEGLU feed-forward."""

    def __init__(self, dim: int, context_dim: int) -> None:
        super().__init__()
        self.attn1 = _Attention(dim)
        self.ff = _FeedForward(dim)
        self.attn2 = _Attention(dim, context_dim) if context_dim else None
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim) if context_dim else None
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor | None) -> Tensor:
        x = x + self.attn1(self.norm1(x))
        if self.attn2 is not None:
            x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class _SpatialTransformer(nn.Module):
    """GN, 1x1 projection, one transformer block over the voxels as tokens, zero-init 1x1 out, residual."""

    def __init__(self, spatial_dims: int, channels: int, groups: int, context_dim: int) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.norm = _group_norm(channels, groups)
        self.proj_in = conv(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([_TransformerBlock(channels, context_dim)])
        self.proj_out = _zero(conv(channels, channels, 1))

    def forward(self, x: Tensor, context: Tensor | None) -> Tensor:
        b, c, *spatial = x.shape
        h = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            h = block(h, context)
        return x + self.proj_out(h.transpose(1, 2).reshape(b, c, *spatial))


class _Downsample(nn.Module):
    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.op = Conv[Conv.CONV, spatial_dims](channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class _Upsample(nn.Module):
    # Nearest x2 then a conv avoids the checkerboard artefacts of transposed convolutions.
    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.conv = Conv[Conv.CONV, spatial_dims](channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _EmbedSequential(nn.Sequential):
    """Sequential that hands the time embedding to ResBlocks and the context to transformers."""

    def forward(self, x: Tensor, emb: Tensor | None, context: Tensor | None) -> Tensor:  # type: ignore[override]
        for layer in self:
            if isinstance(layer, _ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, _SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class ConditionedUNet(nn.Module):
    """Conditioned U-Net generator of "Converting T1-weighted MRI from 3T to 7T quality
    using deep learning" (arXiv:2507.13782), for both the plain and the GAN model.

    In the paper it is a 2.5D network: 3 adjacent 3T slices enter as channels and
    the matching 7T slice comes out. The architecture is Warvito's diffusion-brain
    LDM U-Net, used as a direct regressor:

    * Encoder: input conv, then per level ``num_res_blocks`` ResBlocks (widths
      ``channels * channel_mult[level]``) and a stride-2 conv downsample between
      levels. Decoder: ``num_res_blocks + 1`` ResBlocks per level, each fed
      ``[h, skip]`` concatenated (skips popped last-in-first-out), then nearest x2
      upsampling + conv. Middle: ResBlock - SpatialTransformer - ResBlock.
    * ResBlock: GN(eps 1e-6) - SiLU - conv3, + Linear(time embedding), GN - SiLU -
      dropout - zero-init conv3, the branch scaled by AdaDM exp(phi(log std(x))),
      skip = identity or 1x1 conv. The zero-init last convs make every block start
      as the identity.
    * SpatialTransformer after every ResBlock of the levels in ``attention_levels``:
      GN, 1x1 projection, single-head self-attention, cross-attention to the
      context tokens, GEGLU feed-forward (pre-LayerNorm, residual), zero-init 1x1
      projection, residual. The context (age, sex, slice position in the paper;
      one scalar per token) reaches the network only there, so the tokens carry no
      order and any number of them may be passed.
    * The diffusion time-embedding MLP is kept with t = 1: it acts as a learned
      per-block bias, and the released weights (and parameter counts) include it.
    * Head: SiLU - zero-init conv3, linear output.

    Paper configurations (``channels=256, channel_mult=(1, 2, 2, 2),
    num_res_blocks=3, norm_groups=64, context_dim=1``): the plain U-Net has
    ``attention_levels=(2, 3)`` and 259,109,181 parameters; the GAN generator has
    ``attention_levels=(3,)`` and 222,326,589 (Appendix A.2).

    Any spatial size is accepted: the input is zero-padded symmetrically to a
    multiple of ``2 ** (len(channel_mult) - 1)`` and the output cropped back.

    Args:
        spatial_dims: 2 (the paper, slices) or 3 (volumes).
        in_channels: input channels (3 adjacent slices in the paper).
        out_channels: output channels.
        channels: width of the first level (``model_channels``); the time embedding
            has ``4 * channels`` features.
        channel_mult: width multiplier per resolution level.
        num_res_blocks: ResBlocks per encoder level (the decoder has one more).
        attention_levels: indices of the levels (0 = full resolution) whose
            ResBlocks are each followed by a SpatialTransformer. The middle block
            always has one. Self-attention is quadratic in the number of voxels, so
            high-resolution levels are expensive.
        context_dim: features of each conditioning token; 0 removes
            cross-attention and ``forward`` ignores ``context``.
        norm_groups: GroupNorm groups; must divide every level width.
        use_ada: scale the residual branches with AdaDM (2 parameters per ResBlock).
        dropout: dropout inside the ResBlocks (the reference transformers have none).
        time_embedding: keep the constant (t = 1) time-embedding path.
        checkpointing: activation checkpointing (``torch.utils.checkpoint``, non-reentrant)
            of every input, middle and output block while gradients are recorded: a
            block keeps only its input during the forward pass and recomputes its
            insides in the backward pass. The paper U-Net then holds about a third of
            its activations for about a third more compute per step (``fit --summary``
            shows both plans); the outputs and gradients are unchanged.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 1,
        channels: int = 256,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 3,
        attention_levels: Sequence[int] = (2, 3),
        context_dim: int = 1,
        norm_groups: int = 64,
        use_ada: bool = True,
        dropout: float = 0.0,
        time_embedding: bool = True,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if not channel_mult:
            raise ValueError("channel_mult must have at least one level")
        bad = [a for a in attention_levels if not 0 <= a < len(channel_mult)]
        if bad:
            raise ValueError(f"attention_levels {bad} outside the {len(channel_mult)} levels of channel_mult")
        if context_dim < 0:
            raise ValueError(f"context_dim must be >= 0, got {context_dim}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = channels
        self.context_dim = context_dim
        self.checkpointing = checkpointing
        self.size_divisor = 2 ** (len(channel_mult) - 1)
        conv = Conv[Conv.CONV, spatial_dims]
        emb_dim = 4 * channels if time_embedding else 0
        self.time_embed = (
            nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            if time_embedding
            else None
        )

        def res(cin: int, cout: int) -> _ResBlock:
            return _ResBlock(spatial_dims, cin, cout, emb_dim, norm_groups, use_ada, dropout)

        def attn(ch: int) -> _SpatialTransformer:
            return _SpatialTransformer(spatial_dims, ch, norm_groups, context_dim)

        self.input_blocks = nn.ModuleList([_EmbedSequential(conv(in_channels, channels, 3, padding=1))])
        skip_chs, ch = [channels], channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * channels)]
                ch = mult * channels
                if level in attention_levels:
                    layers.append(attn(ch))
                self.input_blocks.append(_EmbedSequential(*layers))
                skip_chs.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(_EmbedSequential(_Downsample(spatial_dims, ch)))
                skip_chs.append(ch)

        self.middle_block = _EmbedSequential(res(ch, ch), attn(ch), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_chs.pop(), mult * channels)]
                ch = mult * channels
                if level in attention_levels:
                    layers.append(attn(ch))
                if level and i == num_res_blocks:
                    layers.append(_Upsample(spatial_dims, ch))
                self.output_blocks.append(_EmbedSequential(*layers))

        self.out = nn.Sequential(nn.SiLU(), _zero(conv(ch, out_channels, 3, padding=1)))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Map a 3T input to the 7T estimate.

        Args:
            x: (B, in_channels, *spatial), any spatial size.
            context: (B, n_tokens, context_dim) conditioning tokens; required when
                ``context_dim > 0``, ignored when it is 0.

        Returns:
            (B, out_channels, *spatial), linear (no output activation).
        """
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected x of shape (B, {self.in_channels}, {self.spatial_dims} spatial dims), got {tuple(x.shape)}"
            )
        if not self.context_dim:
            context = None
        elif context is None:
            raise ValueError(f"this model has context_dim={self.context_dim}: pass context (B, n_tokens, ctx_dim)")
        elif context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[2] != self.context_dim:
            raise ValueError(
                f"expected context of shape ({x.shape[0]}, n_tokens, {self.context_dim}), got {tuple(context.shape)}"
            )
        else:
            context = context.to(x.dtype)

        h, crop = pad_to_multiple(x, self.size_divisor)
        emb = None
        if self.time_embed is not None:
            # t = 1 for every sample, so one row is computed and broadcast over the batch.
            t_emb = _timestep_embedding(torch.ones(1, device=x.device), self.channels)
            emb = self.time_embed(t_emb.to(self.time_embed[0].weight.dtype))

        block = self._checkpointed if self.checkpointing and torch.is_grad_enabled() else _call
        hs = []
        for module in self.input_blocks:
            h = block(module, h, emb, context)
            hs.append(h)
        h = block(self.middle_block, h, emb, context)
        for module in self.output_blocks:
            h = block(module, torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)[crop]

    @staticmethod
    def _checkpointed(module: nn.Module, h: Tensor, emb: Tensor | None, context: Tensor | None) -> Tensor:

        # Non-reentrant: works with inputs that need no gradient, keeps autocast and the
        # RNG state (dropout) of the first pass for the recomputation.
        return checkpoint(module, h, emb, context, use_reentrant=False)


def _call(module: nn.Module, h: Tensor, emb: Tensor | None, context: Tensor | None) -> Tensor:
    return module(h, emb, context)
