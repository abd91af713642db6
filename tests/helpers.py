"""Helpers that tests import: tiny paired datasets written as real NIfTI files, the
repository root, a tiny U-Net's settings and a constant-output module.

Fixtures live in ``conftest.py``; tests import plain functions and constants from here
(``from helpers import make_dataset``), never from ``conftest`` (pytest's own module).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: The repository root: tests find ``experiments/``, ``sweeps/`` and ``pyproject.toml``
#: from here, never from the working directory, so pytest runs from any folder.
REPO = Path(__file__).resolve().parents[1]


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def make_pair(shape=(20, 24, 18), seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 'brain' (an ellipsoid with two tissue classes) as 7T, and a degraded 3T copy."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    mask = radius < 0.8
    texture = gaussian_filter(rng.standard_normal(shape), 1.5)
    target = np.where(texture > 0, 0.8, 0.45) * mask + 0.01 * rng.standard_normal(shape) * mask
    source = gaussian_filter(target, 0.8) ** 1.3 + 0.03 * rng.standard_normal(shape) * mask
    return source.astype(np.float32) * mask, target.astype(np.float32), mask.astype(np.uint8)


def make_dataset(root: Path, n_subjects: int = 4, shape=(20, 24, 18), splits: bool = True, masks: bool = True) -> Path:
    """Write a paired dataset folder in t7synth's layout and return its path."""
    from t7synth.data import naming

    root.mkdir(parents=True, exist_ok=True)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    lines = ["participant_id\tage\tsex" + ("\tsplit" if splits else "")]
    for index in range(n_subjects):
        subject = f"sub-{index + 1:03d}"
        source, target, mask = make_pair(shape, seed=index)
        write_nifti(naming.source_path(root, subject), source, affine)
        write_nifti(naming.target_path(root, subject), target, affine)
        if masks:
            write_nifti(naming.mask_path(root, subject), mask, affine)
        split = "test" if index == n_subjects - 1 else "val" if index == n_subjects - 2 else "train"
        lines.append(f"{subject}\t{60 + index}\t{'F' if index % 2 else 'M'}" + (f"\t{split}" if splits else ""))
    (root / naming.PARTICIPANTS).write_text("\n".join(lines) + "\n")
    return root


TINY_UNET = [
    "model.net.channels=8",
    "model.net.channel_mult=[1,2]",
    "model.net.num_res_blocks=1",
    "model.net.attention_levels=[1]",
    "model.net.norm_groups=4",
    "data.batch_size=2",
    "data.samples_per_volume=2",
    "data.queue_length=4",
    "data.inference_batch_size=8",
    "trainer.log_every_n_steps=1",
]


def constant_module(config: dict, value: float = 0.7):
    """A SynthesisModule whose 'network' answers ``value`` everywhere, inside the brain
    or not: what masking and resampling do to a prediction shows in its output."""
    import torch
    from torch import nn

    from t7synth.models.base import SynthesisModule

    class _Constant(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full_like(x[:, :1], value)

    class ConstantModule(SynthesisModule):
        def build_net(self) -> nn.Module:
            return _Constant()

    return ConstantModule(config)


#: The sites and pairs of :func:`make_fieldbridge`: (source_dataset, number of T1W 3T/7T pairs).
FIELDBRIDGE_SITES = (("unc", 2), ("penn", 2), ("lausanne", 1))


def make_fieldbridge(root: Path, shape=(16, 18, 14), missing: bool = True, metadata: bool = True) -> Path:
    """A small FieldBridge-MRI style download: ``metadata/pairs.tsv`` and NIfTI files.

    Each site of :data:`FIELDBRIDGE_SITES` has that many T1W 3T/7T pairs (both rows,
    on one 0.5 mm grid, with a zero border around the 'brain'), one T2W 3T/7T pair and
    one T1W 1.5T/3T pair (the two skipped kinds). With ``missing``, one extra T1W
    3T/7T pair of ``penn`` lists a 7T file that does not exist.
    """
    root.mkdir(parents=True, exist_ok=True)
    affine = np.diag([0.5, 0.5, 0.5, 1.0])
    padded = tuple(s + 8 for s in shape)
    columns = "fieldbridge_id source_dataset pair_id modality field_strength paired_field_strength relative_path"
    lines, number = ["\t".join(columns.split() + ["split_group"])], 0

    def row(site, pair, modality, field, partner, relative, array=None):
        nonlocal number
        number += 1
        if array is not None:
            full = np.zeros(padded, np.float32)
            full[4:-4, 4:-4, 4:-4] = array
            write_nifti(root / relative, full, affine)
        lines.append(f"fb{number:04d}\t{site}\t{pair}\t{modality}\t{field}\t{partner}\t{relative}\ttrain")

    seed = 0
    for site, count in FIELDBRIDGE_SITES:
        for index in range(count + 1):
            seed += 1
            source, target, _ = make_pair(shape, seed=seed)
            pair = f"{site}_{index + 1:03d}"
            folder = f"{site}/{pair}"
            if index < count:
                row(site, pair, "T1W", "3T", "7T", f"{folder}/T1w_3T.nii.gz", source)
                row(site, pair, "T1W", "7T", "3T", f"{folder}/T1w_7T.nii.gz", target)
            else:  # a T2W pair and a 1.5T/3T T1W pair: skipped
                row(site, pair, "T2W", "3T", "7T", f"{folder}/T2w_3T.nii.gz", source)
                row(site, pair, "T2W", "7T", "3T", f"{folder}/T2w_7T.nii.gz", target)
                row(site, f"{pair}b", "T1W", "1.5T", "3T", f"{folder}/T1w_1p5T.nii.gz", source)
                row(site, f"{pair}b", "T1W", "3T", "1.5T", f"{folder}/T1w_3Tb.nii.gz", target)
    if missing:
        source, _, _ = make_pair(shape, seed=99)
        row("penn", "penn_099", "T1W", "3T", "7T", "penn/penn_099/T1w_3T.nii.gz", source)
        row("penn", "penn_099", "T1W", "7T", "3T", "penn/penn_099/T1w_7T.nii.gz")
    table = root / "metadata" / "pairs.tsv" if metadata else root / "pairs.tsv"
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text("\n".join(lines) + "\n")
    return root


def make_sited_dataset(root: Path, sites=(("siteA", 3), ("siteB", 3), ("siteC", 2)), shape=(20, 24, 18)) -> Path:
    """:func:`make_dataset` (no split column) with a ``site`` column: ``sites`` is
    (site, number of subjects) in subject order."""
    from t7synth.data import naming

    names = [site for site, count in sites for _ in range(count)]
    make_dataset(root, n_subjects=len(names), shape=shape, splits=False)
    table = root / naming.PARTICIPANTS
    lines = table.read_text().splitlines()
    lines = [lines[0] + "\tsite"] + [f"{line}\t{site}" for line, site in zip(lines[1:], names, strict=True)]
    table.write_text("\n".join(lines) + "\n")
    return root
