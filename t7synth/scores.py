"""The vocabulary of a score table, written once: rows, columns, cells, tables, gains.

Every table t7synth prints, writes or logs (``fit``'s test report and ``test_scores.csv``,
``evaluate``'s summary, ``compare``'s comparison, the W&B summary and tables) is built
from per-subject *rows*::

    {"model": "model" | "identity" | "lut", "subject": "sub-001", "psnr_brain": 23.1, ...}

``model`` is the row's kind: the model's synthetic 7T, or one of the two references
scored beside it on the same subjects (the 3T input itself, and the intensity LUT
fitted on the training subjects). Columns are described once in :data:`COLUMNS` (heading,
direction, decimals), so a new measure added there shows up in every table. Gains of the
model over a reference are paired by subject, with a bootstrap interval and a Wilcoxon
p-value (:func:`gain_line`, :mod:`~t7synth.statistics`).
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from t7synth.errors import UserError
from t7synth.files import atomic_path
from t7synth.statistics import PairedDifference, paired_by_subject, paired_difference
from t7synth.textfiles import parse_number, read_table

#: Row kinds, in table order: the model, then the references.
#: Spatial frequency (cycles per voxel; 0.5 is Nyquist) above which energy counts as
#: high-frequency: periods shorter than 4 voxels (6 mm at 1.5 mm), the scale the
#: 3T's blur (sigma 0.6 to 2 voxels on the demo) removes and cortical folds live at.
HF_CUTOFF = 0.25
#: Radial shells of the plotted spectrum, from 0 to Nyquist.
SPECTRUM_BINS = 50
#: The centre of each shell, in cycles per voxel.
SPECTRUM_FREQUENCIES = (np.arange(SPECTRUM_BINS) + 0.5) * 0.5 / SPECTRUM_BINS
#: Row entries that are not score columns: the radially averaged power spectra of the
#: guess and of the 7T (lists of :data:`SPECTRUM_BINS`
#: floats) that the spectra plot is drawn from. Tables and CSV files ignore them.
SPECTRUM = "spectrum"
TARGET_SPECTRUM = "target_spectrum"

MODEL = "model"
REFERENCES = ("identity", "lut")
ROW_KINDS = (MODEL, *REFERENCES)
#: How a reference row is labelled in every table.
LABELS = {"identity": "identity (3T input)", "lut": "intensity LUT"}


@dataclass(frozen=True)
class Column:
    """One score: its heading, whether higher is better, and the decimals it is shown with.

    ``ideal`` is set for a score whose best value is neither the highest nor the lowest
    (a ratio to the 7T's, best at 1); ``higher_is_better`` then says nothing.
    """

    name: str
    heading: str
    higher_is_better: bool
    decimals: int
    ideal: float | None = None

    def best(self, values: Sequence[float]) -> float:
        """The best of ``values``: the highest, the lowest, or the closest to ``ideal``."""
        if self.ideal is not None:
            return min(values, key=lambda v: abs(v - self.ideal))
        return max(values) if self.higher_is_better else min(values)


#: The structures ``evaluate --segmenter`` scores, named after FreeSurfer's colour table
#: (``evaluation/data/FreeSurferColorLUT_subset.tsv`` maps label numbers to these).
STRUCTURES = tuple(
    f"{side}_{name}"
    for name in (
        "amygdala",
        "hippocampus",
        "thalamus",
        "caudate",
        "putamen",
        "pallidum",
        "lateral_ventricle",
        "cortex",
        "white_matter",
    )
    for side in ("left", "right")
)
#: Every score column t7synth knows, in file order (the order of per-subject CSV files).
COLUMNS: dict[str, Column] = {
    column.name: column
    for column in (
        Column("psnr", "PSNR (dB)", True, 2),
        Column("ssim", "SSIM", True, 4),
        Column("psnr_brain", "PSNR brain (dB)", True, 2),
        Column("ssim_brain", "SSIM brain", True, 4),
        Column("mae", "MAE", False, 4),
        Column("perceptual", "perceptual (MedicalNet)", False, 4),
        # evaluate --ssim authors: the authors' two SSIM forms (metrics.authors_ssim_scores).
        Column("ssim_skimage", "SSIM (skimage)", True, 4),
        Column("ssim_brain_flat", "SSIM brain (flat)", True, 4),
        # Test-time structure scores (measures/structure.py); docs/metrics.md.
        *(Column(f"dice_{t}", f"Dice {t.upper()} vs 7T seg.", True, 3) for t in ("csf", "gm", "wm")),
        *(Column(f"vol_err_{t}", f"{t.upper()} volume error (%)", False, 1) for t in ("csf", "gm", "wm")),
        *(Column(f"dice_true_{t}", f"Dice {t.upper()} vs true labels", True, 3) for t in ("csf", "gm", "wm")),
        Column("gmsd", "GMSD", False, 4),
        Column("hf_ratio", "HF energy / 7T", False, 3, ideal=1.0),
        # No-reference quality, MRIQC's definitions (measures/quality.py); docs/metrics.md.
        Column("cnr", "CNR (GM/WM)", True, 2),
        Column("cjv", "CJV", False, 3),
        Column("snr_wm", "SNR (WM)", True, 1),
        # evaluate --segmenter: per-structure agreement (evaluation/segmenter.py).
        *(Column(f"seg_dice_{s}", f"Dice {s.replace('_', ' ')} vs 7T seg.", True, 3) for s in STRUCTURES),
        *(
            Column(f"seg_voldiff_{s}", f"{s.replace('_', ' ')} volume diff. (%)", False, 1, ideal=0.0)
            for s in STRUCTURES
        ),
        *(Column(f"seg_true_dice_{s}", f"Dice {s.replace('_', ' ')} vs manual", True, 3) for s in STRUCTURES),
    )
}
#: The order tables show columns in: in-brain scores first (the paper's), then the rest.
DISPLAY_ORDER = ("psnr_brain", "ssim_brain", "psnr", "ssim", "mae")
#: The columns ``fit``'s test report prints (the rest are in ``test_scores.csv``).
REPORT_COLUMNS = DISPLAY_ORDER[:4]
#: The headline score: best checkpoint, gain lines, sweep objective by default.
HEADLINE = "psnr_brain"
#: Test-time structure scores, each group printed as its own block under the
#: intensity table (one wide table would wrap): ``{heading: columns}``.
SECTIONS: dict[str, tuple[str, ...]] = {
    "Tissue segmentation (N4 + 3-class GMM), agreement with the 7T's:": (
        "dice_csf",
        "dice_gm",
        "dice_wm",
        "vol_err_csf",
        "vol_err_gm",
        "vol_err_wm",
    ),
    "Tissue segmentation against the true tissue labels (dseg):": ("dice_true_csf", "dice_true_gm", "dice_true_wm"),
    "Sharpness against the 7T:": ("gmsd", "hf_ratio"),
    "No-reference quality (MRIQC's CNR, CJV, SNR in WM; no 7T needed):": ("cnr", "cjv", "snr_wm"),
}
#: ``evaluate --segmenter``'s per-structure scores, printed as one table per group with
#: a row per structure (18 structures would not fit across): ``{heading: column prefix}``.
STRUCTURE_SECTIONS: dict[str, str] = {
    "Segmenter (--segmenter), Dice against the 7T's segmentation, per structure:": "seg_dice_",
    "Segmenter (--segmenter), volume difference against the 7T's segmentation (%), per structure:": "seg_voldiff_",
    "Segmenter (--segmenter), Dice against the manual labels (dseg), per structure:": "seg_true_dice_",
}
SECTION_COLUMNS = (
    *(name for names in SECTIONS.values() for name in names),
    *(f"{prefix}{s}" for prefix in STRUCTURE_SECTIONS.values() for s in STRUCTURES),
)

Summary = dict[str, dict[str, tuple[float, float]]]


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value).

    A perfect prediction's PSNR is infinite, which ``statistics.stdev`` cannot take:
    equal values (all infinite too) then have SD 0, others an undefined (NaN) SD.
    """
    values = [float(v) for v in values]
    if len(values) < 2:
        return statistics.fmean(values), 0.0
    if not all(math.isfinite(v) for v in values):
        return statistics.fmean(values), 0.0 if len(set(values)) == 1 else math.nan
    return statistics.fmean(values), statistics.stdev(values)


def format_cell(name: str, mean: float, sd: float) -> str:
    """``mean ± sd`` with the column's decimals (2 for dB, 4 otherwise)."""
    decimals = COLUMNS[name].decimals if name in COLUMNS else 4
    return f"{mean:.{decimals}f} ± {sd:.{decimals}f}"


def score_names(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The known score columns the rows carry, in display order."""
    rows = list(rows)
    present = set(rows[0]) if rows else set()
    return [name for name in COLUMNS if name in present]


def display_names(names: Iterable[str]) -> list[str]:
    """``names`` in table order: :data:`DISPLAY_ORDER` first, the others after, as given."""
    names = list(names)
    return [n for n in DISPLAY_ORDER if n in names] + [n for n in names if n not in DISPLAY_ORDER]


def row_label(kind: str, model_label: str) -> str:
    """The label of a row kind: ``model_label`` for the model, else the reference's."""
    return model_label if kind == MODEL else LABELS[kind]


def metric_key(stage: str, kind: str, name: str) -> str:
    """The logged key of a score: ``val/psnr`` for the model, ``val/identity/psnr`` for a reference."""
    return f"{stage}/{name}" if kind == MODEL else f"{stage}/{kind}/{name}"


def sort_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows grouped by kind (model first, then the references), subjects in order."""
    return sorted((dict(r) for r in rows), key=lambda r: (ROW_KINDS.index(r["model"]), r["subject"]))


def summarise(rows: Iterable[Mapping[str, Any]], names: Sequence[str] | None = None) -> Summary:
    """``{kind: {score: (mean, sd)}}`` over subjects, kinds in table order."""
    rows = list(rows)
    names = list(names) if names is not None else score_names(rows)
    table: Summary = {}
    for kind in ROW_KINDS:
        selected = [r for r in rows if r["model"] == kind]
        if selected:
            table[kind] = {name: mean_sd([float(r[name]) for r in selected]) for name in names}
    return table


def gain_line(table: Summary, rows: Sequence[Mapping[str, Any]] | None = None) -> str | None:
    """``In-brain PSNR gain: +x dB over identity (3T input), +y dB over intensity LUT``.

    With the per-subject ``rows`` the gains are paired: one line per reference with the
    mean per-subject difference, its 95 % bootstrap interval, the Wilcoxon p-value and
    n (:func:`~t7synth.statistics.paired_difference`), since a mean gain on
    two subjects says nothing about its noise.
    """
    if MODEL not in table:
        return None
    if rows is not None:
        lines = [
            f"In-brain PSNR gain over {LABELS[kind]}: {paired_gain(rows, kind).format('dB')}"
            for kind in REFERENCES
            if kind in table
        ]
        return "\n".join(lines) if lines else None
    gains = [
        f"{table[MODEL][HEADLINE][0] - table[kind][HEADLINE][0]:+.2f} dB over {LABELS[kind]}"
        for kind in REFERENCES
        if kind in table
    ]
    return "In-brain PSNR gain: " + ", ".join(gains) if gains else None


def paired_gain(rows: Sequence[Mapping[str, Any]], reference: str, name: str = HEADLINE) -> PairedDifference:
    """The model's per-subject ``name`` minus ``reference``'s, paired by subject
    (:class:`~t7synth.statistics.PairedDifference`)."""
    model = {r["subject"]: float(r[name]) for r in rows if r["model"] == MODEL}
    other = {r["subject"]: float(r[name]) for r in rows if r["model"] == reference}
    _, first, second = paired_by_subject(model, other)
    return paired_difference(first, second)


def format_table(table: Summary, model_label: str, columns: Sequence[str], width: int = 24) -> list[str]:
    """Header and one line per row kind: ``mean ± SD`` per column, right-aligned."""
    lines = [f"{'':{width}}" + "".join(f"{c:>18}" for c in columns)]
    for kind, scores in table.items():
        cells = "".join(f"{format_cell(c, *scores[c]):>18}" for c in columns)
        lines.append(f"{row_label(kind, model_label):{width}}{cells}")
    return lines


def format_report(rows: Sequence[Mapping[str, Any]], model_label: str, columns: Sequence[str], heading: str) -> str:
    """A summary table of ``rows`` under ``heading``, then the gain line, then a block
    per :data:`SECTIONS` group the rows carry (``columns`` lists the first table's)."""
    table = summarise(rows)
    present = next(iter(table.values()), {})
    lines = [
        heading,
        *format_table(table, model_label, [c for c in columns if c in present and c not in SECTION_COLUMNS]),
    ]
    gain = gain_line(table, rows)
    if gain:
        lines.append(gain)
    for section, names in SECTIONS.items():
        shown = [name for name in names if name in present]
        if shown:
            lines += ["", section, *format_table(table, model_label, shown)]
    for section, prefix in STRUCTURE_SECTIONS.items():
        if any(f"{prefix}{s}" in present for s in STRUCTURES):
            lines += ["", section, *format_structures(table, model_label, prefix)]
    return "\n".join(lines)


def format_structures(table: Summary, model_label: str, prefix: str, width: int = 24) -> list[str]:
    """A per-structure block: a row per structure, a ``mean ± SD`` column per row kind."""
    kinds = list(table)
    lines = [f"{'':{width}}" + "".join(f"{row_label(kind, model_label)[:22]:>24}" for kind in kinds)]
    for structure in STRUCTURES:
        name = f"{prefix}{structure}"
        if name in table[kinds[0]]:
            cells = "".join(f"{format_cell(name, *table[kind][name]):>24}" for kind in kinds)
            lines.append(f"{structure.replace('_', ' '):{width}}{cells}")
    return lines


def write_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write per-subject rows as CSV (``model, subject, <scores>``), atomically.

    This is the one per-subject format: ``fit``'s ``test_scores.csv`` and ``evaluate``'s
    ``scores.csv``, and what ``compare`` reads.
    """
    names = score_names(rows)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["model", "subject", *names], extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    return path


def read_rows(scores: Path) -> list[dict[str, str]]:
    """Per-subject rows of a score file (:func:`write_rows`' format), checked: the
    columns, a model row, complete rows of numbers. The one reader of score files
    (``compare``, ``export``), with one rule: infinity is a score (a perfect
    prediction's PSNR); NaN is not, and would make every mean and "best" of its column
    meaningless.

    Raises:
        UserError: naming the file, the line and the cell.
    """
    table = read_table(scores)  # size, encoding, binary content, malformed or ragged rows: one line
    needed = {"model", "subject", *DISPLAY_ORDER}
    if not needed <= set(table.fieldnames):
        raise UserError(f"{scores} lacks columns {sorted(needed - set(table.fieldnames))}")
    rows = table.rows
    for line, row in zip(table.lines, rows):
        for name in DISPLAY_ORDER:
            parse_number(row[name], f"{scores}, line {line}: {name} of {row['subject']}", finite=False)
    if not any(r["model"] == MODEL for r in rows):
        raise UserError(f"{scores} has no rows of the model")
    return rows


def summary_values(rows: Sequence[Mapping[str, Any]], stage: str = "test") -> dict[str, float]:
    """Flat ``{key: value}`` of means and SDs (``test/psnr_brain``, ``test/psnr_brain_sd``,
    ``test/identity/psnr_brain``, ...): a W&B summary a runs table sorts by."""
    values: dict[str, float] = {}
    for kind, scores in summarise(rows).items():
        for name, (mean, sd) in scores.items():
            key = metric_key(stage, kind, name)
            values[key], values[f"{key}_sd"] = mean, sd
    return values


def is_number(text: Any) -> bool:
    """Whether ``text`` reads as a finite float."""
    try:
        return math.isfinite(float(text))
    except (TypeError, ValueError):
        return False
