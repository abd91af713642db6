"""``watnet``: the official 2.5D spatial + wavelet WATNet of Qu et al. (MedIA 2020)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from t7synth.data import batches
from t7synth.models.base import SynthesisModule, build_net


class WATNetModule(SynthesisModule):
    """WATNet of Qu et al., "Synthesized 7T MRI from 3T MRI via deep learning in spatial
    and wavelet domains" (Medical Image Analysis 62:101663, 2020), official design.

    A 2.5D model that predicts the whole slab (Qu et al., MedIA 2020; github.com/Liangqiong/WATNet): three
    consecutive 3T slices in, the same three 7T slices out (``geometry.target: all``).
    Training sees 64×64 in-plane crops of the slabs (``geometry.inplane``), as
    published; whole-volume inference slides the 3-slice window one slice at a time over
    full slices and averages the three overlapping predictions of every slice, as the
    official test script did. The net is :class:`~t7synth.nets.watnet.WATNet`
    (1,219,139 parameters with the published width 64 and ``groups=4``).

    Wavelet statistics: the official code z-scored every Haar subband type with dataset
    statistics. They are fitted here when training starts (:meth:`on_fit_start`) on the
    brain-containing slices of the training subjects, the same on every DDP rank, and
    kept in the net's ``wavelet_mean``/``wavelet_std`` buffers, hence in checkpoints;
    a resumed run keeps the fitted values.

    Optimiser as published: Adam, lr 2.5e-4, coupled L2 weight decay 1e-4, with the
    Caffe per-layer multipliers (biases and the 17×17 output conv at 0.1×lr,
    upsamplers at 0.1×decay) from :meth:`~t7synth.nets.watnet.WATNet.param_groups`;
    the official ×0.8-every-34k-iterations decay is a per-epoch StepLR in
    ``experiments/paper_watnet.yaml``. Loss: L1 over the three output slices.

    One deviation from the official initialisation: the 17×17 output conv starts at
    zero, so the untrained network is the identity (see :meth:`build_net`).

    The defaults below are demo-sized (width 16, a larger learning rate and a faster
    decay for a short schedule).
    """

    DEFAULTS = {
        "model": {"net": {"features": 16, "groups": 4}, "conditioning": False},
        "geometry": {"mode": "slab", "slices": 3, "axis": 1, "target": "all", "inplane": [64, 64]},
        "loss": {"l1": 1.0},
        "optim": {"lr": 1e-3, "weight_decay": 1e-4, "step_gamma": 0.5, "step_every": 8},
    }

    def build_net(self) -> nn.Module:
        from t7synth.nets.watnet import WATNet

        slices = self.geometry.slices
        net = build_net(WATNet, self.config.model.net, in_channels=slices, out_channels=slices)
        # Deviation from the Caffe init (MSRA on every conv): the output conv starts at
        # zero, so through the global residual the untrained network is the identity.
        # With MSRA there, the untrained residual is several times the [0, 1] intensity
        # range and the first several hundred iterations only undo it (measured on the
        # demo: L1 still above the identity's after 720 iterations, 10 % below it with
        # the zero start). The official run had 132k iterations to spare; short runs do
        # not. The paper's U-Net zero-initialises its output head for the same reason.
        nn.init.zeros_(net.out_conv.weight)
        return net

    def configure_optimizers(self):
        optim = self.config.optim
        groups = self.net.param_groups(optim.lr, optim.weight_decay)
        optimizer = torch.optim.Adam(groups, lr=optim.lr, betas=tuple(optim.betas))
        return {"optimizer": optimizer, "lr_scheduler": self.lr_schedule(optimizer)}

    def on_fit_start(self) -> None:
        super().on_fit_start()
        # A checkpoint restored before this hook already carries fitted statistics;
        # refitting would change the inputs the restored weights were trained on.
        if self.net.wavelet_stats_fitted:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        subjects = getattr(datamodule, "subjects", {}).get("train") if datamodule is not None else None
        if not subjects:
            return
        self.net.fit_wavelet_stats(self.training_slabs(subjects))

    def training_slabs(self, subjects: Sequence, slabs_per_batch: int = 32) -> Iterator[torch.Tensor]:
        """Every brain-containing slice of ``subjects``, as (B, slices, H, W) net inputs.

        Consecutive slices are grouped into non-overlapping slabs, so each slice counts
        once: the statistics are pooled over slices, and the Haar transform treats the
        channels of a slab independently. Whole slices (what inference sees) rather than
        random training crops keep the statistics deterministic, identical on every DDP
        rank, and free of the training RNG.
        """
        axis, k = self.geometry.axis, self.geometry.slices
        for subject in subjects:
            slices = batches.slab_to_channels(subject["source"].data[None].float(), axis)[0]
            brain = batches.slab_to_channels(subject["mask"].data[None], axis)[0].flatten(1).gt(0).any(dim=1)
            slices = slices[brain]
            usable = len(slices) // k * k
            slabs = slices[:usable].reshape(-1, k, *slices.shape[1:])
            yield from torch.split(slabs, slabs_per_batch)
