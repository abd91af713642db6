"""The identity and intensity-LUT baselines of a study, for its table, plots and W&B summary.

A trial 12 dB below the 3T input looks normal in a table of trials alone. Every fit
logs, at each validation, the same score for the 3T input itself (identity) and for
the intensity look-up table (:data:`t7synth.scores.REFERENCES`), next to the
model's: ``val/identity/psnr_brain``, ``val/lut/psnr_brain``. Each trial's last logged
value is read from its ``metrics.csv``; the study's baseline is their median (equal
across trials unless a searched key changes the validation data).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from pathlib import Path

from t7synth.run_files import METRICS_FILE, last_value, read_metrics
from t7synth.scores import LABELS, REFERENCES, metric_key


def reference_key(metric: str, kind: str) -> str:
    """``val/identity/psnr_brain`` for ``val/psnr_brain`` and ``identity``."""
    stage, _, name = metric.partition("/")
    return metric_key(stage, kind, name)


def trial_baselines(run_dir: str | Path, metric: str) -> dict[str, float | None]:
    """``{"identity": value, "lut": value}`` of one trial (``None`` where not logged)."""
    rows = read_metrics(Path(run_dir) / METRICS_FILE) if run_dir else []
    return {kind: last_value(rows, reference_key(metric, kind)) for kind in REFERENCES}


def study_baselines(per_trial: Iterable[dict[str, float | None]]) -> dict[str, float]:
    """The median of each baseline over the trials that logged it (missing ones left out)."""
    found: dict[str, float] = {}
    trials = list(per_trial)
    for kind in REFERENCES:
        values = [t[kind] for t in trials if t.get(kind) is not None]
        if values:
            found[kind] = float(statistics.median(values))
    return found


def label(kind: str) -> str:
    """``identity (3T input)``, ``intensity LUT``: the tables' labels."""
    return LABELS[kind]


def draw_baselines(axes, baselines: dict[str, float]) -> None:
    """Horizontal lines for the baselines on a plot of the metric, in its legend; the
    y-range extended to show them (a line outside it must not sit in the legend)."""
    styles = {"identity": "--", "lut": ":"}
    low, high = axes.get_ylim()
    for kind, value in baselines.items():
        axes.axhline(value, color="grey", linestyle=styles.get(kind, "-"), linewidth=1.2, label=label(kind))
        low, high = min(low, value), max(high, value)
    margin = 0.05 * (high - low or 1.0)
    axes.set_ylim(low - margin, high + margin)
