"""Building blocks shared by the networks: the one map from config strings to norm layers.

``"batch"`` and ``"instance"`` are what configs say (``model.net.norm`` of the V-Net,
``model.discriminator.norm`` of the GAN); MONAI's factories take specs. Instance norm is
``affine`` everywhere, so a network keeps the parameter names and count of its
BatchNorm version (a BatchNorm checkpoint loads with ``strict=False``, lacking only
the running-statistics buffers), and it does not depend on the per-GPU batch, so it
needs no SyncBatchNorm under DDP.
"""

from __future__ import annotations

from typing import Any

from monai.networks.layers.utils import get_norm_layer
from torch import nn

#: Config string -> MONAI norm spec (the ``norm=`` argument of MONAI networks).
NORMS: dict[str, Any] = {
    "batch": "batch",
    "instance": ("instance", {"affine": True}),
}


def norm_spec(name: str) -> Any:
    """The MONAI spec of ``name`` (``batch`` or ``instance``).

    Raises:
        ValueError: any other name.
    """
    if name not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {name!r}")
    return NORMS[name]


def norm_layer(name: str, spatial_dims: int, channels: int) -> nn.Module:
    """A ``spatial_dims``-D norm layer of ``channels`` channels for ``name``."""

    return get_norm_layer(norm_spec(name), spatial_dims=spatial_dims, channels=channels)
