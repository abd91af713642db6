"""A trained model as one shareable file, ``model.zip``: what ``export`` writes and
``predict --model`` / ``evaluate --model`` read.

A Lightning checkpoint carries what training needs to continue (optimizer moments,
the GAN's discriminator, loop and callback states): about three times the weights.
A package keeps what prediction needs and nothing else::

    model.zip
      t7synth-model.json    manifest: format version, model, source checkpoint, preprocessing,
                            the weights file's SHA-256
      weights.pt            {name: tensor}: the generator's weights and the module's own
                            buffers (intensity LUT, training voxel size; WATNet's wavelet
                            statistics live in its net), written by ``torch.save``
      config.yaml           the resolved config the checkpoint was trained with
      README.md             a model card: provenance, test scores, how to use it
      test_scores.csv       per-subject test scores (when the exported checkpoint is the
                            one ``fit`` tested)
      net.torchscript.pt    optional (``--torchscript``): the traced network alone

Reading a package never runs code from it (a package is something people download):
member names are checked before anything is read (no folders, no ``..``, no absolute
or drive paths, no duplicates) and their declared sizes are bounded; nothing is
extracted to disk; ``weights.pt`` is read with ``torch.load(weights_only=True)``
(PyTorch's restricted unpickler, refused outright where this torch would not honour
it, see :mod:`t7synth.training.checkpoint`) and must hold only tensors; YAML is read
with ``yaml.safe_load`` and JSON with ``json``. The TorchScript file is for users
outside t7synth and is never loaded here. The model is then built from the config
through the registry on the meta device, compared tensor by tensor with the weights,
and only then allocated, as checkpoints are.

Weights are a ``torch.save`` of a plain tensor dict rather than safetensors, which is
not a dependency of this project; the restricted unpickler gives the same guarantee
(no code runs) for this content.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from t7synth import registry
from t7synth.errors import UserError
from t7synth.models.buffers import LATER_BUFFERS
from t7synth.run_files import (
    BEST_CHECKPOINT,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    LAST_CHECKPOINT,
    TEST_SCORES_FILE,
    best_checkpoint,
    last_checkpoint,
    run_of_checkpoint,
)
from t7synth.scores import read_rows
from t7synth.textfiles import decode_text, loads_json, loads_yaml

#: The manifest's ``format`` and the newest ``format_version`` this t7synth reads.
FORMAT = "t7synth-model"
FORMAT_VERSION = 1
#: Member names (flat: a package has no folders).
MANIFEST = "t7synth-model.json"
WEIGHTS = "weights.pt"
CONFIG = CONFIG_FILE  # the run folder's names: a package carries its run's files
CARD = "README.md"
SCORES = TEST_SCORES_FILE
TORCHSCRIPT = "net.torchscript.pt"
#: Upper bounds on a member's declared (uncompressed) size: text members are small,
#: weights may be large (the paper's GAN U-Net is about 1.1 GB in float32).
MAX_TEXT_BYTES = 16 * 2**20
MAX_WEIGHTS_BYTES = 32 * 2**30
MAX_MEMBERS = 64
#: What ``export`` checks a TorchScript trace against the PyTorch model to.
TORCHSCRIPT_TOLERANCE = 1e-5


@dataclass
class Package:
    """A package's contents, checked (see :func:`read_package`).

    ``state_dict`` is empty when the package was read without its weights.
    """

    path: Path
    manifest: dict[str, Any]
    config: Any  # t7synth.config.Config
    state_dict: dict[str, Any]


# -- reading ------------------------------------------------------------------------------
def is_package(path: str | Path) -> bool:
    """Whether ``path`` is a zip file with a t7synth manifest (a checkpoint is a zip
    too, written by ``torch.save``, but has no manifest)."""
    path = Path(path).expanduser()
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return MANIFEST in archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def _check_member_names(path: Path, infos: list[zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
    """``{name: info}`` after refusing any name that could point outside a folder, a
    duplicate, too many members, or a declared size over the bounds."""
    if len(infos) > MAX_MEMBERS:
        raise UserError(f"model package {path}: {len(infos)} members, more than a package has ({MAX_MEMBERS} at most)")
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename
        pure = PurePosixPath(name)
        # A package is flat: any separator, parent reference, absolute or drive path,
        # or control character is refused, even though nothing is ever extracted.
        if (
            not name
            or "/" in name
            or "\\" in name
            or ":" in name
            or name in (".", "..")
            or pure.is_absolute()
            or any(ord(c) < 32 for c in name)
        ):
            raise UserError(f"model package {path}: unsafe member name {name!r}; refusing to read it")
        if name in members:
            raise UserError(f"model package {path}: member {name!r} appears twice; refusing to read it")
        limit = MAX_WEIGHTS_BYTES if name in (WEIGHTS, TORCHSCRIPT) else MAX_TEXT_BYTES
        if info.file_size > limit:
            raise UserError(f"model package {path}: member {name!r} declares {info.file_size} bytes, more than {limit}")
        members[name] = info
    return members


def _read_member(path: Path, archive: zipfile.ZipFile, members: dict, name: str, required: bool = True) -> bytes | None:
    if name not in members:
        if required:
            raise UserError(f"model package {path} has no {name}")
        return None
    try:
        data = archive.read(members[name])
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as error:
        raise UserError(f"model package {path}: cannot read {name}: {_first_line(error)}") from None
    # zipfile stops at the declared size; a shorter member is a truncated file.
    if len(data) != members[name].file_size:
        raise UserError(f"model package {path}: {name} is truncated")
    return data


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def read_package(path: str | Path, weights: bool = True) -> Package:
    """Read and check a package without running any code from it.

    Args:
        path: the ``.zip`` file.
        weights: also read ``weights.pt`` (``False`` when only the config is needed).

    Raises:
        UserError: a missing or non-zip file, an unsafe or duplicate member name, an
            oversized member, a missing manifest/config/weights, a manifest of another
            format or a newer version, YAML or pickle content that is refused, weights
            whose SHA-256 differs from the manifest's, or a config that does not check.
    """

    from t7synth.config import Config, validate

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"model package not found: {path}")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a model package (not a zip file; export one with python -m t7synth.export)")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise UserError(f"cannot read model package {path}: {_first_line(error)}") from None
    with archive:
        names = archive.namelist()
        if MANIFEST not in names:
            # A checkpoint is a zip too (torch.save's format), with a data.pkl inside.
            hint = " (it looks like a checkpoint: use --ckpt)" if any(n.endswith("/data.pkl") for n in names) else ""
            raise UserError(f"{path} is not a model package: no {MANIFEST}{hint}")
        members = _check_member_names(path, archive.infolist())
        manifest = _parse_manifest(path, _read_member(path, archive, members, MANIFEST))
        # safe_load refuses python/* tags: a config that would build objects is "not plain YAML".
        what = f"model package {path}: {CONFIG}"
        raw_config = loads_yaml(decode_text(_read_member(path, archive, members, CONFIG), what), what)
        if not isinstance(raw_config, dict):
            raise UserError(f"model package {path}: {CONFIG} must hold a mapping of keys")
        try:
            config = Config.from_dict(raw_config)
            validate(config)
        except UserError as error:
            raise UserError(f"model package {path}: {CONFIG}: {error}") from None
        if manifest.get("model") != config.model.name:
            raise UserError(
                f"model package {path}: the manifest names model {manifest.get('model')!r}, {CONFIG} "
                f"{config.model.name!r}"
            )
        state: dict[str, Any] = {}
        if weights:
            data = _read_member(path, archive, members, WEIGHTS)
            listed = manifest.get("weights")
            expected = listed.get("sha256") if isinstance(listed, dict) else None
            if hashlib.sha256(data).hexdigest() != expected:
                raise UserError(
                    f"model package {path}: {WEIGHTS} does not match the SHA-256 in {MANIFEST} (damaged or altered)"
                )
            state = _load_weights(path, data)
    return Package(path, manifest, config, state)


def _parse_manifest(path: Path, data: bytes) -> dict[str, Any]:
    what = f"model package {path}: {MANIFEST}"
    manifest = loads_json(decode_text(data, what), what)  # encoding, nesting, NaN: one line
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path} is not a t7synth model package ({MANIFEST} has no format {FORMAT!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise UserError(f"model package {path}: bad format_version {version!r} in {MANIFEST}")
    if version > FORMAT_VERSION:
        raise UserError(
            f"model package {path} has format version {version}; this t7synth reads up to {FORMAT_VERSION} "
            "(upgrade t7synth)"
        )
    return manifest


def _load_weights(path: Path, data: bytes) -> dict[str, Any]:
    import torch

    from t7synth.training.checkpoint import _weights_only_is_honoured

    if not _weights_only_is_honoured():
        raise UserError(
            f"refusing to read model package {path}: this torch {torch.__version__} does not restrict unpickling"
        )
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # refused pickle opcodes or globals, a damaged file
        raise UserError(f"model package {path}: {WEIGHTS} was refused: {_first_line(error)}") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise UserError(f"model package {path}: {WEIGHTS} must hold a mapping of names to tensors")
    return state


def package_config(path: str | Path):
    """The resolved :class:`~t7synth.config.Config` of a package (its weights unread)."""
    return read_package(path, weights=False).config


def load_package(path: str | Path, device: str = "cpu"):
    """Rebuild the :class:`~t7synth.models.base.SynthesisModule` of a package, in eval
    mode on ``device``; ready for :class:`~t7synth.inference.synthesiser.Synthesiser`.

    The module is built on the meta device and compared with the weights first (no
    memory is allocated for a config that claims a huge network); the parts a package
    leaves out by design (:func:`prediction_keys`) stay as built.

    Raises:
        UserError: see :func:`read_package`; also weights that do not fit the model
            the config describes.
    """
    import torch

    package = read_package(path)
    model = registry.build_on_meta(package.config, f"model package {package.path}")
    package.state_dict = type(model).complete_state_dict(package.state_dict)
    keys = prediction_keys(model)
    expected = {key: tensor for key, tensor in model.state_dict().items() if key in keys}
    problems = [f"{key} is missing" for key in expected if key not in package.state_dict and key not in LATER_BUFFERS]
    problems += [
        f"{key} has shape {tuple(package.state_dict[key].shape)}, the model's is {tuple(tensor.shape)}"
        for key, tensor in expected.items()
        if key in package.state_dict and tuple(package.state_dict[key].shape) != tuple(tensor.shape)
    ]
    problems += [f"{key} is not in the model" for key in package.state_dict if key not in expected]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UserError(
            f"model package {package.path} does not fit model {package.config.model.name!r}: "
            + "; ".join(problems[:3])
            + more
        )
    model = model.to_empty(device="cpu")
    # Parts left out of the package (a GAN's discriminator) are allocated, not trained:
    # zero them so that nothing in the module is uninitialised memory.
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if key not in keys:
                tensor.zero_()
    model.load_state_dict(package.state_dict, strict=False)
    return model.eval().to(device)


def prediction_keys(model) -> set[str]:
    """The ``state_dict`` keys prediction needs: the generator's and the module's own.

    The module's own tensors are its direct buffers (``lut``, ``voxel_size``); the
    generator is :meth:`~t7synth.models.base.SynthesisModule.generator`, registered under
    whatever attribute name the model gives it. Other children (the GAN's
    discriminator) only serve training.
    """
    generator = model.generator()
    names = {name for name, child in model.named_children() if child is generator}
    return {key for key in model.state_dict() if "." not in key or key.split(".", 1)[0] in names}


# -- writing ------------------------------------------------------------------------------
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
    if is_package(source):
        raise UserError(f"{source} is already a model package")
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
    import torch

    from t7synth.files import atomic_path
    from t7synth.training.checkpoint import check_fits, checkpoint_config, read_checkpoint

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

    import yaml

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
            members[TORCHSCRIPT], shapes = trace_network(model)
            manifest["torchscript"] = {
                "file": TORCHSCRIPT,
                "side_multiple": side_multiple(model),
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
    import datetime

    import torch

    import t7synth

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
    from t7synth.data.profile import as_dict

    profile = state.get("input_profile")
    if profile is None:
        return None
    values = as_dict(profile)
    return {key: round(value, 6) for key, value in values.items()} if values["fitted"] else None


def model_card(manifest: dict, rows: list[dict[str, str]], provenance: str) -> str:
    """The package's ``README.md``: what the model is, its test scores, how to use it."""
    from t7synth.scores import REPORT_COLUMNS, format_report

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


