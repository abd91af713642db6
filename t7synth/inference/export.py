"""``export``'s engine: a run folder's checkpoint -> a model package (format and reader:
:mod:`t7synth.inference.package`; the optional TorchScript file:
:mod:`t7synth.inference.torchscript`).

Only what prediction needs is kept (:func:`~t7synth.inference.package.prediction_keys`);
the members are written in a fixed order with a fixed date, so the same checkpoint
gives the same members, and the model card says where its test scores come from.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

import t7synth
from t7synth.data.profile import as_dict
from t7synth.errors import UserError
from t7synth.files import atomic_path
from t7synth.inference import torchscript as tracing
from t7synth.inference.package import (
    CARD,
    CONFIG,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    SCORES,
    TORCHSCRIPT,
    WEIGHTS,
    load_package,
    prediction_keys,
)
from t7synth.inference.trained import refuse_package
from t7synth.run_files import (
    BEST_CHECKPOINT,
    CHECKPOINTS_DIR,
    LAST_CHECKPOINT,
    TEST_SCORES_FILE,
    best_checkpoint,
    last_checkpoint,
    run_of_checkpoint,
)
from t7synth.scores import REPORT_COLUMNS, format_report, read_rows
from t7synth.training.checkpoint import check_fits, checkpoint_config, read_checkpoint


@dataclass
class ExportResult:
    """What ``export`` wrote."""

    path: Path
    checkpoint: Path
    size: int
    checkpoint_size: int
    scores: bool
    torchscript: bool

    def summary(self) -> str:
        ratio = self.size / self.checkpoint_size if self.checkpoint_size else 0.0
        parts = [
            f"{self.path}: {_megabytes(self.size)} ({ratio:.0%} of {self.checkpoint.name}, "
            f"{_megabytes(self.checkpoint_size)})"
        ]
        parts.append("test scores in README.md" if self.scores else "no test scores (see README.md)")
        if self.torchscript:
            parts.append(f"TorchScript net in {TORCHSCRIPT}")
        return "; ".join(parts)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.0f} kB"


def resolve_source(source: str | Path) -> tuple[Path, Path | None]:
    """The checkpoint to export and its run folder (``None`` when it is not in one).

    A run folder (``runs/<experiment>/version_N``) stands for its ``checkpoints/best.ckpt``,
    else its ``last.ckpt``: the checkpoint ``fit`` tested.
    """
    source = Path(source).expanduser()
    if source.is_dir():
        for checkpoint in (best_checkpoint(source), last_checkpoint(source)):
            if checkpoint.is_file():
                return checkpoint, source
        versions = sorted(p.name for p in source.glob("version_*") if p.is_dir())
        hint = f" (a run folder is one version, e.g. {source / versions[0]})" if versions else ""
        raise UserError(
            f"{source} holds no {CHECKPOINTS_DIR}/{BEST_CHECKPOINT} or {CHECKPOINTS_DIR}/{LAST_CHECKPOINT}{hint}"
        )
    if not source.is_file():
        raise UserError(f"run folder or checkpoint not found: {source}")
    refuse_package(source, f"{source} is already a model package")
    return source, run_of_checkpoint(source)


def tested_scores(checkpoint: Path, run: Path | None) -> tuple[list[dict[str, str]], str]:
    """The run's per-subject test rows when ``checkpoint`` is the one ``fit`` tested,
    and a sentence saying where they come from (or why there are none).

    ``fit`` tests ``checkpoints/best.ckpt`` (``last.ckpt`` when it kept no best); the
    scores of any other checkpoint are unknown.
    """
    if run is None:
        return (
            [],
            f"No test scores: the checkpoint is not in a run folder (runs/<experiment>/version_N/{CHECKPOINTS_DIR}/).",
        )
    table = run / SCORES
    tested = BEST_CHECKPOINT if best_checkpoint(run).is_file() else LAST_CHECKPOINT
    if checkpoint.name != tested:
        return [], f"No test scores: `fit` tested {CHECKPOINTS_DIR}/{tested}, not {checkpoint.name}."
    if not table.is_file():
        return [], f"No test scores: the run did not reach its test (no {TEST_SCORES_FILE})."
    try:
        rows = read_rows(table)
    except UserError as error:
        # Unreadable, binary, ragged, no model row, a cell that is no number (NaN):
        # the card says why instead of a table.
        return [], f"No test scores: {table.name} of the run could not be read: {error}."
    return rows, f"Test scores from the run's {table.name}, computed by `fit` with this checkpoint."


def export_package(source: str | Path, out: str | Path | None = None, torchscript: bool = False) -> ExportResult:
    """Write the package of a run folder or checkpoint (see the module docstring).

    Args:
        source: a run folder (its ``checkpoints/best.ckpt``) or a ``.ckpt`` file.
        out: the ``.zip`` to write; default ``<run>/model.zip``, else the checkpoint's
            name with ``.zip``.
        torchscript: also trace the network to TorchScript (checked against the model).

    Raises:
        UserError: see :func:`resolve_source` and
            :func:`t7synth.training.checkpoint.read_checkpoint`; an ``out`` that is not
            a ``.zip`` or would overwrite the checkpoint; a trace that does not
            reproduce the model.
    """
    checkpoint_path, run = resolve_source(source)
    out = (
        Path(out).expanduser()
        if out is not None
        else (run / "model.zip" if run is not None else checkpoint_path.with_suffix(".zip"))
    )
    if out.suffix.lower() != ".zip":
        raise UserError(f"--out {out}: a model package is a .zip file")
    if out.exists() and out.resolve() == checkpoint_path.resolve():
        raise UserError(f"--out {out} would overwrite the checkpoint")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; name the .zip file to write")

    checkpoint = read_checkpoint(checkpoint_path)
    config = checkpoint_config(checkpoint_path, checkpoint)
    meta_model = check_fits(checkpoint_path, config, checkpoint["state_dict"])
    keys = prediction_keys(meta_model)
    # clone(): a slice of a larger storage would otherwise save the whole storage.
    state = {
        key: tensor.detach().clone().contiguous() for key, tensor in checkpoint["state_dict"].items() if key in keys
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    weights = buffer.getvalue()
    rows, provenance = tested_scores(checkpoint_path, run)
    manifest = _manifest(config, checkpoint, checkpoint_path, state, weights, meta_model.uses_context())
    del checkpoint, meta_model

    # Everything deflated: float weights barely compress, but the pickle and the
    # per-tensor records do (about a quarter off a small net).
    members = {CONFIG: yaml.safe_dump(config.to_dict(), sort_keys=False).encode(), WEIGHTS: weights}
    if rows:
        members[SCORES] = (run / SCORES).read_bytes()
    with atomic_path(out) as tmp:
        _write_zip(tmp, {**members, MANIFEST: _json(manifest), CARD: model_card(manifest, rows, provenance).encode()})
        if torchscript:
            # Traced from the package just written, so the trace is of what users get;
            # the manifest and the card then say what the traced net takes.
            model = load_package(tmp)
            members[TORCHSCRIPT], shapes = tracing.trace_network(model)
            manifest["torchscript"] = {
                "file": TORCHSCRIPT,
                "side_multiple": tracing.side_multiple(model),
                "checked_input_shapes": shapes,
            }
            _write_zip(
                tmp, {**members, MANIFEST: _json(manifest), CARD: model_card(manifest, rows, provenance).encode()}
            )
    return ExportResult(
        out, checkpoint_path, out.stat().st_size, checkpoint_path.stat().st_size, bool(rows), torchscript
    )


def _json(data: dict) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode()


def _write_zip(path: Path, members: dict[str, bytes]) -> None:
    """A zip of ``members`` (names in a fixed order, a fixed date: the same content
    gives the same members)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name in sorted(members, key=lambda n: (n != MANIFEST, n)):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(info, members[name], compress_type=zipfile.ZIP_DEFLATED)


