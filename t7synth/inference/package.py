"""A trained model as one shareable file, ``model.zip``: its format and its reader
(``predict --model`` / ``evaluate --model``); :mod:`t7synth.inference.export` writes
it and :mod:`t7synth.inference.torchscript` traces its optional network file.

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
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from t7synth import registry
from t7synth.config import Config, validate
from t7synth.errors import UserError
from t7synth.models.buffers import LATER_BUFFERS
from t7synth.run_files import CONFIG_FILE, TEST_SCORES_FILE
from t7synth.textfiles import decode_text, loads_json, loads_yaml
from t7synth.training.checkpoint import _weights_only_is_honoured

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
        raise UserError(f"model package {path}: cannot read {name}: {first_line(error)}") from None
    # zipfile stops at the declared size; a shorter member is a truncated file.
    if len(data) != members[name].file_size:
        raise UserError(f"model package {path}: {name} is truncated")
    return data


def first_line(error: BaseException) -> str:
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

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"model package not found: {path}")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a model package (not a zip file; export one with python -m t7synth.export)")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise UserError(f"cannot read model package {path}: {first_line(error)}") from None
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

    if not _weights_only_is_honoured():
        raise UserError(
            f"refusing to read model package {path}: this torch {torch.__version__} does not restrict unpickling"
        )
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # refused pickle opcodes or globals, a damaged file
        raise UserError(f"model package {path}: {WEIGHTS} was refused: {first_line(error)}") from None
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
