"""``python -m t7synth.evaluate``: score synthetic volumes against the dataset's 7T.

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

Writes into ``--out`` (default ``<pred>/evaluation``): ``metrics.csv`` (one row per
subject), ``summary.csv`` (mean and SD of the predictions and both references) and
``montages/<subject>.png``; prints the summary table. See ``docs/metrics.md``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from t7synth.cli import ArgumentParser, console_entry, run_main
from t7synth.errors import UserError

#: Row labels of ``summary.csv``, as in ``fit``'s ``test_scores.csv``.
MODELS = ("model", "identity", "lut")
TABLE_COLUMNS = ("psnr_brain", "ssim_brain", "psnr", "ssim", "mae")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m t7synth.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pred", required=True, metavar="DIR", help="folder of predictions (sub-XXX anywhere in each name)")
    parser.add_argument("--data", required=True, metavar="DATASET", help="dataset folder with the 7T targets")
    parser.add_argument("--split", choices=["train", "val", "test"], help="score exactly this split (default: every subject with a prediction)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: <pred>/evaluation)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--ckpt", metavar="CKPT", help="read the preprocessing settings and split from this checkpoint")
    source.add_argument("--config", metavar="FILE", help="read them from this experiment YAML (default: built-in defaults)")
    parser.add_argument("--perceptual-weights", metavar="FILE", help="MedicalNet ResNet-10 weights: adds a 3D perceptual distance")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def settings_config(config_file: str | None = None, ckpt: str | None = None):
    """The :class:`~t7synth.config.Config` whose ``data`` settings the dataset is read with.

    The checkpoint's own config when ``ckpt`` is given, else the experiment file
    resolved as ``fit`` resolves it, else the dataclass defaults.
    """
    if ckpt:
        from t7synth.checkpoint import checkpoint_config

        return checkpoint_config(ckpt)
    from t7synth.config import Config, resolve

    return resolve(None, config_file) if config_file else Config()


def find_predictions(folder: str | Path) -> dict[str, Path]:
    """``{sub-XXX: file}`` for the NIfTI files of ``folder`` (not its subfolders).

    Raises:
        UserError: a missing folder, or two files with the same subject label.
    """
    from t7synth.data.naming import subject_label
    from t7synth.synthesis import is_nifti

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
        from t7synth.data.datamodule import assign_splits
        from t7synth.data.layout import discover
        from t7synth.data.preprocess import Preprocessing
        from t7synth.io import cache_root

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

        from t7synth.data.layout import check_pair, load_volume
        from t7synth.synthesis import shift_to_grid

        prediction, affine = load_volume(path)
        source, source_affine = load_volume(record.source)
        check_pair(record.source, source.shape, source_affine, path, prediction.shape, affine)
        # Crop/pad only moves the origin by whole voxels: repeat it without interpolation.
        on_grid = shift_to_grid(np.ascontiguousarray(prediction), affine, tuple(data["source"].shape[1:]), data["affine"].numpy())
        return torch.from_numpy(on_grid)[None]

    def score(self, record, path: Path, montage_dir: Path | None = None) -> list[dict[str, Any]]:
        """Rows (``model``, ``identity``, ``lut``) of one subject; draws its montage."""
        from t7synth import metrics
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
        return sorted(rows, key=lambda r: (MODELS.index(r["model"]), r["subject"]))


# -- tables -----------------------------------------------------------------------
def metric_names(rows: list[dict[str, Any]]) -> list[str]:
    from t7synth.metrics import NAMES

    return list(NAMES) + (["perceptual"] if rows and "perceptual" in rows[0] else [])


def summary_table(rows: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """``{model: {metric: (mean, sd)}}`` for the predictions and both references."""
    from t7synth.report import mean_sd

    names = metric_names(rows)
    table = {}
    for model in MODELS:
        selected = [r for r in rows if r["model"] == model]
        if selected:
            table[model] = {name: mean_sd([float(r[name]) for r in selected]) for name in names}
    return table


def format_summary(table: dict[str, dict[str, tuple[float, float]]], n_subjects: int) -> str:
    """The printed table: predictions and references, mean ± SD per column."""
    from t7synth.report import LABELS

    columns = list(TABLE_COLUMNS) + (["perceptual"] if "perceptual" in next(iter(table.values())) else [])
    width = 24
    lines = [f"{n_subjects} subjects", f"{'':{width}}" + "".join(f"{c:>18}" for c in columns)]
    for model, scores in table.items():
        label = LABELS.get(model) or "synthetic 7T (--pred)"
        lines.append(f"{label:{width}}" + "".join(f"{format_cell(c, *scores[c]):>18}" for c in columns))
    if "model" in table:
        gains = [
            f"{table['model']['psnr_brain'][0] - table[b]['psnr_brain'][0]:+.2f} dB over {LABELS[b]}" for b in ("identity", "lut") if b in table
        ]
        lines.append("In-brain PSNR gain: " + ", ".join(gains))
    return "\n".join(lines)


def format_cell(name: str, mean: float, sd: float) -> str:
    """``mean ± sd`` with 2 decimals for dB, 4 otherwise."""
    return f"{mean:.2f} ± {sd:.2f}" if name.startswith("psnr") else f"{mean:.4f} ± {sd:.4f}"


def write_results(rows: list[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    """Write ``metrics.csv`` (the predictions, one row per subject) and ``summary.csv``."""
    from t7synth.io import atomic_path

    names = metric_names(rows)
    per_subject = out_dir / "metrics.csv"
    with atomic_path(per_subject) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subject", *names])
        for row in rows:
            if row["model"] == "model":
                writer.writerow([row["subject"], *(f"{row[n]:.6f}" for n in names)])
    summary = out_dir / "summary.csv"
    table = summary_table(rows)
    with atomic_path(summary) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "n", *(f"{n}_{stat}" for n in names for stat in ("mean", "sd"))])
        for model, scores in table.items():
            n = sum(1 for r in rows if r["model"] == model)
            writer.writerow([model, n, *(f"{v:.6f}" for name in names for v in scores[name])])
    return per_subject, summary


# -- optional 3D perceptual distance ------------------------------------------------
class MedicalNetDistance:
    """3D perceptual distance on MedicalNet ResNet-10 features (the authors' metric).

    MedicalNet (Chen et al. 2019; ``resnet_10_23dataset.pth``) is a 3D ResNet-10 whose
    layers 3 and 4 keep stride 1 and use dilation 2 and 4. MONAI's ``resnet10`` has the
    same weights' shapes but strides instead, so its convolutions are set to
    MedicalNet's strides and dilations after it is built. The distance follows MONAI's
    ``MedicalNetPerceptualSimilarity``: z-score each volume, take the last stage's
    features, normalise them over channels, and average the squared difference summed
    over channels across space. The weights are read with ``weights_only=True`` from a
    file the user supplies (nothing is downloaded).

    Args:
        weights: a MedicalNet ResNet-10 state dict (``module.`` prefixes and the
            segmentation head ``conv_seg`` are ignored), or a dict holding one under
            ``state_dict``.
        device: where the features are computed.
    """

    def __init__(self, weights: str | Path, device: str = "cpu"):
        import torch
        from monai.networks.nets import resnet10

        from t7synth.losses import load_feature_weights

        net = resnet10(spatial_dims=3, n_input_channels=1, conv1_t_size=7, conv1_t_stride=2, shortcut_type="B", bias_downsample=False, num_classes=1)
        load_feature_weights(net, weights, "--perceptual-weights", "a MedicalNet ResNet-10", skip=("conv_seg", "fc."))
        for stage, dilation in ((net.layer3, 2), (net.layer4, 4)):
            for module in stage.modules():
                if isinstance(module, torch.nn.Conv3d):
                    module.stride = (1, 1, 1)
                    if module.kernel_size[0] == 3:
                        module.dilation = (dilation,) * 3
                        module.padding = (dilation,) * 3
        self.net = torch.nn.Sequential(net.conv1, net.bn1, net.act, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
        self.net.eval().requires_grad_(False).to(device)
        self.device = device

    def features(self, volume):
        import torch

        x = volume.float().reshape(1, 1, *volume.shape[-3:]).to(self.device)
        x = (x - x.mean()) / x.std().clamp(min=1e-8)
        with torch.no_grad():
            f = self.net(x)
        return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)

    def __call__(self, prediction, target) -> float:
        difference = (self.features(prediction) - self.features(target)) ** 2
        return float(difference.sum(dim=1).mean())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    pred_dir = Path(args.pred).expanduser()
    out_dir = Path(args.out).expanduser() if args.out else pred_dir / "evaluation"
    config = settings_config(args.config, args.ckpt)
    predictions = find_predictions(pred_dir)
    perceptual = MedicalNetDistance(args.perceptual_weights) if args.perceptual_weights else None
    evaluator = Evaluator(args.data, config, perceptual=perceptual)
    rows = evaluator.run(predictions, args.split, pred_dir, out_dir, progress=not args.no_progress)
    per_subject, summary = write_results(rows, out_dir)
    n_subjects = len({r["subject"] for r in rows})
    print(format_summary(summary_table(rows), n_subjects))
    print(f"Per-subject scores: {per_subject}\nSummary: {summary}\nMontages: {out_dir / 'montages'}/<subject>.png")
    return 0


#: The ``t7synth-evaluate`` console script.
console = console_entry(main)

if __name__ == "__main__":
    sys.exit(run_main(main))
