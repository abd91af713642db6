"""Draw ``docs/img/applying_full_head.png``: a full-head scan, the brain mask ``predict
--skull-strip`` extracts from it, and what ``predict`` writes, on the scan's own grid.

The scan is the full-head phantom (:mod:`t7synth.data.demo.head`) on an oblique 1.5 mm
grid. No trained checkpoint ships with the repository, so an identity network stands in
for a trained one: the output column is exactly what ``predict`` gives the network
(extracted, N4-corrected, normalised) and writes back, zero outside the brain. Run:
``python docs/applying_figure.py``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

from t7synth.config import Config
from t7synth.data.demo.head import full_head, grid_around, resliced
from t7synth.data.naming import brain_mask_output
from t7synth.inference.jobs import Job
from t7synth.inference.preprocess_raw import RawPipeline
from t7synth.inference.synthesiser import Synthesiser
from t7synth.models.base import SynthesisModule
from t7synth.plotting import save_panels

OUT = Path(__file__).resolve().parent / "img" / "applying_full_head.png"


class _CentreSlice(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, x.shape[1] // 2 :][:, :1]


class Identity(SynthesisModule):
    def build_net(self) -> nn.Module:
        return _CentreSlice()


def main() -> None:
    config = Config().to_dict()
    config["geometry"].update(mode="slab", slices=3, axis=1, target="center")
    pipeline = RawPipeline(Synthesiser(Identity(config)), skull_strip=True, n4=True, preprocess="none")
    phantom = full_head(seed=0)
    affine, shape = grid_around(phantom, (1.5, 1.5, 1.5), rotation_deg=15.0)
    scan = resliced(phantom, affine, shape)
    with tempfile.TemporaryDirectory() as folder:
        source, output = Path(folder) / "head.nii.gz", Path(folder) / "head_synth7T.nii.gz"
        nib.save(nib.Nifti1Image(scan.head, affine), source)
        nib.save(nib.Nifti1Image(scan.mask.astype(np.uint8), affine), Path(folder) / "true_mask.nii.gz")
        pipeline.write(Job(source=source, output=output))
        head = np.asarray(nib.as_closest_canonical(nib.load(source)).dataobj, dtype=np.float32)
        mask = np.asarray(nib.as_closest_canonical(nib.load(brain_mask_output(output))).dataobj) > 0
        synthetic = np.asarray(nib.as_closest_canonical(nib.load(output)).dataobj, dtype=np.float32)
        truth = np.asarray(nib.as_closest_canonical(nib.load(Path(folder) / "true_mask.nii.gz")).dataobj) > 0
    dice = 2.0 * float((mask & truth).sum()) / float(mask.sum() + truth.sum())
    row = pipeline.rows[0]
    columns = [
        ("full-head input", head / np.percentile(head, 99.5), "gray", 1.0),
        ("deepbet mask", mask.astype(np.float32), "gray", 1.0),
        ("predict output", synthetic, "gray", 1.0),
    ]
    title = (
        f"oblique 1.5 mm full-head phantom; brain {row['brain_volume_ml']:.0f} ml, "
        f"Dice {dice:.3f} with the true mask (identity network)"
    )
    print(save_panels(OUT, columns, mask, title))


if __name__ == "__main__":
    main()