def _manifest(
    config, checkpoint: dict, checkpoint_path: Path, state: dict, weights: bytes, context: bool
) -> dict[str, Any]:
    voxel = state.get("voxel_size")
    voxel_size = [round(float(v), 6) for v in voxel] if voxel is not None and bool((voxel > 0).all()) else None
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": config.model.name,
        "t7synth_version": t7synth.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "created": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        # Only the last folders: the full path would publish the exporter's file system.
        "source": {
            "checkpoint": "/".join(checkpoint_path.resolve().parts[-4:]),
            "epoch": checkpoint.get("epoch"),
            "global_step": checkpoint.get("global_step"),
        },
        "weights": {
            "file": WEIGHTS,
            "sha256": hashlib.sha256(weights).hexdigest(),
            "tensors": len(state),
            "parameters": int(sum(t.numel() for k, t in state.items() if "." in k)),
            "dtype": sorted({str(t.dtype).replace("torch.", "") for t in state.values()}),
        },
        "preprocessing": {
            "orientation": "RAS+ (undone on output)",
            "voxel_size_mm": voxel_size,
            "shape": config.data.shape,
            "normalisation": config.data.normalisation,
            "percentiles": list(config.data.percentiles),
            "intensity_range": [0.0, 1.0],
            # What the training inputs looked like (data/profile.py); the weights carry
            # it too (input_profile, intensity_histogram), this copy is for people.
            "training_inputs": training_inputs(state),
        },
        "geometry": config.to_dict()["geometry"],
        # Whether the network takes (age, sex, slice position) tokens beside its input.
        "context_tokens": bool(context),
        # The training subjects' median age (0: unknown), what predict --unconditioned uses.
        "train_median_age": round(float(state["train_age"]), 3) if "train_age" in state else None,
    }


def training_inputs(state: dict) -> dict[str, float] | None:
    """The ``input_profile`` buffer of ``state`` as named plain numbers, ``None`` when
    absent or the model saw no training data."""
    profile = state.get("input_profile")
    if profile is None:
        return None
    values = as_dict(profile)
    return {key: round(value, 6) for key, value in values.items()} if values["fitted"] else None


