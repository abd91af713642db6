"""Deterministic preprocessing, done once per subject and cached.

Steps (Gicquel et al., arXiv:2507.13782, §2, steps 5-7): RAS+ orientation; a brain mask (the
dataset's, else the 3T image's non-zero voxels); per volume, intensities scaled by the
brain's 1st and 99th percentiles (:func:`normalise`, ``data.normalisation``); crop or
pad to a fixed shape centred on the brain. Augmentation is kept apart
(``transforms.py``) because it is random and cheap, while this is fixed and
comparatively slow.

The cache key of a subject covers its files (path, size, modification time) and the
preprocessing settings, so editing a file or a setting recomputes just what changed.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from t7synth.data.layout import SubjectRecord
from t7synth.data.profile import outside_fraction
from t7synth.data.volumes import brain_mask, check_pair, load_volume
from t7synth.errors import UserError

#: Bump when the preprocessing code changes what it produces.
CACHE_VERSION = 2  # 2: outside_fraction (the training input profile, data/profile.py)

#: ``data.normalisation`` values (the config's ``Literal`` lists the same two).
NORMALISATIONS = ("clip", "authors")


@dataclass(frozen=True)
class Preprocessing:
    """The settings that define a preprocessed volume.

    Args:
        percentiles: the brain's percentiles that map to 0 and 1.
        shape: fixed output shape, or ``None`` to keep the input shape.
        normalisation: ``clip`` or ``authors`` (see :func:`normalise`).
    """

    percentiles: tuple[float, float] = (1.0, 99.0)
    shape: tuple[int, int, int] | None = None
    normalisation: str = "clip"

    @classmethod
    def from_config(cls, data) -> Preprocessing:
        """The settings of a config's ``data`` section (training, evaluate and predict agree)."""
        return cls(
            percentiles=tuple(data.percentiles),
            shape=tuple(data.shape) if data.shape else None,
            normalisation=data.normalisation,
        )

    def key(self) -> dict:
        return {
            "percentiles": list(self.percentiles),
            "shape": list(self.shape) if self.shape else None,
            "normalisation": self.normalisation,
            "v": CACHE_VERSION,
        }


def normalise(volume: torch.Tensor, mask: torch.Tensor, percentiles=(1.0, 99.0), mode: str = "clip") -> torch.Tensor:
    """Scale a volume by its brain's percentiles ``p_lo``, ``p_hi``.

    * ``clip``: clip to [p_lo, p_hi] inside ``mask``, min-max to [0, 1], zero outside
      the mask (TorchIO's ``RescaleIntensity`` does the clip and the scaling). Every
      voxel lies in [0, 1] and the background is exactly 0 in both images.
    * ``authors``: the official ``func/images_to_npy/pickling.py`` exactly. The image
      is first zeroed outside the mask (the authors' inputs were skull-stripped, and
      their 7T was multiplied by ``3T > 0``); the percentiles are taken over the brain's
      positive voxels (``v[v > 0]``, NumPy's linear interpolation, in float64); then
      the *unclipped* image becomes ``(x - p_lo) / (p_hi - p_lo)``. The background is
      ``-p_lo / (p_hi - p_lo)`` (negative, about -0.4 to -0.56 on the demo data) and
      about 1 % of brain voxels fall below 0 and 1 % above 1.

    Args:
        volume: (1, I, J, K) float tensor.
        mask: (1, I, J, K) tensor, non-zero inside the brain.
        percentiles: ``(p_lo, p_hi)`` in percent.
        mode: ``clip`` or ``authors``.

    Raises:
        UserError: an empty mask, or (``authors``) a brain with no positive voxel or a
            constant one.
    """
    inside = mask > 0
    if not bool(inside.any()):
        raise UserError("the brain mask is empty")
    if mode == "authors":
        x = volume.double() * inside
        values = x[inside & (x > 0)].numpy()
        if values.size == 0:
            raise UserError("data.normalisation authors: the brain holds no voxel above 0 to take percentiles from")
        low, high = np.percentile(values, tuple(percentiles))
        if not high > low:
            raise UserError(
                f"data.normalisation authors: the brain's {percentiles[0]}th and {percentiles[1]}th percentiles "
                f"are equal ({low})"
            )
        return ((x - low) / (high - low)).float()
    if mode != "clip":
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {mode!r}")
    import torchio as tio

    rescale = tio.RescaleIntensity(out_min_max=(0.0, 1.0), percentiles=tuple(percentiles))
    scaled = rescale.rescale(volume.float(), inside, "volume")
    return scaled * inside


