"""Paired statistics: SciPy's bootstrap and Wilcoxon on per-subject differences, and the edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from t7synth import scores
from t7synth.statistics import paired_difference


def test_interval_and_p_value_equal_scipy_called_directly():
    rng = np.random.default_rng(3)
    first = rng.normal(20.0, 1.0, 12)
    second = first - rng.normal(0.4, 0.5, 12)
    result = paired_difference(first, second)
    differences = first - second
    expected = stats.bootstrap(
        (differences,),
        np.mean,
        confidence_level=0.95,
        n_resamples=9999,
        method="percentile",
        rng=np.random.default_rng(0),
    ).confidence_interval
    assert result.n == 12
    assert result.mean == pytest.approx(differences.mean())
    assert (result.low, result.high) == pytest.approx((expected.low, expected.high), abs=1e-12)
    assert result.p == pytest.approx(stats.wilcoxon(differences).pvalue, abs=1e-12)
    assert result.low < result.mean < result.high
    # Seeded: the same differences give the same interval.
    assert paired_difference(first, second) == result


def test_an_interval_containing_zero_is_printed_as_such():
    result = paired_difference([1.0, -2.0, 3.0, -1.0, 0.5], [0.0] * 5)
    assert result.contains_zero
    assert "contains 0" in result.format("dB")
    clear = paired_difference([5.0, 6.0, 7.0, 5.5, 6.5], [0.0] * 5)
    assert not clear.contains_zero and "contains 0" not in clear.format("dB")


def test_identical_models_give_zero_inside_the_interval():
    values = [20.0, 21.5, 19.0]
    result = paired_difference(values, values)
    assert result.mean == 0.0 and result.low == 0.0 and result.high == 0.0 and result.contains_zero
    assert result.p is None and "every difference is 0" in result.reason
    assert result.format("dB").startswith("+0.00 dB, 95% CI +0.00 to +0.00 (contains 0")


def test_one_subject_has_no_interval_and_says_why():
    result = paired_difference([21.0], [20.0])
    assert result.low is None and result.p is None and result.contains_zero is None
    assert result.format("dB") == "+1.00 dB, no interval or test (one subject), n = 1"


def test_a_constant_nonzero_difference_is_tested():
    result = paired_difference([3.0, 4.0, 5.0], [1.0, 2.0, 3.0])
    assert (result.low, result.high) == (2.0, 2.0)
    assert result.p == pytest.approx(stats.wilcoxon([2.0, 2.0, 2.0]).pvalue)


def test_infinite_difference_has_no_interval():
    result = paired_difference([math.inf, 20.0], [18.0, 19.0])
    assert result.low is None and "not finite" in result.reason


def test_unpaired_lengths_are_a_programming_error():
    with pytest.raises(ValueError):
        paired_difference([1.0, 2.0], [1.0])


def test_gain_is_paired_by_subject_not_by_row_order():
    rows = [
        {"model": "model", "subject": "sub-001", "psnr_brain": 25.0},
        {"model": "model", "subject": "sub-002", "psnr_brain": 30.0},
        {"model": "identity", "subject": "sub-002", "psnr_brain": 29.0},
        {"model": "identity", "subject": "sub-001", "psnr_brain": 20.0},
    ]
    result = scores.paired_gain(rows, "identity")
    assert result.n == 2 and result.mean == pytest.approx(3.0)  # (25-20 + 30-29) / 2
    assert (result.low, result.high) == (1.0, 5.0)