def model_card(manifest: dict, rows: list[dict[str, str]], provenance: str) -> str:
    """The package's ``README.md``: what the model is, its test scores, how to use it."""
    source, pre, geometry = manifest["source"], manifest["preprocessing"], manifest["geometry"]
    if geometry["mode"] == "slab":
        shape = (
            f"2.5D: windows of {geometry['slices']} slices along array axis {geometry['axis']} (after RAS+ "
            "reorientation)"
        )
        net_input = f"(B, {geometry['slices']}, H, W) slices as channels" + (
            ", plus (B, 3, 1) context tokens (age in years, sex 1 F / 0 M / 0.5 unknown, slice position)"
            if manifest.get("context_tokens")
            else ""
        )
    else:
        shape = f"3D patches of {geometry['patch']} voxels, Hann-blended with overlap {geometry['overlap']}"
        net_input = "(B, 1, D, H, W) patches"
    voxel = (
        "x".join(f"{v:g}" for v in pre["voxel_size_mm"]) + " mm"
        if pre["voxel_size_mm"]
        else "the input's own voxel size"
    )
    lines = [
        f"# t7synth model: {manifest['model']}",
        "",
        f"Synthesises 7T-like T1-weighted brain MRI from 3T scans. Exported by t7synth {manifest['t7synth_version']} "
        f"on {manifest['created'][:10]} from `{source['checkpoint']}` (epoch {source['epoch']}, step "
        f"{source['global_step']}); "
        f"{manifest['weights']['parameters']:,} parameters, weights only (no optimiser or discriminator state).",
        "",
        "## Use",
        "",
        "```bash",
        "# with t7synth installed (in a clone of its repository: make install)",
        "python -m t7synth.predict --model model.zip --input scan.nii.gz --output scan_synth7T.nii.gz [--mask "
        "brain_mask.nii.gz]",
        "python -m t7synth.predict --model model.zip --input scans/ --output synth/",
        "python -m t7synth.evaluate --model model.zip --pred synth/ --data DATASET --split test",
        "```",
        "",
        "The output lies on the input's grid (same affine), float32 in [0, 1], zero outside the brain mask.",
        "",
        "## Test scores",
        "",
        provenance,
    ]
    if rows:
        n = len({r["subject"] for r in rows})
        report = format_report(
            rows, f"{manifest['model']} (synthetic 7T)", REPORT_COLUMNS, f"{n} held-out subjects, mean ± SD"
        )
        lines += ["", "```", report, "```"]
    lines += [
        "",
        "## What the model expects",
        "",
        f"- Input: a 3T T1-weighted NIfTI in any orientation; it is reoriented to RAS+, resampled to {voxel}"
        + (f", cropped or padded to {pre['shape']} around the brain" if pre["shape"] else "")
        + ", and scaled per volume: "
        + f"`{pre['normalisation']}` normalisation to [0, 1] by the intensity percentiles "
        f"{pre['percentiles'][0]:g} and "
        f"{pre['percentiles'][1]:g} inside the brain mask (the given mask, else the voxels above 0).",
        f"- Geometry: {shape}.",
        conditioning_line(manifest),
        "- `predict` undoes every step on the way out.",
        "",
        "## Files",
        "",
        f"- `{WEIGHTS}`: `{{name: tensor}}` for `torch.load(..., weights_only=True)`; the network under `net.`, "
        "the intensity-LUT baseline as `lut`, the training voxel size as `voxel_size`.",
        f"- `{CONFIG}`: the resolved training config; `{MANIFEST}`: provenance, preprocessing, SHA-256 of the weights.",
    ]
    if rows:
        lines.append(
            f"- `{SCORES}`: per-subject test scores (`model` is the synthetic 7T, `identity` the 3T input, `lut` "
            "the intensity LUT)."
        )
    traced = manifest.get("torchscript")
    if traced:
        multiple = traced["side_multiple"]
        checked = " and ".join("x".join(map(str, shape)) for shape in traced["checked_input_shapes"])
        lines.append(
            f"- `{TORCHSCRIPT}`: the network alone, traced (`torch.jit.load`): input {net_input} of preprocessed "
            f"intensities, checked against the model at {checked}. "
            + (
                f"Give it spatial sides that are multiples of {multiple} (pad with zeros, crop the output back); "
                if geometry["mode"] == "slab"
                else f"Give it patches of exactly {geometry['patch']} voxels; "
            )
            + "the tiling and the pre- and post-processing above are not part of it."
        )
    return "\n".join(lines) + "\n"


def conditioning_line(manifest: dict) -> str:
    """The model card's line on the inputs beside the scan: age and sex, or none."""
    if not manifest.get("context_tokens"):
        return "- Inputs beside the scan: none (the model is not conditioned on age or sex)."
    median = manifest.get("train_median_age")
    fallback = (
        f"the training set's median age ({median:g} years) and sex 0.5"
        if median
        else "age 0 and sex 0.5 (the training ages are not recorded)"
    )
    return (
        "- Inputs beside the scan: **age and sex** (the net is conditioned on them). Give `--age YEARS --sex F|M` "
        "for a file, or let `predict` read them from the scan's JSON sidecar or the `participants.tsv` of the BIDS "
        "dataset it sits in (a dataset input uses its table); without them `predict` refuses, unless "
        f"`--unconditioned`, which uses {fallback}."
    )
