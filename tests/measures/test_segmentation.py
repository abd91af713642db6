"""Tissue segmentation agreement: Dice and volume error by hand, the mixture on phantoms
whose classes are known, N4 against a known bias field, and a dataset's look-up tables."""

from __future__ import annotations

import numpy as np
import pytest

from t7synth.errors import UserError
from t7synth.measures import segmentation


def _phantom(shape=(28, 30, 26), seed=0, noise=0.03):
    """Three nested tissue classes (WM core, GM shell, CSF rim) with known labels."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    truth = np.zeros(shape, dtype=np.uint8)
    truth[radius < 0.9] = 1
    truth[radius < 0.75] = 2
    truth[radius < 0.5] = 3
    intensity = np.array([0.0, 0.25, 0.6, 0.9])[truth]
    image = (intensity + noise * rng.standard_normal(shape)) * (truth > 0)
    return np.clip(image, 0, 1).astype(np.float32), truth, grid


def test_dice_of_known_masks():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros_like(a)
    a[2:6, 2:6, 2:6] = True  # 64 voxels
    b[3:7, 2:6, 2:6] = True  # the same cube moved by one: 48 shared
    assert segmentation.dice(a, b) == pytest.approx(2 * 48 / 128)
    assert segmentation.dice(a, a) == 1.0
    assert segmentation.dice(a, ~a) == 0.0
    assert segmentation.dice(np.zeros_like(a), np.zeros_like(a)) == 1.0  # nothing to find, nothing found


def test_volume_error_is_relative_to_the_reference():
    a = np.zeros(100, bool)
    b = np.zeros(100, bool)
    a[:30], b[:20] = True, True
    assert segmentation.volume_error(a, b) == pytest.approx(50.0)
    assert segmentation.volume_error(b, a) == pytest.approx(100 * 10 / 30)
    assert segmentation.volume_error(np.zeros(3, bool), np.zeros(3, bool)) == 0.0
    assert segmentation.volume_error(a, np.zeros(100, bool)) == float("inf")


def test_mixture_recovers_known_classes_in_order():
    image, truth, _ = _phantom()
    labels = segmentation.mixture_labels(image, truth > 0)
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    assert np.all(labels[truth == 0] == 0)
    for value in (1, 2, 3):  # 1 darkest (CSF) ... 3 brightest (WM)
        assert segmentation.dice(labels == value, truth == value) > 0.97


def test_segment_undoes_a_bias_field_the_mixture_alone_does_not():
    image, truth, grid = _phantom(noise=0.02)
    field = 1.0 + 0.35 * grid[0]  # a smooth ramp across the volume: ±35 %
    biased = np.clip(image * field, 0, 1).astype(np.float32)
    brain = truth > 0
    corrected = segmentation.bias_correct(biased, brain)
    wm = truth == 3
    spread = lambda x: float(np.std(x[wm]) / np.mean(x[wm]))  # noqa: E731
    assert spread(corrected) < 0.6 * spread(biased)  # N4 flattens the white matter
    plain = segmentation.mixture_labels(biased, brain)
    full = segmentation.segment(biased, brain)
    dice_plain = segmentation.dice(plain == 2, truth == 2)
    dice_full = segmentation.dice(full == 2, truth == 2)
    assert dice_full > dice_plain + 0.05 and dice_full > 0.9


def test_segment_is_deterministic_and_takes_tensors():
    import torch

    image, truth, _ = _phantom(seed=3)
    first = segmentation.segment(torch.from_numpy(image)[None], torch.from_numpy(truth > 0)[None])
    again = segmentation.segment(image, truth > 0)
    assert first.shape == image.shape and np.array_equal(first, again)


def test_agreement_and_truth_scores():
    reference = np.array([0, 1, 1, 2, 2, 2, 3, 3])
    labels = np.array([0, 1, 2, 2, 2, 3, 3, 3])
    scores = segmentation.agreement(labels, reference)
    assert scores["dice_csf"] == pytest.approx(2 * 1 / 3)
    assert scores["dice_gm"] == pytest.approx(2 * 2 / 6)
    assert scores["dice_wm"] == pytest.approx(2 * 2 / 5)
    assert scores["vol_err_csf"] == pytest.approx(50.0) and scores["vol_err_wm"] == pytest.approx(50.0)
    # Voxels the truth does not score (0) count on neither side.
    truth = np.array([0, 1, 0, 2, 2, 2, 3, 3])
    true = segmentation.truth_agreement(labels, truth)
    assert true["dice_true_csf"] == 1.0 and true["dice_true_wm"] == pytest.approx(2 * 2 / 5)
    assert true["dice_true_gm"] == pytest.approx(2 * 2 / 5)  # the unscored voxel's GM label is not counted


def _table(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_lookup_tables_map_tissues_by_abbreviation_or_name(tmp_path):
    bids = _table(
        tmp_path / "a.tsv",
        "index\tname\tabbreviation\n1\tCerebrospinal fluid\tCSF\n2\tGray matter\tGM\n3\tWhite matter\tWM\n",
    )
    assert segmentation.read_lookup(bids) == {1: "CSF", 2: "GM", 3: "WM"}
    named = _table(
        tmp_path / "b.tsv", "index\tname\n4\tleft grey-matter\n5\tWhite_Matter\n6\tLeft-Thalamus\n7\tgrey matter\n"
    )
    assert segmentation.read_lookup(named) == {5: "WM", 7: "GM"}  # "left grey-matter" is not a tissue's name
    # Several labels per tissue; a label naming other anatomy stays unmapped.
    aseg = _table(
        tmp_path / "c.tsv",
        "index\tname\tabbreviation\n2\tLeft WM\tWM\n41\tRight WM\tWM\n10\tLeft-Thalamus\t\n3\tcortex\tGM\n",
    )
    lookup = segmentation.read_lookup(aseg)
    assert lookup == {2: "WM", 41: "WM", 3: "GM"}
    labels = np.array([0, 2, 41, 10, 3, 99])
    assert segmentation.tissue_truth(labels, lookup).tolist() == [0, 3, 3, 0, 2, 0]


@pytest.mark.parametrize(
    "text, message",
    [
        ("label\tname\n1\tCSF\n", "needs the columns index and name"),
        ("index\tname\none\tCSF\n", "index 'one' is not an integer"),
    ],
)
def test_bad_lookup_table_is_one_line(tmp_path, text, message):
    path = _table(tmp_path / "dseg.tsv", text)
    with pytest.raises(UserError, match=message) as info:
        segmentation.read_lookup(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
