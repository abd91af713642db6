"""Score synthetic volumes against a dataset's 7T: what ``python -m t7synth.evaluate`` runs.

Examples::

    python -m t7synth.evaluate --pred synth/ --data DATASET --split test --ckpt best.ckpt
    python -m t7synth.evaluate --pred synth/ --data DATASET --config experiments/demo_unet.yaml --out eval/

Each subject's prediction is found in ``--pred`` by its ``sub-XXX`` label. Target,
3T input and mask are preprocessed exactly as training does
(:func:`~t7synth.data.preprocess.load_or_preprocess` with the model's settings: RAS+,
percentile normalisation, crop or pad), and the prediction is brought onto the same
grid, so the scores equal those ``fit`` reports for the same volumes. Next to the
predictions, two references are scored on the same subjects: the identity (the 3T
input itself) and the intensity LUT fitted on the dataset's training subjects.

Writes into ``--out`` (default ``<pred>/evaluation``): ``scores.csv`` (one row per
subject and row kind, as ``fit``'s ``test_scores.csv``), ``metrics.csv`` (one row per
subject), ``summary.csv`` (mean and SD of the predictions and both references) and
``montages/<subject>.png``; prints the summary table. See ``docs/metrics.md``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from t7synth.errors import UserError
from t7synth.evaluation.scores import MODEL, display_names, format_report, score_names, sort_rows, summarise, write_rows

#: The per-subject file ``evaluate`` writes, in the format of ``fit``'s ``test_scores.csv``.
SCORES_FILE = "scores.csv"


def settings_config(config_file: str | None = None, ckpt: str | None = None):
    """The :class:`~t7synth.config.Config` whose ``data`` settings the dataset is read with.

    The checkpoint's own config when ``ckpt`` is given, else the experiment file
    resolved as ``fit`` resolves it, else the dataclass defaults.
    """
    if ckpt:
        from t7synth.inference.checkpoint import checkpoint_config

        return checkpoint_config(ckpt)
    from t7synth.config import Config
    from t7synth.registry import resolve

    return resolve(None, config_file) if config_file else Config()


def find_predictions(folder: str | Path) -> dict[str, Path]:
    """``{sub-XXX: file}`` for the NIfTI files of ``folder`` (not its subfolders).

    Raises:
        UserError: a missing folder, or two files with the same subject label.
    """
    from t7synth.data.naming import is_nifti, subject_label

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"prediction folder not found: {folder}")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        label = subject_label(path.name)
        if not (path.is_file() and is_nifti(path) and label) or path.name.startswith("."):
            continue
        if label in found:
            raise UserError(f"two predictions for {label} in {folder}: {found[label].name} and {path.name}")
        found[label] = path
    return found


def select_subjects(records, predictions: dict[str, Path], splits: dict, split: str | None, pred_dir: Path):
    """The dataset records to score: ``split``'s (each needs a prediction), or all with one."""
    if split:
        chosen = splits[split]
        if not chosen:
            raise UserError(f"the {split} split of the dataset has no subjects")
        missing = [r.subject for r in chosen if r.subject not in predictions]
        if missing:
            raise UserError(f"no prediction in {pred_dir} for {', '.join(missing)} ({split} split)")
        return chosen
    chosen = [r for r in records if r.subject in predictions]
    if not chosen:
        raise UserError(f"no file in {pred_dir} names a subject of the dataset (sub-XXX in the file name)")
    return chosen