def crop_or_pad(subject, shape):
    """Crop or pad every image of a TorchIO subject to ``shape``, centred on its mask."""
    import torchio as tio

    return tio.CropOrPad(tuple(shape), mask_name="mask")(subject)


def preprocess_record(record: SubjectRecord, settings: Preprocessing) -> dict[str, torch.Tensor]:
    """Read, check and preprocess one subject.

    Returns:
        ``{"source", "target"}`` float32 (1, I, J, K) (in [0, 1] for ``clip``; see
        :func:`normalise`), ``"mask"`` uint8, ``"affine"`` float64 (4, 4) of the
        output grid, and ``"outside_fraction"``: the share of the raw 3T's voxels
        outside the mask that are above 0 (whether it was skull-stripped,
        :mod:`t7synth.data.profile`). Padding adds zeros, as the authors' ``np.pad`` did after their
        normalisation.

    Raises:
        UserError: any bad file (see :func:`~t7synth.data.volumes.load_volume`) or a
            pair whose grids differ.
    """
    import torchio as tio

    source, source_affine = load_volume(record.source)
    target, target_affine = load_volume(record.target)
    check_pair(record.source, source.shape, source_affine, record.target, target.shape, target_affine)
    mask = brain_mask(record.source, source, source_affine, record.mask)
    mask_t = torch.from_numpy(mask[None].astype(np.uint8))
    subject = tio.Subject(
        source=tio.ScalarImage(
            tensor=normalise(torch.from_numpy(source[None]), mask_t, settings.percentiles, settings.normalisation),
            affine=source_affine,
        ),
        target=tio.ScalarImage(
            tensor=normalise(torch.from_numpy(target[None]), mask_t, settings.percentiles, settings.normalisation),
            affine=source_affine,
        ),
        mask=tio.LabelMap(tensor=mask_t, affine=source_affine),
    )
    if settings.shape is not None:
        subject = crop_or_pad(subject, settings.shape)
    return {
        "source": subject["source"].data.float().contiguous(),
        "target": subject["target"].data.float().contiguous(),
        "mask": subject["mask"].data.to(torch.uint8).contiguous(),
        "affine": torch.as_tensor(subject["source"].affine, dtype=torch.float64),
        "outside_fraction": torch.tensor(outside_fraction(source, mask), dtype=torch.float64),
    }


def cache_key(record: SubjectRecord, settings: Preprocessing) -> str:
    """Hash of the subject's files (path, size, mtime) and the settings."""
    files = [record.source, record.target] + ([record.mask] if record.mask else [])
    stats = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    blob = json.dumps({"files": stats, "settings": settings.key()}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def load_or_preprocess(record: SubjectRecord, settings: Preprocessing, cache_dir: Path) -> dict[str, torch.Tensor]:
    """The preprocessed subject, from ``cache_dir`` when present, else computed and cached.

    The cache file is a plain tensor dict, written atomically and read with
    ``weights_only=True`` (no pickled code).
    """
    from t7synth.files import atomic_path

    path = Path(cache_dir) / f"{record.subject}-{cache_key(record, settings)}.pt"
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # a cache file from an older torch or a full disk: recompute
            path.unlink(missing_ok=True)
    data = preprocess_record(record, settings)
    # Serialised in memory first: torch.save to a file reports a full disk as a
    # RuntimeError of its C++ writer, a plain write as the OSError atomic_path turns
    # into one line naming the file.
    buffer = io.BytesIO()
    torch.save(data, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return data
