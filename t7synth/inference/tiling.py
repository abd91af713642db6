"""Whole-volume inference by tiling, shared by validation, test and ``predict``.

2.5D models see a window of ``k`` slices centred on every slice in turn: TorchIO's
``GridSampler`` with patch ``k`` and overlap ``k - 1`` along the slab axis (padding the
volume with ``(k - 1) / 2`` zero slices at each end), and ``GridAggregator`` keeps the
centre slice of each window (``crop``) or, for models that predict the whole slab,
averages the overlapping predictions (``average``). 3D models tile overlapping patches
and blend them with a Hann window, which avoids seams.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from t7synth.config import GeometryConfig
from t7synth.data import batches

#: ``predict(source_batch, location_batch) -> output``: the source is (B, 1, *patch);
#: for ``slab`` geometry the output has the slab's slices as channels, (B, 1, H, W) for
#: ``target: center`` (the centre slice) or (B, k, H, W) for ``all``; for ``patch``
#: geometry it is (B, 1, *patch).
PatchPredictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def grid(geometry: GeometryConfig, shape) -> tuple[tuple[int, int, int], tuple[int, int, int], str]:
    """Patch size, overlap and aggregation mode that tile a volume of ``shape``."""
    if geometry.mode == "slab":
        patch = batches.slab_patch_size(shape, geometry.slices, geometry.axis)
        overlap = [0, 0, 0]
        overlap[geometry.axis] = geometry.slices - 1
        mode = "crop" if geometry.target == "center" else "average"
        return patch, tuple(overlap), mode
    patch = tuple(min(p, s) for p, s in zip(geometry.patch, shape))
    overlap = tuple(min(geometry.overlap, p - 2) // 2 * 2 for p in patch)
    return patch, overlap, "hann"


@torch.no_grad()
def predict_volume(predict: PatchPredictor, source: torch.Tensor, geometry: GeometryConfig, batch_size: int = 16) -> torch.Tensor:
    """Predict a whole (1, I, J, K) volume; returns a float32 (1, I, J, K) tensor.

    Args:
        predict: the model's patch predictor (see :data:`PatchPredictor`). The
            locations it gets index the original volume, as in training, so a window
            that starts at ``j`` is centred on slice ``j + k // 2`` (the sampler pads
            the ends with zeros, so ``j`` may be negative).
        source: the preprocessed input volume.
        geometry: the model's geometry.
        batch_size: windows or patches per forward pass.
    """
    import torchio as tio

    subject = tio.Subject(source=tio.ScalarImage(tensor=source.float().cpu()))
    patch, overlap, mode = grid(geometry, source.shape[1:])
    sampler = tio.GridSampler(subject, patch, overlap, padding_mode=0)
    aggregator = tio.GridAggregator(sampler, overlap_mode=mode)
    loader = torch.utils.data.DataLoader(sampler, batch_size=batch_size, collate_fn=batches.collate)
    # GridSampler reports locations in the padded volume; it pads by half the overlap.
    shift = torch.tensor([o // 2 for o in overlap] * 2)
    for batch in loader:
        location = batch["location"]
        output = predict(batch["source"], location - shift).float().cpu()
        if geometry.mode == "slab":
            if geometry.target == "center":
                # The aggregator crops each window to its centre slice: the other
                # slices of this stand-in slab are never used.
                output = output.expand(-1, geometry.slices, -1, -1)
            output = batches.channels_to_slab(output, geometry.axis)
        aggregator.add_batch(output, location)
    return aggregator.get_output_tensor().float()
