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
input itself) and the intensity LUT: the one stored in ``--ckpt`` (fitted on the
model's training subjects, whichever dataset is scored now), else one fitted on this
dataset's training split; a dataset without training subjects (an external test
site) and no checkpoint gets no LUT row, and a note says so.

Every row carries the intensity scores (:mod:`~t7synth.measures.metrics`) and the
structure scores (:mod:`~t7synth.measures.structure`: tissue segmentation agreement
with the 7T's, and with the dataset's true tissue labels where it has ``dseg`` files;
MRIQC's no-reference CNR, CJV and SNR; GMSD and the high-frequency energy ratio); with
``--segmenter`` also an external segmenter's per-structure agreement
(:mod:`~t7synth.evaluation.segmenter`). A prediction must be on ``predict``'s [0, 1]
scale, or ``--pred-scale percentile`` normalises it like the target
(:meth:`Evaluator.prediction_on_grid`). The gain lines carry paired statistics
(:mod:`~t7synth.statistics`).

Writes into ``--out`` (default ``<pred>/evaluation``): ``scores.csv`` (one row per
subject and row kind, as ``fit``'s ``test_scores.csv``), ``subject_scores.csv`` (one row per
subject, the predictions only), ``summary.csv`` (mean and SD of the predictions and both references),
``config.yaml`` (the settings used, ``data.root`` the dataset scored; ``compare``
reads it), ``spectra.png`` (the power spectra against the 7T's) and
``montages/<subject>.png``; prints the summary table. See ``docs/metrics.md``.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from t7synth.charts import save_spectra
from t7synth.config import Config
from t7synth.data.intensity_lut import apply_lut, fit_lut
from t7synth.data.layout import assign_splits, discover
from t7synth.data.naming import is_nifti, is_uncertainty, subject_label
from t7synth.data.preprocess import Preprocessing, load_or_preprocess, normalise
from t7synth.data.volumes import brain_mask, check_pair, load_volume
from t7synth.errors import UserError
from t7synth.evaluation.perceptual import MedicalNetDistance
from t7synth.evaluation.segmenter import Segmenter, StructureAgreement, labels_on_grid, read_structures
from t7synth.files import atomic_path, cache_root, check_writable, remove_stale_temporaries
from t7synth.inference.grids import shift_to_grid
from t7synth.inference.package import package_config, read_package
from t7synth.inference.trained import refuse_package
from t7synth.measures import metrics, segmentation
from t7synth.measures.structure import StructureScorer
from t7synth.measures.subject import subject_rows
from t7synth.plotting import save_montage
from t7synth.registry import resolve
from t7synth.run_files import EVALUATE_SCORES_FILE, EVALUATE_SUBJECTS_FILE, write_config
from t7synth.scores import (
    MODEL,
    SECTION_COLUMNS,
    display_names,
    format_cell,
    format_report,
    mean_sd,
    score_names,
    sort_rows,
    summarise,
    write_rows,
)
from t7synth.training.checkpoint import checkpoint_config, read_checkpoint

#: ``--pred-scale`` values: the prediction as written (predict's [0, 1] scale), or
#: normalised exactly like the target (another tool's output in scanner intensities).
PRED_SCALES = ("as-is", "percentile")
#: ``as-is`` refuses a prediction whose in-brain 1st or 99th percentile leaves [0, 1]
#: by more than this: percentiles, so that a few outlying voxels (an overshooting
#: linear head, the authors' unclipped normalisation) do not refuse a [0, 1] output,
#: while a scanner-scale image (hundreds) always is.
SCALE_TOLERANCE = 0.1
SCALE_PERCENTILES = (1.0, 99.0)

#: ``evaluate``'s precision line (``fit`` and ``predict`` print theirs from
#: :mod:`t7synth.training.precision`): it runs no synthesis network, and every score
#: is computed in fp32.
SCORING_LINE = "precision: 32-true (evaluate runs no synthesis network; every score is computed in fp32)"


def settings_config(config_file: str | None = None, ckpt: str | None = None, model: str | None = None):
    """The :class:`~t7synth.config.Config` whose ``data`` settings the dataset is read with.

    The checkpoint's own config when ``ckpt`` is given, the package's when ``model`` is
    (:mod:`t7synth.inference.package`), else the experiment file resolved as ``fit``
    resolves it, else the dataclass defaults.
    """
    if model:
        return package_config(model)
    if ckpt:
        return checkpoint_config(ckpt)

    return resolve(None, config_file) if config_file else Config()


def settings_and_lut(config_file: str | None = None, ckpt: str | None = None, model: str | None = None):
    """:func:`settings_config`'s config and the intensity LUT stored with the model.

    A checkpoint (or model package) holds the LUT ``fit`` fitted on the model's
    training subjects (the ``lut`` buffer of
    :class:`~t7synth.models.base.SynthesisModule`): that is the baseline the model is
    to beat, whichever dataset is scored now. The file is read once for both.

    Returns:
        ``(config, lut)``; ``lut`` is ``None`` without ``ckpt`` or ``model``.
    """
    if ckpt:
        refuse_package(ckpt, f"--ckpt {ckpt} is a model package; pass it as --model {ckpt}")
        checkpoint = read_checkpoint(ckpt)
        return checkpoint_config(ckpt, checkpoint), _fitted_lut(checkpoint["state_dict"])
    if model:
        package = read_package(model)
        return package.config, _fitted_lut(package.state_dict)
    return settings_config(config_file), None


def _fitted_lut(state_dict):
    """The stored LUT if ``fit`` fitted it, else ``None`` (fit one on the dataset).

    ``fit`` stores the LUT and the training voxel size together; a model that never saw
    t7synth's training data (a converted official checkpoint) keeps voxel size 0 and
    the identity table, which is no intensity-mapping baseline.
    """
    voxel_size = state_dict.get("voxel_size")
    if voxel_size is not None and not bool((voxel_size > 0).all()):
        return None
    return state_dict.get("lut")


def find_predictions(folder: str | Path) -> dict[str, Path]:
    """``{sub-XXX: file}`` for the NIfTI files of ``folder`` and of its ``sub-*/anat``
    folders (the BIDS derivative dataset ``predict`` writes for a dataset input).

    Raises:
        UserError: a missing folder, or two files with the same subject label.
    """

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"prediction folder not found: {folder}")
    found: dict[str, Path] = {}
    for path in [*sorted(folder.iterdir()), *sorted(folder.glob("sub-*/anat/*"))]:
        label = subject_label(path.name)
        # Uncertainty maps of fused predictions lie beside them and are not predictions.
        if not (path.is_file() and is_nifti(path) and label) or path.name.startswith(".") or is_uncertainty(path.name):
            continue
        if label in found:
            raise UserError(
                f"two predictions for {label} in {folder}: {found[label].relative_to(folder)} and "
                f"{path.relative_to(folder)}"
            )
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
        perceptual: optional :class:`~t7synth.evaluation.perceptual.MedicalNetDistance`.
        cache_dir: preprocessed-subject cache (default: the one ``fit`` uses).
        lut: the intensity LUT to score (a checkpoint's); ``None`` fits one on the
            dataset's training split, or leaves the LUT row out if it has none
            (:attr:`notes` says so).
        ssim: ``t7synth`` (its SSIM columns only) or ``authors``, which adds the two
            SSIM forms of the authors' evaluation
            (:func:`~t7synth.measures.metrics.authors_ssim_scores`, flattened along
            the config's slice axis).
        pred_scale: ``as-is`` or ``percentile`` (:meth:`prediction_on_grid`).
        segmenter: optional external segmenter scoring each guess per structure
            (:class:`~t7synth.evaluation.segmenter.Segmenter`).
    """

    #: ``--ssim`` values.
    SSIM_FORMS = ("t7synth", "authors")

    def __init__(
        self,
        data_root: str | Path,
        config,
        perceptual=None,
        cache_dir: str | Path | None = None,
        ssim: str = "t7synth",
        lut=None,
        pred_scale: str = "as-is",
        segmenter=None,
    ):

        self.root = Path(data_root).expanduser()
        data = config.data
        self.settings = Preprocessing.from_config(data)
        if data.inference == "authors":
            # A converted official model's data.shape is inferer3T.py's frame in the scan
            # files' own axes, not a RAS+ crop: score the whole volume instead.
            self.settings = dataclasses.replace(self.settings, shape=None)
        self.records = discover(self.root)
        # Scoring needs no training subjects: an external test site may have none.
        self.splits = assign_splits(
            self.records, data.val_fraction, data.test_fraction, data.split_seed, require_train=False
        )
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root() / "preprocessed"
        self.perceptual = perceptual
        if ssim not in self.SSIM_FORMS:
            raise UserError(f"--ssim must be one of {', '.join(self.SSIM_FORMS)}, got {ssim!r}")
        self.ssim = ssim
        if pred_scale not in PRED_SCALES:
            raise UserError(f"--pred-scale must be one of {', '.join(PRED_SCALES)}, got {pred_scale!r}")
        self.pred_scale = pred_scale
        #: Optional :class:`~t7synth.evaluation.segmenter.Segmenter` (``--segmenter``).
        self.segmenter = segmenter
        #: The 7T's own no-reference quality, one dict per scored subject.
        self.target_quality: list[dict[str, float]] = []
        self.slice_axis = config.geometry.axis if config.geometry.mode == "slab" else 0
        #: What was left out and why, one line each, for the report.
        self.notes: list[str] = []
        self._unscored: dict[str, list[str]] = {}  # why true labels were not scored: subjects
        self._lut = lut
        self._lut_ready = lut is not None

    def preprocessed(self, record) -> dict:
        """A subject as training sees it (cached exactly like ``fit``'s data module)."""

        return load_or_preprocess(record, self.settings, self.cache_dir)

    @property
    def lut(self):
        """The intensity LUT given, else fitted on the training split (once), else ``None``."""
        if not self._lut_ready:
            self._lut_ready = True
            if self.splits["train"]:
                self._lut = fit_lut(
                    (d["source"], d["target"], d["mask"]) for d in map(self.preprocessed, self.splits["train"])
                )
            else:
                self.note(
                    "no intensity LUT row: no --ckpt to read it from, and the dataset has no training subjects to "
                    "fit it on"
                )
        return self._lut

    def note(self, line: str) -> None:
        """Add a line to :attr:`notes` (once)."""
        if line not in self.notes:
            self.notes.append(line)

    def on_grid(self, record, path: Path, data: dict, volume: tuple | None = None):
        """The volume in ``path`` (float32 array) on the preprocessed grid of ``data``.

        ``volume``, if given, is ``path``'s ``(array, affine)`` already read (and rescaled).

        Raises:
            UserError: unreadable file, or not on the grid of the subject's 3T input.
        """

        volume, affine = volume if volume is not None else load_volume(path)
        source, source_affine = load_volume(record.source)
        check_pair(record.source, source.shape, source_affine, path, volume.shape, affine)
        # Crop/pad only moves the origin by whole voxels: repeat it without interpolation.
        return shift_to_grid(
            np.ascontiguousarray(volume), affine, tuple(data["source"].shape[1:]), data["affine"].numpy()
        )

    def tissue_truth(self, record, data: dict):
        """The subject's true tissue labels on the preprocessed grid (1 CSF, 2 GM, 3 WM,
        0 unscored), or ``None`` without a ``dseg`` file or one whose labels name no tissue.

        The look-up table beside the ``dseg`` (or the dataset's ``dseg.tsv``) says which
        labels are CSF, GM and WM (:func:`~t7synth.measures.segmentation.read_lookup`);
        without one, labels 0-3 are read in t7synth's (and FSL FAST's) convention and
        any other label set is not scored.
        """

        if record.dseg is None:
            return None
        labels = self.on_grid(record, record.dseg, data)
        if record.dseg_table is not None:
            lookup = segmentation.read_lookup(record.dseg_table)
            if not lookup:
                self._unscored.setdefault("its dseg look-up table names no CSF, GM or WM label", []).append(
                    record.subject
                )
                return None
        elif set(np.unique(np.rint(labels)).astype(int).tolist()) <= {0, *segmentation.DEFAULT_LOOKUP}:
            lookup = segmentation.DEFAULT_LOOKUP
        else:
            self._unscored.setdefault("its dseg has labels beyond 1-3 and no dseg.tsv names them", []).append(
                record.subject
            )
            return None
        return segmentation.tissue_truth(labels, lookup)

    def manual_structures(self, record, data: dict):
        """The subject's manual structure labels on the preprocessed grid and
        ``{structure: label numbers}`` from its ``dseg.tsv``, or ``None`` without a
        ``dseg``, without a table, or with a table naming no FreeSurfer structure
        (a tissue ``dseg`` such as the demo's)."""

        if record.dseg is None or record.dseg_table is None:
            return None
        structures = read_structures(record.dseg_table)
        if not structures:
            return None
        labels = labels_on_grid(record.dseg, tuple(data["target"].shape[1:]), data["affine"].numpy())
        return labels, structures

    def prediction_on_grid(self, record, path: Path, data: dict):
        """The prediction in ``path`` on the preprocessed grid of ``data`` (1, I, J, K),
        on the scale the scores assume (:attr:`pred_scale`).

        ``as-is`` takes the file's values as ``predict`` writes them (the target's [0, 1]
        scale) and refuses a file whose in-brain values clearly leave it: its scores
        would mean nothing. ``percentile`` first normalises the file exactly as the
        target is normalised (:func:`~t7synth.data.preprocess.normalise` inside the
        subject's brain mask, with the settings' percentiles and mode), for another
        tool's output in scanner intensities.

        Raises:
            UserError: unreadable file, not on the grid of the subject's 3T input, or
                (``as-is``) in-brain values off the [0, 1] scale, naming ``--pred-scale``.
        """

        if self.pred_scale == "percentile":
            source, source_affine = load_volume(record.source)
            mask = torch.from_numpy(
                brain_mask(record.source, source, source_affine, record.mask)[None].astype(np.uint8)
            )
            volume, affine = load_volume(path)
            scaled = normalise(
                torch.from_numpy(volume[None]), mask, self.settings.percentiles, self.settings.normalisation
            )
            return torch.from_numpy(self.on_grid(record, path, data, volume=(scaled[0].numpy(), affine)))[None]
        prediction = self.on_grid(record, path, data)
        inside = prediction[data["mask"][0].numpy() > 0]
        if inside.size:
            low, high = np.percentile(inside, SCALE_PERCENTILES)
            if low < -SCALE_TOLERANCE or high > 1 + SCALE_TOLERANCE:
                raise UserError(
                    f"{path}: in-brain values {low:.4g} to {high:.4g} ({SCALE_PERCENTILES[0]:g}th to "
                    f"{SCALE_PERCENTILES[1]:g}th percentile) are not on predict's [0, 1] scale: pass --pred-scale "
                    "percentile to normalise a prediction in scanner intensities like the target"
                )
        return torch.from_numpy(prediction)[None]

    def score(self, record, path: Path, montage_dir: Path | None = None) -> list[dict[str, Any]]:
        """Rows (``model``, ``identity``, ``lut`` if there is one) of one subject; draws its montage."""

        data = self.preprocessed(record)
        source, target, mask = data["source"], data["target"], data["mask"]
        prediction = self.prediction_on_grid(record, path, data)
        guesses = {"model": prediction, "identity": source}
        if self.lut is not None:
            guesses["lut"] = apply_lut(self.lut, source, mask)
        structure = StructureScorer(target, mask, self.tissue_truth(record, data))
        self.target_quality.append(structure.target_quality)
        structures = None
        if self.segmenter is not None:
            structures = StructureAgreement(
                self.segmenter, target, data["affine"].numpy(), self.manual_structures(record, data)
            )

        def extra(kind: str, guess) -> dict[str, Any]:
            # evaluate's own additions to the scores fit computes (opt-in flags).
            scores: dict[str, Any] = {}
            if self.perceptual is not None:
                scores["perceptual"] = self.perceptual(guess.clamp(0, 1), target)
            if self.ssim == "authors":
                scores.update(metrics.authors_ssim_scores(guess, target, self.slice_axis))
            if structures is not None:
                # The prediction as it is scored (clamped, as every score sees it).
                scores.update(structures(guess.clamp(0, 1) if kind == MODEL else guess, kind))
            return scores

        try:
            rows = subject_rows(record.subject, guesses, target, mask, structure, extra)
        finally:
            if structures is not None:
                structures.close()
        if montage_dir is not None:
            model_row = rows[0]
            title = (
                f"{record.subject}  PSNR(brain) {model_row['psnr_brain']:.2f} dB  SSIM(brain) "
                f"{model_row['ssim_brain']:.3f}"
            )
            save_montage(montage_dir / f"{record.subject}.png", source, prediction, target, mask, title)
        return rows

    def run(
        self,
        predictions: dict[str, Path],
        split: str | None,
        pred_dir: Path,
        out_dir: Path | None,
        progress: bool = True,
    ) -> list[dict[str, Any]]:
        """Score every selected subject; rows in subject order, models grouped."""

        chosen = select_subjects(self.records, predictions, self.splits, split, pred_dir)
        rows: list[dict[str, Any]] = []
        montage_dir = out_dir / "montages" if out_dir is not None else None
        for record in tqdm(chosen, desc="evaluate", unit="subject", disable=None if progress else True):
            rows.extend(self.score(record, predictions[record.subject], montage_dir))
        return sort_rows(self.common_columns(rows))

    def common_columns(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Drop the true-label columns unless every subject has them (a table's means
        must cover the same subjects in every column), with a note."""
        for reason, subjects in self._unscored.items():
            self.note(f"true-label Dice not scored for {', '.join(subjects)}: {reason}")
        truth = [name for name in SECTION_COLUMNS if name.startswith("dice_true_")]
        having = {r["subject"] for r in rows if truth[0] in r}
        subjects = {r["subject"] for r in rows}
        if having and having != subjects:
            self.note(
                f"true-label Dice left out: only {len(having)} of {len(subjects)} subjects have usable tissue "
                "labels (dseg)"
            )
            rows = [{k: v for k, v in r.items() if k not in truth} for r in rows]
        manual = {k for r in rows for k in r if k.startswith("seg_true_dice_")}
        common = {k for k in manual if all(k in r for r in rows)}
        if manual != common:
            self.note(
                "per-structure Dice against manual labels left out: not every subject has manual labels of the "
                "same structures (a dseg with a dseg.tsv naming FreeSurfer structures)"
            )
            rows = [{k: v for k, v in r.items() if not k.startswith("seg_true_dice_")} for r in rows]
        return rows

    def target_quality_line(self) -> str | None:
        """The 7T's own CNR, CJV and SNR (mean ± SD over the subjects): what the rows'
        no-reference quality is read against."""
        if not self.target_quality:
            return None
        cells = ", ".join(
            f"{name} {format_cell(name, *mean_sd([q[name] for q in self.target_quality]))}"
            for name in self.target_quality[0]
        )
        return f"The 7T's own no-reference quality (the rows' CNR, CJV and SNR are read against it): {cells}"


def write_results(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    """Write the per-subject rows (``scores.csv``: model and references, the format of
    ``fit``'s ``test_scores.csv``), ``subject_scores.csv`` (the predictions only, one row per
    subject), ``summary.csv`` (mean and SD per row kind) and ``spectra.png``."""

    spectra = save_spectra(out_dir / "spectra.png", rows, "synthetic 7T (--pred)")

    names = score_names(rows)
    scores = write_rows(out_dir / EVALUATE_SCORES_FILE, rows)
    per_subject = out_dir / EVALUATE_SUBJECTS_FILE
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
    return {"scores": scores, "subjects": per_subject, "summary": summary, "spectra": spectra}


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
    model: str | None = None,
    ssim: str = "t7synth",
    pred_scale: str = "as-is",
    segmenter: str | None = None,
) -> str:
    """Score the predictions in ``pred`` against the dataset's 7T; write and return the report.

    Args:
        pred: folder of predictions (``sub-XXX`` in each file name).
        data: the dataset folder.
        split: score exactly this split (each subject needs a prediction).
        out: output folder (default ``<pred>/evaluation``).
        ckpt, model, config_file: where the preprocessing settings and split come
            from: a checkpoint, a model package or an experiment file.
        perceptual_weights: MedicalNet ResNet-10 or -50 weights: adds a 3D perceptual distance.
        progress: a bar over subjects.
        ssim: ``authors`` adds the authors' two SSIM forms (see :class:`Evaluator`).
        pred_scale: ``as-is`` (predict's [0, 1] scale, checked) or ``percentile``
            (normalised like the target): :meth:`Evaluator.prediction_on_grid`.
        segmenter: a command template with ``{input}`` and ``{output}`` that writes a
            FreeSurfer-numbered label map (:mod:`~t7synth.evaluation.segmenter`).
    """
    pred_dir = Path(pred).expanduser()
    out_dir = Path(out).expanduser() if out else pred_dir / "evaluation"
    config, lut = settings_and_lut(config_file, ckpt, model)
    predictions = find_predictions(pred_dir)

    check_writable(out_dir)  # a read-only --out is one line before scoring, not after
    for folder in (out_dir, out_dir / "montages"):
        remove_stale_temporaries(folder)
    perceptual = None
    if perceptual_weights:
        perceptual = MedicalNetDistance(perceptual_weights)
    if pred_scale not in PRED_SCALES:
        raise UserError(f"--pred-scale must be one of {', '.join(PRED_SCALES)}, got {pred_scale!r}")
    runner = None
    if segmenter is not None:
        runner = Segmenter(segmenter)
    evaluator = Evaluator(
        data, config, perceptual=perceptual, ssim=ssim, lut=lut, pred_scale=pred_scale, segmenter=runner
    )
    rows = evaluator.run(predictions, split, pred_dir, out_dir, progress=progress)
    target_quality = evaluator.target_quality_line()
    files = write_results(rows, out_dir)
    # The settings the scores were computed with, data.root the dataset scored: what
    # compare shows as config differences. Without --ckpt/--config these are the
    # built-in defaults, and name: null tells compare the model is unknown.

    settings = dataclasses.replace(
        config, data=dataclasses.replace(config.data, root=str(Path(data).expanduser().resolve()))
    )
    write_config(out_dir, settings.to_dict())
    return (
        f"{SCORING_LINE}\n"
        + format_summary(rows)
        + (f"\n{target_quality}" if target_quality else "")
        + f"\nPer-subject scores: {files['scores']} (predictions only: {files['subjects']})"
        + f"\nSummary: {files['summary']}"
        + f"\nMontages: {out_dir / 'montages'}/<subject>.png"
        + (f"\nPower spectra: {files['spectra']}" if files["spectra"] else "")
        + "".join(f"\nNote: {line}" for line in evaluator.notes)
    )
