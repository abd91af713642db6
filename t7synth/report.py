"""Text tables of scores: the end-of-``fit`` report and the reference rows beside it."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

LABELS = {"model": None, "identity": "identity (3T input)", "lut": "intensity LUT"}
COLUMNS = ("psnr_brain", "ssim_brain", "psnr", "ssim")


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """``{model: {metric: (mean, sd)}}`` from per-subject rows."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        selected = [r for r in rows if r["model"] == model]
        out[model] = {name: mean_sd([float(r[name]) for r in selected]) for name in COLUMNS + ("mae",)}
    return out


def format_test_report(rows: list[dict[str, Any]], model_name: str, checkpoint: str | None, run_dir: Path) -> str:
    """The table ``fit`` prints: the model's test scores next to both baselines."""
    table = summarise(rows)
    subjects = sorted({r["subject"] for r in rows})
    width = 24
    lines = [
        f"Test split: {len(subjects)} held-out subjects, checkpoint {checkpoint or 'final weights'}",
        f"{'':{width}}" + "".join(f"{c:>18}" for c in COLUMNS),
    ]
    for model, scores in table.items():
        label = LABELS.get(model) or f"{model_name} (synthetic 7T)"
        cells = "".join(f"{_cell(c, *scores[c]):>18}" for c in COLUMNS)
        lines.append(f"{label:{width}}{cells}")
    if "model" in table:
        gains = []
        for baseline in ("identity", "lut"):
            if baseline in table:
                gain = table["model"]["psnr_brain"][0] - table[baseline]["psnr_brain"][0]
                gains.append(f"{gain:+.2f} dB over {LABELS[baseline]}")
        lines.append("In-brain PSNR gain: " + ", ".join(gains))
    lines.append(f"Per-subject scores: {run_dir / 'test_scores.csv'}")
    lines.append(f"Montages: {run_dir / 'samples'}/test_<subject>.png")
    return "\n".join(lines)


def _cell(name: str, mean: float, sd: float) -> str:
    return f"{mean:.2f} ± {sd:.2f}" if name.startswith("psnr") else f"{mean:.4f} ± {sd:.4f}"
