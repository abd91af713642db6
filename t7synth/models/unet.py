"""``unet``: the paper's conditioned 2.5D U-Net, trained with L1 (+ perceptual)."""

from __future__ import annotations

import torch
from torch import nn

from t7synth.models.base import SynthesisModule, build_net
from t7synth.nets.unet import ConditionedUNet


class UNetModule(SynthesisModule):
    """The specialised U-Net of Gicquel et al. (arXiv:2507.13782).

    Three adjacent 3T slices along ``geometry.axis`` go in as channels (axis 2, axial,
    in the paper configs; the demo-sized defaults keep axis 1); the centre 7T slice
    comes out. Age, sex and slice position condition every attention block when
    ``model.conditioning`` is on. The defaults below are demo-sized (base width 32);
    ``experiments/paper_unet.yaml`` holds the published 259.1M-parameter network and
    its schedule (Adam 1e-4, StepLR γ 0.5 per epoch, L1 + 0.01 perceptual).
    """

    DEFAULTS = {
        "geometry": {"mode": "slab", "slices": 3, "axis": 1, "target": "center"},
        "model": {
            "net": {
                "channels": 32,
                "channel_mult": [1, 2, 2, 2],
                "num_res_blocks": 1,
                "attention_levels": [3],
                "norm_groups": 8,
                "context_dim": 1,
            }
        },
        "optim": {"lr": 1e-4, "step_gamma": 0.5},
    }

    def build_net(self) -> nn.Module:

        return build_net(ConditionedUNet, self.config.model.net, in_channels=self.geometry.slices, out_channels=1)

    def uses_context(self) -> bool:
        return self.config.model.conditioning and getattr(self.net, "context_dim", 0) > 0

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        output = self.net(x, context)
        if self.config.model.residual:
            centre = x.shape[1] // 2
            output = output + x[:, centre : centre + 1]
        return output