class Evaluator:
    """Scores predictions of one dataset with its training-time preprocessing.

    Args:
        data_root: the dataset folder.
        config: the config whose ``data`` settings (percentiles, shape, split
            fractions and seed) the model was trained with.
        perceptual: optional :class:`MedicalNetDistance`.
        cache_dir: preprocessed-subject cache (default: the one ``fit`` uses).
    """

    def __init__(self, data_root: str | Path, config, perceptual=None, cache_dir: str | Path | None = None):
        from t7synth.data.layout import assign_splits, discover
        from t7synth.data.preprocess import Preprocessing
        from t7synth.files import cache_root

        self.root = Path(data_root).expanduser()
        data = config.data
        self.settings = Preprocessing(percentiles=tuple(data.percentiles), shape=tuple(data.shape) if data.shape else None)
        self.records = discover(self.root)
        self.splits = assign_splits(self.records, data.val_fraction, data.test_fraction, data.split_seed)
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root() / "preprocessed"
        self.perceptual = perceptual
        self._lut = None

    def preprocessed(self, record) -> dict:
        """A subject as training sees it (cached exactly like ``fit``'s data module)."""
        from t7synth.data.preprocess import load_or_preprocess

        return load_or_preprocess(record, self.settings, self.cache_dir)

    @property
    def lut(self):
        """The intensity LUT fitted on the training split (computed once)."""
        if self._lut is None:
            from t7synth.data.intensity_lut import fit_lut

            self._lut = fit_lut((d["source"], d["target"], d["mask"]) for d in map(self.preprocessed, self.splits["train"]))
        return self._lut

    def prediction_on_grid(self, record, path: Path, data: dict):
        """The prediction in ``path`` on the preprocessed grid of ``data`` (1, I, J, K).

        Raises:
            UserError: unreadable file, or not on the grid of the subject's 3T input.
        """
        import numpy as np
        import torch

        from t7synth.data.volumes import check_pair, load_volume
        from t7synth.inference.grids import shift_to_grid

        prediction, affine = load_volume(path)
        source, source_affine = load_volume(record.source)
        check_pair(record.source, source.shape, source_affine, path, prediction.shape, affine)
        # Crop/pad only moves the origin by whole voxels: repeat it without interpolation.
        on_grid = shift_to_grid(np.ascontiguousarray(prediction), affine, tuple(data["source"].shape[1:]), data["affine"].numpy())
        return torch.from_numpy(on_grid)[None]

    def score(self, record, path: Path, montage_dir: Path | None = None) -> list[dict[str, Any]]:
        """Rows (``model``, ``identity``, ``lut``) of one subject; draws its montage."""
        from t7synth.evaluation import metrics
        from t7synth.data.intensity_lut import apply_lut

        data = self.preprocessed(record)
        source, target, mask = data["source"], data["target"], data["mask"]
        prediction = self.prediction_on_grid(record, path, data)
        guesses = {"model": prediction, "identity": source, "lut": apply_lut(self.lut, source, mask)}
        rows = []
        for model, guess in guesses.items():
            row = {"model": model, "subject": record.subject, **metrics.volume_scores(guess, target, mask)}
            if self.perceptual is not None:
                row["perceptual"] = self.perceptual(guess.clamp(0, 1), target)
            rows.append(row)
        if montage_dir is not None:
            from t7synth.plotting import save_montage

            model_row = rows[0]
            title = f"{record.subject}  PSNR(brain) {model_row['psnr_brain']:.2f} dB  SSIM(brain) {model_row['ssim_brain']:.3f}"
            save_montage(montage_dir / f"{record.subject}.png", source, prediction, target, mask, title)
        return rows

    def run(self, predictions: dict[str, Path], split: str | None, pred_dir: Path, out_dir: Path | None, progress: bool = True) -> list[dict[str, Any]]:
        """Score every selected subject; rows in subject order, models grouped."""
        from tqdm.auto import tqdm

        chosen = select_subjects(self.records, predictions, self.splits, split, pred_dir)
        rows: list[dict[str, Any]] = []
        montage_dir = out_dir / "montages" if out_dir is not None else None
        for record in tqdm(chosen, desc="evaluate", unit="subject", disable=None if progress else True):
            rows.extend(self.score(record, predictions[record.subject], montage_dir))
        return sort_rows(rows)


def write_results(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    """Write the per-subject rows (``scores.csv``: model and references, the format of
    ``fit``'s ``test_scores.csv``), ``metrics.csv`` (the predictions only, one row per
    subject) and ``summary.csv`` (mean and SD per row kind)."""
    from t7synth.files import atomic_path

    names = score_names(rows)
    scores = write_rows(out_dir / SCORES_FILE, rows)
    per_subject = out_dir / "metrics.csv"
    with atomic_path(per_subject) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subject", *names])
        for row in rows:
            if row["model"] == MODEL:
                writer.writerow([row["subject"], *(f"{row[n]:.6f}" for n in names)])
    summary = out_dir / "summary.csv"
    table = summarise(rows, names)
    with atomic_path(summary) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "n", *(f"{n}_{stat}" for n in names for stat in ("mean", "sd"))])
        for kind, values in table.items():
            n = sum(1 for r in rows if r["model"] == kind)
            writer.writerow([kind, n, *(f"{v:.6f}" for name in names for v in values[name])])
    return {"scores": scores, "metrics": per_subject, "summary": summary}


def format_summary(rows: list[dict[str, Any]]) -> str:
    """The table ``evaluate`` prints: predictions and references, mean ± SD per column."""
    n_subjects = len({r["subject"] for r in rows})
    columns = display_names(score_names(rows))
    return format_report(rows, "synthetic 7T (--pred)", columns, f"{n_subjects} subjects")


def evaluate(
    pred: str | Path,
    data: str | Path,
    split: str | None = None,
    out: str | Path | None = None,
    ckpt: str | None = None,
    config_file: str | None = None,
    perceptual_weights: str | None = None,
    progress: bool = True,
) -> str:
    """Score the predictions in ``pred`` against the dataset's 7T; write and return the report.

    Args:
        pred: folder of predictions (``sub-XXX`` in each file name).
        data: the dataset folder.
        split: score exactly this split (each subject needs a prediction).
        out: output folder (default ``<pred>/evaluation``).
        ckpt, config_file: where the preprocessing settings and split come from.
        perceptual_weights: MedicalNet ResNet-10 weights: adds a 3D perceptual distance.
        progress: a bar over subjects.
    """
    pred_dir = Path(pred).expanduser()
    out_dir = Path(out).expanduser() if out else pred_dir / "evaluation"
    config = settings_config(config_file, ckpt)
    predictions = find_predictions(pred_dir)
    perceptual = None
    if perceptual_weights:
        from t7synth.evaluation.perceptual import MedicalNetDistance

        perceptual = MedicalNetDistance(perceptual_weights)
    evaluator = Evaluator(data, config, perceptual=perceptual)
    rows = evaluator.run(predictions, split, pred_dir, out_dir, progress=progress)
    files = write_results(rows, out_dir)
    return (
        format_summary(rows)
        + f"\nPer-subject scores: {files['scores']} (predictions only: {files['metrics']})\nSummary: {files['summary']}"
        + f"\nMontages: {out_dir / 'montages'}/<subject>.png"
    )