def side_multiple(model) -> int:
    """What every spatial side of a traced network's input must be a multiple of.

    A network pads other sizes internally, a branch a trace does not record (it would
    fail, or pad by the example's amounts). Nets declare their ``size_divisor``
    (U-Net, V-Net); the others (WATNet pads to 8) get 64, a multiple of every
    power-of-two divisor up to 64.
    """
    return int(getattr(model.generator(), "size_divisor", 0) or 64)


def example_inputs(model, grow: int = 0) -> tuple:
    """Random inputs of the network's forward, seeded by ``grow``.

    A 2.5D window whose in-plane sides are training's rounded up to
    :func:`side_multiple`, plus ``grow`` multiples of it, with context tokens when the
    net takes them; or a 3D patch of exactly ``geometry.patch``, which is all the tiler
    feeds a 3D model. ``grow > 0`` also changes the batch size.
    """
    import torch

    geometry, data = model.geometry, model.config.data
    generator = torch.Generator().manual_seed(grow)
    batch = 2 if grow == 0 else 3
    if geometry.mode == "slab":
        if geometry.inplane:
            plane = list(geometry.inplane)
        elif data.shape:
            plane = [s for axis, s in enumerate(data.shape) if axis != geometry.axis]
        else:
            plane = [48, 40]
        multiple = side_multiple(model)
        sides = [(-(-p // multiple) + grow) * multiple for p in plane]
        x = torch.rand(batch, geometry.slices, *sides, generator=generator)
        if model.uses_context():
            return x, torch.rand(batch, 3, 1, generator=generator)
        return (x,)
    return (torch.rand(batch, 1, *geometry.patch, generator=generator),)


def trace_network(model) -> tuple[bytes, list[list[int]]]:
    """The model's network as TorchScript bytes, checked against the model, and the
    input shapes it was checked at.

    Traced with :meth:`pytorch_lightning.LightningModule.to_torchscript` on one input and run on it and
    on a larger one (:func:`example_inputs`): 2.5D models see whole slices of any
    size, so a trace that only held for its example's size would be wrong.

    Raises:
        UserError: the trace does not reproduce the model within
            :data:`TORCHSCRIPT_TOLERANCE` (then export without ``--torchscript``).
    """
    import warnings

    import torch

    examples = [example_inputs(model, grow) for grow in (0, 1)]
    with warnings.catch_warnings():
        # TracerWarnings about shape-dependent branches, and the deprecation notices
        # of torch.jit and Lightning: the check below decides whether the trace is right.
        warnings.simplefilter("ignore")
        with torch.no_grad():
            traced = model.to_torchscript(method="trace", example_inputs=examples[0])
            buffer = io.BytesIO()
            torch.jit.save(traced, buffer)
            buffer.seek(0)
            reloaded = torch.jit.load(buffer)
            for inputs in examples:
                try:
                    difference = float((reloaded(*inputs) - model(*inputs)).abs().max())
                except RuntimeError as error:
                    difference, why = float("nan"), _first_line(error)
                if not difference <= TORCHSCRIPT_TOLERANCE:
                    found = (
                        f"differs from the model by {difference:.2g}" if difference == difference else f"fails ({why})"
                    )
                    raise UserError(
                        f"the TorchScript trace of {model.config.model.name} {found} on an input of shape "
                        f"{tuple(inputs[0].shape)}; export without --torchscript"
                    )
    return buffer.getvalue(), [list(inputs[0].shape) for inputs in examples]
