"""The training input profile: histograms, distances, border shares, and checkpoints
written before the profile existed."""

from __future__ import annotations

import numpy as np
import torch
from helpers import TINY_UNET

from t7synth import registry
from t7synth.data import profile as training


def _brain(shape=(20, 22, 18), seed=0):
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, dtype=bool)
    mask[4:-4, 4:-4, 4:-4] = True
    values = np.clip(rng.normal(0.6, 0.15, shape), 0, 1) * mask
    return values, mask


def test_histogram_sums_to_one_and_distance_ranks_contrast():
    values, mask = _brain()
    same = training.histogram(values, mask)
    assert same.shape == (training.HISTOGRAM_BINS,) and np.isclose(same.sum(), 1.0)
    assert training.histogram_distance(same, same) == 0.0
    shifted = training.histogram(np.clip(values + 0.05, 0, 1), mask)
    inverted = training.histogram((1.0 - values) * mask, mask)
    assert 0.03 < training.histogram_distance(same, shifted) < 0.07  # about the shift
    assert training.histogram_distance(same, inverted) > 3 * training.histogram_distance(same, shifted)


def test_border_share_and_outside_fraction():
    _, mask = _brain()
    assert training.border_share(mask) == 0.0
    touching = mask.copy()
    touching[0, 10, 10] = True
    assert training.border_share(touching) == 1.0 / touching.sum()
    raw = mask.astype(float)
    assert training.outside_fraction(raw, mask) == 0.0
    raw[0, 0, 0] = 1.0
    assert training.outside_fraction(raw, mask) == 1.0 / (~mask).sum()


def test_training_profile_limits_come_from_the_subjects():
    subjects = []
    for seed in range(4):
        values, mask = _brain(seed=seed)
        subjects.append(
            {"normalised": values, "mask": mask, "outside_fraction": 0.0, "voxel_volume_ml": 0.001 * (seed + 1)}
        )
    profile, histogram = training.training_profile(subjects)
    values = training.as_dict(profile)
    assert values["fitted"] == 1.0 and values["subjects"] == 4.0 and values["skull_stripped"] == training.YES
    brain_voxels = subjects[0]["mask"].sum()
    assert np.isclose(values["brain_volume_min_ml"], brain_voxels * 0.001)
    assert np.isclose(values["brain_volume_max_ml"], brain_voxels * 0.004)
    distances = [
        training.histogram_distance(training.histogram(s["normalised"], s["mask"]), histogram) for s in subjects
    ]
    assert max(distances) <= values["histogram_distance_limit"] <= max(distances) + 3 * np.std(distances) + 1e-6
    full_head = dict(subjects[0], outside_fraction=0.5)
    assert training.as_dict(training.training_profile([full_head, *subjects[1:]])[0])["skull_stripped"] == training.NO


def test_checkpoint_without_the_profile_loads_as_not_fitted(tmp_path):
    from t7synth.training.checkpoint import load_model

    config = registry.resolve("unet", None, TINY_UNET)
    state = registry.get("unet")(config.to_dict()).state_dict()
    for key in ("input_profile", "intensity_histogram"):
        del state[key]  # a checkpoint written before the profile existed
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"config": config.to_dict()}}, path)
    model = load_model(path)
    assert training.as_dict(model.input_profile)["fitted"] == 0.0
    assert torch.isclose(model.intensity_histogram.sum(), torch.tensor(1.0))


def test_exported_package_keeps_the_profile(tmp_path):
    from t7synth.inference.package import export_package, load_package, read_package

    config = registry.resolve("unet", None, TINY_UNET)
    module = registry.get("unet")(config.to_dict())
    module.input_profile.copy_(torch.arange(len(training.PROFILE_FIELDS), dtype=torch.float32) + 1)
    module.intensity_histogram.copy_(torch.linspace(0, 1, training.HISTOGRAM_BINS))
    ckpt = tmp_path / "fitted.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"config": config.to_dict()}}, ckpt)
    result = export_package(ckpt, tmp_path / "model.zip")
    loaded = load_package(result.path)
    assert torch.equal(loaded.input_profile, module.input_profile)
    assert torch.equal(loaded.intensity_histogram, module.intensity_histogram)
    manifest = read_package(result.path, weights=False).manifest
    assert manifest["preprocessing"]["training_inputs"]["subjects"] == float(len(training.PROFILE_FIELDS))
