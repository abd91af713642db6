"""Paired statistics behind every "better": mean difference, bootstrap interval, Wilcoxon p.

A gain of "+0.98 dB over the LUT" on two test subjects may be nothing. Every comparison
t7synth prints between two things scored on the same subjects (the model against each
reference in ``fit``'s test report and ``evaluate``; two runs in ``compare``) is
therefore summarised by :func:`paired_difference` over the per-subject differences:

* ``mean``: the mean per-subject difference (first minus second);
* a **95 % bootstrap confidence interval** of that mean: SciPy's
  :func:`scipy.stats.bootstrap` on the differences (a paired bootstrap resamples
  subjects, so resampling the differences is the same thing), 9,999 resamples, seeded,
  percentile method. The percentile interval, not SciPy's default BCa: BCa's
  acceleration comes from a jackknife that is degenerate for the two to five test
  subjects a t7synth test split usually has (SciPy then warns and returns NaN), and
  the percentile interval is defined for any n >= 2 (Efron & Tibshirani, *An
  Introduction to the Bootstrap*, 1993, ch. 13);
* the **Wilcoxon signed-rank** p-value (:func:`scipy.stats.wilcoxon`, two-sided,
  SciPy's defaults: exact distribution for small n without ties or zeros), which
  makes no normality assumption;
* ``n``, the number of subjects paired.

An interval that contains 0 is printed as such: the data do not show a difference.
With n = 2 the exact Wilcoxon p-value cannot go below 0.5, and a percentile interval
spans the two differences: two subjects cannot show significance, and the line says so
by its numbers. With one subject there is no interval; when every difference is equal
(identical models) the interval is that value on both ends and, when it is 0, there is
no test to run. Both are said in words rather than raised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

#: The interval's confidence level.
CONFIDENCE = 0.95
#: Bootstrap resamples (SciPy's default).
RESAMPLES = 9999
#: Seeds the bootstrap: the same differences always give the same interval.
SEED = 0


@dataclass(frozen=True)
class PairedDifference:
    """A paired comparison: ``mean`` difference, its interval, the Wilcoxon p and n.

    ``low``/``high``/``p`` are ``None`` where they cannot be computed; ``reason`` then
    says why (one line, printed in place of the number).
    """

    n: int
    mean: float
    low: float | None = None
    high: float | None = None
    p: float | None = None
    reason: str | None = None

    @property
    def contains_zero(self) -> bool | None:
        """Whether the interval contains 0 (``None`` without an interval)."""
        if self.low is None or self.high is None:
            return None
        return self.low <= 0.0 <= self.high

    def format(self, unit: str = "", decimals: int = 2) -> str:
        """``+6.24 dB, 95% CI +5.74 to +6.74, Wilcoxon p = 0.50, n = 2`` (and the caveats)."""
        unit = f" {unit}" if unit else ""
        parts = [f"{self.mean:+.{decimals}f}{unit}"]
        if self.low is not None and self.high is not None:
            interval = f"{CONFIDENCE:.0%} CI {self.low:+.{decimals}f} to {self.high:+.{decimals}f}"
            if self.contains_zero:
                interval += " (contains 0: no clear difference)"
            parts.append(interval)
        if self.p is not None:
            parts.append(f"Wilcoxon p = {self.p:.2g}" if self.p < 0.01 else f"Wilcoxon p = {self.p:.2f}")
        if self.reason:
            parts.append(self.reason)
        parts.append(f"n = {self.n}")
        return ", ".join(parts)


def paired_difference(
    first: Sequence[float],
    second: Sequence[float],
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> PairedDifference:
    """Mean of ``first - second`` (paired by position), its bootstrap interval and Wilcoxon p.

    Args:
        first, second: per-subject scores, the same subjects in the same order.
        confidence: the interval's level.
        resamples: bootstrap resamples.
        seed: the bootstrap's seed.

    Raises:
        ValueError: sequences of different lengths or empty (a programming error:
            callers pair by subject first).
    """
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired scores need two equally long, non-empty sequences, got {a.shape} and {b.shape}")
    differences = a - b
    n = int(differences.size)
    if not np.isfinite(differences).all():
        # An infinite PSNR (a perfect prediction) has no finite difference to average.
        mean = float(np.mean(differences)) if not np.isnan(differences).any() else math.nan
        return PairedDifference(n, mean, reason="no interval (a difference is not finite)")
    mean = float(differences.mean())
    if n < 2:
        return PairedDifference(n, mean, reason="no interval or test (one subject)")
    if np.ptp(differences) == 0.0:
        # Every resample has the same mean: the interval is that value on both ends
        # (SciPy would warn about degenerate data and return NaN for BCa).
        if differences[0] == 0.0:
            return PairedDifference(n, mean, mean, mean, reason="no test (every difference is 0)")
        return PairedDifference(n, mean, mean, mean, p=float(stats.wilcoxon(differences).pvalue))
    interval = stats.bootstrap(
        (differences,),
        np.mean,
        confidence_level=confidence,
        n_resamples=resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    p = float(stats.wilcoxon(differences).pvalue)  # ptp > 0: at least one difference is not 0
    return PairedDifference(n, mean, float(interval.low), float(interval.high), p)


def paired_by_subject(first: dict[str, float], second: dict[str, float]) -> tuple[list[str], list[float], list[float]]:
    """The subjects both have (sorted) and their two scores in that order."""
    subjects = sorted(set(first) & set(second))
    return subjects, [first[s] for s in subjects], [second[s] for s in subjects]
