"""``vnet``: the 3D V-Net baseline of Cui et al. (MICCAI 2024), trained with in-brain L1."""

from __future__ import annotations

from torch import nn

from t7synth.models.base import SynthesisModule, build_net


class VNetModule(SynthesisModule):
    """V-Net of Cui et al., "7T MRI Synthesization from 3T Acquisitions" (MICCAI 2024).

    A 3D patch model (Cui et al., MICCAI 2024; abbasilab/Synthetic_7T_MRI): cubes of 3T go in, the same cubes
    of 7T come out, and whole volumes are tiled with overlapping patches blended by a
    Hann window (``geometry.overlap``), as the reference stitched them with TorchIO's
    ``GridAggregator``. The net is :class:`~t7synth.nets.vnet.VNet`; with the published
    widths (16 → 256) it has 15,734,497 parameters (``experiments/paper_vnet.yaml``).

    Loss: L1 over the brain only (``loss.l1_in_mask``). The reference multiplied the
    prediction by the brain mask and averaged over the whole patch, background included;
    averaging over brain voxels instead makes a patch's weight independent of how much
    background it holds (see ``docs/models.md``). Optimiser as published: Adam, lr 1e-3,
    coupled L2 weight decay 1e-5 (``torch.optim.Adam(weight_decay=...)``), no decay of the
    learning rate (``step_gamma: 1``).

    The defaults below are demo-sized: 32³ patches and half the published widths, so
    the model trains on a 2-core CPU in minutes; the published network and schedule are
    in ``experiments/paper_vnet.yaml``.
    """

    DEFAULTS = {
        "model": {"net": {"channels": [8, 16, 32, 64, 128], "norm": "batch"}, "conditioning": False},
        "geometry": {"mode": "patch", "patch": [32, 32, 32], "overlap": 8},
        "loss": {"l1": 1.0, "l1_in_mask": True},
        "optim": {"lr": 1e-3, "weight_decay": 1e-5, "step_gamma": 1.0},
    }

    def build_net(self) -> nn.Module:
        from t7synth.nets.vnet import VNet

        return build_net(VNet, self.config.model.net, spatial_dims=3, in_channels=1, out_channels=1)
