"""Augmentation: spatial transforms move the whole pair, intensity transforms the 3T only."""

from __future__ import annotations

import torch
import torchio as tio

from t7synth.config import AugmentConfig
from t7synth.data.transforms import build_augmentation


def _subject() -> tio.Subject:
    generator = torch.Generator().manual_seed(0)
    source = torch.rand(1, 12, 10, 8, generator=generator) + 0.1
    target = torch.rand(1, 12, 10, 8, generator=generator) + 0.1
    mask = (torch.rand(1, 12, 10, 8, generator=generator) > 0.3).to(torch.uint8)
    return tio.Subject(
        source=tio.ScalarImage(tensor=source), target=tio.ScalarImage(tensor=target), mask=tio.LabelMap(tensor=mask)
    )


def test_all_off_is_no_transform():
    assert build_augmentation(AugmentConfig()) is None


def test_intensity_transforms_touch_the_source_only():
    subject = _subject()
    transform = build_augmentation(AugmentConfig(gamma=0.5, noise=0.2))
    torch.manual_seed(1)
    out = transform(subject)
    assert not torch.equal(out["source"].data, subject["source"].data)  # the 3T input changed
    assert torch.equal(out["target"].data, subject["target"].data)  # the 7T target did not
    assert torch.equal(out["mask"].data, subject["mask"].data)


def test_spatial_transforms_move_the_pair_together():
    subject = _subject()
    # A flip applied with certainty: source, target and mask are all mirrored.
    out = build_augmentation(AugmentConfig(flip=1.0))(subject)
    for name in ("source", "target", "mask"):
        assert torch.equal(out[name].data, subject[name].data.flip(1)), name
