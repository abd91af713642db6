"""The quality record of every ``predict`` output: ``qc.tsv``, one row per input.

Each row says how far the input lies from what the model was trained on
(:mod:`t7synth.data.profile`, stored in the model): its brain volume, its voxel size
against the training voxel size, the distance between its normalised in-brain intensity
histogram and the training one, and, when several models are fused, the mean of their
voxel-wise SD inside the brain. ``flags`` names every value out of range:

* ``voxel-size``: an axis coarser than the training voxel size by more than half a
  training voxel (:data:`VOXEL_RATIO_LIMIT`): the model must invent detail the input
  never held (the ratio is a rule; the reference value is the training data's);
* ``intensity-distribution``: the histogram distance above the training limit (the
  training subjects' largest distance to their mean histogram plus three SDs): another
  contrast (a T2-like image), a failed normalisation, heavy artefacts;
* ``brain-volume``: outside the training brain volumes widened by three SDs of them
  (a failed extraction keeps scalp, or loses brain);
* ``mask-touches-border``: more of the mask on the volume's faces than on any training
  subject's (a brain cut by the field of view, or a mask leaking into the neck);
* ``preprocessing``: the input is not skull-stripped but the model was trained on
  skull-stripped brains (and no mask or extraction made it so).

A model without a training record (``fitted`` 0: built by hand, or a checkpoint older
than the record) gets its columns written and no flag from those rules.

The table is written by column name (:func:`write_table`): a later column (another
quality measure) is one more key in the row, and rows of an earlier run for other inputs
are kept, so reruns of a folder update their own rows only.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import torch

from t7synth.data import profile as training
from t7synth.data.preprocess import normalise
from t7synth.errors import UserError
from t7synth.files import atomic_path
from t7synth.inference.grids import spacing

#: An input axis may be coarser than the training voxel size by at most this ratio.
VOXEL_RATIO_LIMIT = 1.5
#: Brain volumes may lie this many training SDs beyond the training range.
VOLUME_SDS = 3.0
#: Written for a value that does not apply (BIDS's convention for TSV files).
MISSING = "n/a"
#: Columns first, in this order; any other key of a row follows, then ``flags`` last.
COLUMNS = (
    "input",
    "output",
    "skull_stripped",
    "n4",
    "brain_volume_ml",
    "voxel_size_mm",
    "training_voxel_size_mm",
    "histogram_distance",
    "histogram_distance_limit",
    "fused_sd_mean",
)
FLAGS = "flags"
#: The ``flags`` cell of a row with nothing out of range.
NO_FLAGS = "none"


def training_record(model) -> dict:
    """The model's training record: ``input_profile`` as named values, the histogram and
    the training voxel size (``None`` when unknown)."""
    record = training.as_dict(model.input_profile)
    record["fitted"] = record["fitted"] > 0.5  # stored as 1.0 / 0.0
    voxel = model.voxel_size.detach().cpu().double().numpy()
    record["voxel_size"] = tuple(float(v) for v in voxel) if bool((voxel > 0).all()) else None
    counts = np.clip(model.intensity_histogram.detach().cpu().double().numpy(), 0.0, None)
    record["histogram"] = counts / counts.sum() if counts.sum() > 0 else np.full(counts.shape, 1.0 / counts.size)
    return record


def looks_skull_stripped(array: np.ndarray, mask: np.ndarray | None, record: dict) -> bool:
    """Whether a scan looks skull-stripped: with a mask, (almost) nothing above 0 outside
    it (the rule ``fit`` applies to training inputs); without one, its non-zero voxels
    touch the volume's faces no more than the training masks did (a full head's neck and
    noise always reach them)."""
    if mask is not None:
        return training.outside_fraction(array, mask) < training.STRIPPED_OUTSIDE_FRACTION
    limit = record["border_share_max"] if record.get("fitted") else 0.0
    return training.border_share(array > 0) <= limit


def quality_row(
    source: Path,
    array: np.ndarray,
    affine: np.ndarray,
    inside: np.ndarray,
    record: dict,
    percentiles,
    normalisation: str,
    skull_stripped: bool,
    n4: bool,
) -> dict:
    """One input's ``qc.tsv`` row (without ``output``/``fused_sd_mean``; see
    :func:`flags`). ``array`` is the scan as the model sees it (after extraction and N4)."""
    voxel = spacing(affine)
    mask_t = torch.from_numpy(inside[None].astype(np.uint8))
    normalised = normalise(torch.from_numpy(np.ascontiguousarray(array)[None]), mask_t, percentiles, normalisation)
    distance = (
        training.histogram_distance(training.histogram(normalised[0].numpy(), inside), record["histogram"])
        if record["fitted"]
        else None
    )
    return {
        "input": str(source),
        "skull_stripped": bool(skull_stripped),
        "n4": bool(n4),
        "brain_volume_ml": float(inside.sum()) * float(np.prod(voxel)) / 1000.0,
        "voxel_size_mm": tuple(float(v) for v in voxel),
        "training_voxel_size_mm": record["voxel_size"],
        "histogram_distance": distance,
        "histogram_distance_limit": record["histogram_distance_limit"] if record["fitted"] else None,
        "border_share": training.border_share(inside),
    }


def flags(row: dict, record: dict) -> list[str]:
    """The names of ``row``'s values out of the training record's range."""
    found = []
    fitted = bool(record.get("fitted"))
    if record.get("voxel_size") is not None:
        ratios = np.asarray(row["voxel_size_mm"]) / np.asarray(record["voxel_size"])
        if bool((ratios > VOXEL_RATIO_LIMIT).any()):
            found.append("voxel-size")
    distance = row["histogram_distance"]
    if fitted and distance is not None and distance > record["histogram_distance_limit"]:
        found.append("intensity-distribution")
    if fitted:
        margin = VOLUME_SDS * record["brain_volume_sd_ml"]
        low, high = record["brain_volume_min_ml"] - margin, record["brain_volume_max_ml"] + margin
        if not low <= row["brain_volume_ml"] <= high:
            found.append("brain-volume")
    if row["border_share"] > (record["border_share_max"] if fitted else 0.0):
        found.append("mask-touches-border")
    if fitted and record["skull_stripped"] == training.YES and not row["skull_stripped"]:
        found.append("preprocessing")
    return found


def warning_line(row: dict) -> str:
    """The one warning line of a flagged row."""
    details = {
        "voxel-size": f"voxel size {_cell(row['voxel_size_mm'])} mm vs training {_cell(row['training_voxel_size_mm'])}",
        "intensity-distribution": (
            f"intensity histogram distance {_cell(row['histogram_distance'])}"
            f" > {_cell(row['histogram_distance_limit'])}"
        ),
        "brain-volume": f"brain volume {_cell(row['brain_volume_ml'])} ml",
        "mask-touches-border": "brain mask touches the volume's border",
        "preprocessing": (
            "a full-head scan for a model trained on skull-stripped brains: add --skull-strip (or --preprocess auto)"
            " or its --mask"
        ),
    }
    names = row[FLAGS].split(",") if row.get(FLAGS) and row[FLAGS] != NO_FLAGS else []
    return f"{row['input']}: outside the training data ({'; '.join(details.get(n, n) for n in names)}); see qc.tsv"


def _cell(value) -> str:
    """A TSV cell: ``n/a`` for nothing, numbers to 4 significant digits, tuples joined by ``x``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "x".join(_cell(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def read_table(path: Path) -> list[dict[str, str]]:
    """The rows of an existing ``qc.tsv`` (strings), empty when there is none.

    Raises:
        UserError: a file that is not a readable table.
    """
    if not Path(path).is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"cannot read {path}: {error}") from None


def write_table(path: str | Path, rows: list[dict]) -> Path:
    """Write ``rows`` to ``path`` by column name, atomically, keeping the rows of an
    earlier table for other inputs (a rerun replaces its own rows)."""
    path = Path(path)
    new = [{key: _cell(value) for key, value in row.items() if key != "border_share"} for row in rows]
    for row in new:
        row[FLAGS] = row.get(FLAGS) or NO_FLAGS
    inputs = {row["input"] for row in new}
    kept = [row for row in read_table(path) if row.get("input") not in inputs]
    table = kept + new
    extra = []
    for row in table:
        extra += [key for key in row if key not in COLUMNS and key != FLAGS and key not in extra]
    columns = [*COLUMNS, *extra, FLAGS]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, delimiter="\t", restval=MISSING, lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(table, key=lambda row: row.get("input", "")))
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    return path
