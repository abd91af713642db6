"""``raw_overhead``: the extra time of ``predict --skull-strip --n4`` on a full-head scan
over ``predict`` on the same scan already stripped and masked, as a fraction of the
latter (the demo U-Net's predict time on a demo-sized volume).

The scan is the full-head phantom (:mod:`t7synth.data.demo.head`: the MNI152 template
with scalp, skull, neck, noise and bias field) on the demo's 1.5 mm grid; the masked
input is its true brain with the true mask. Both go through the same
:class:`~t7synth.inference.preprocess_raw.RawPipeline` and the demo U-Net (random
weights: time does not depend on them), files read and written as ``predict`` does.
deepbet's networks are loaded once before timing (a command loads them once per run).
Run: ``python benchmarks/raw.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import common
import torch


def run(repeats: int = 1) -> dict:
    import nibabel as nib

    from t7synth import registry
    from t7synth.data.demo.head import full_head, grid_around, resliced
    from t7synth.data.skullstrip import extractor
    from t7synth.inference.jobs import Job
    from t7synth.inference.preprocess_raw import RawPipeline
    from t7synth.inference.synthesiser import Synthesiser

    config = common.demo_config("unet")
    torch.manual_seed(0)
    model = registry.get("unet")(config.to_dict())
    voxel = config.data.demo_voxel_size
    model.voxel_size.fill_(voxel)
    synthesiser = Synthesiser(model)
    phantom = full_head(seed=0)
    affine, shape = grid_around(phantom, (voxel, voxel, voxel))
    scan = resliced(phantom, affine, shape)
    extractor("cpu")
    with tempfile.TemporaryDirectory(prefix="t7synth-bench-raw-") as folder:
        folder = Path(folder)
        for name, array in (("head", scan.head), ("brain", scan.brain), ("mask", scan.mask.astype("uint8"))):
            nib.save(nib.Nifti1Image(array, affine), folder / f"{name}.nii.gz")
        raw = RawPipeline(synthesiser, skull_strip=True, n4=True, preprocess="none")
        masked = RawPipeline(synthesiser, preprocess="none")
        variants = {
            "masked": lambda: masked.write(
                Job(source=folder / "brain.nii.gz", output=folder / "b.nii.gz", mask=folder / "mask.nii.gz")
            ),
            "raw": lambda: raw.write(Job(source=folder / "head.nii.gz", output=folder / "a.nii.gz")),
        }
        variants["masked"]()  # one untimed prediction: the network's first call pays for set-up
        timings = common.interleaved(variants, repeats, warmup=False)
    raw_s, masked_s = timings["raw"].median, timings["masked"].median
    return {"raw_s": raw_s, "masked_s": masked_s, "overhead": (raw_s - masked_s) / masked_s, "shape": shape}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    result = run(parser.parse_args().repeats)
    print(
        f"full head with --skull-strip --n4 {result['raw_s']:.2f} s, masked input {result['masked_s']:.2f} s "
        f"({'x'.join(map(str, result['shape']))} voxels at 1.5 mm)"
    )
    print(f"raw_overhead={result['overhead']:.2f}")


if __name__ == "__main__":
    main()
