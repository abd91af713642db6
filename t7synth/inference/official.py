"""The authors' released checkpoints in t7synth: reading them safely and converting them
(framing a scan as their inference script does: :mod:`t7synth.inference.framing`).

The official repository (DeMONLab-BioFINDER/SuperResolutionMalo) releases the paper's
two generators, ``models/my_unet_no_diag.pt`` (U-Net) and ``models/my_unetGanNoDiag.pt``
(the GAN U-Net's generator). ``func/training/LoadingModel.py`` saves them with
``torch.save({"epoch", "model_state_dict", "opti_state_dict", "saved_losses", "idx_test"})``:
the weights carry ``nn.DataParallel``'s ``module.`` prefix, ``saved_losses`` is a pandas
DataFrame (the loss curves) and ``idx_test`` a numpy array (the test subjects' indices);
the released files may lack the optimiser state. The weight names are those of
:class:`~t7synth.nets.unet.ConditionedUNet`.

**Reading without running code** (:func:`read_official`). A pickle can call any
function, and these files are downloads. They are read in two independent steps:

1. Every global the pickle names is listed from its opcodes (``pickletools``, nothing is
   executed) and must be in :data:`TENSOR_GLOBALS` (what ``torch.save`` writes for
   tensors and state dicts) or :data:`DISCARDED_GLOBALS` (what a pandas DataFrame or
   a numpy array of pandas 2/3 and numpy 1/2 pickles to); anything else is refused
   with one line naming the file and the global. This check does not depend on how
   torch treats ``weights_only`` (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` and the like).
2. ``torch.load(weights_only=True)`` (PyTorch's restricted unpickler) reads the file
   with the DataFrame and array globals allow-listed (``torch.serialization.safe_globals``)
   as :class:`Discarded`, an inert stand-in: no pandas or numpy code runs on the file's
   bytes, and both objects are dropped (t7synth needs neither).

**Converting** (:func:`convert`). The weights become a t7synth checkpoint of model
``unet`` (the GAN file holds the generator alone, so its conversion is a ``unet`` with
the generator's architecture), the format :func:`~t7synth.training.checkpoint.read_checkpoint`
reads, so ``predict`` and ``evaluate`` use it as any other. Its config carries the
authors' conventions, so ``predict`` reproduces ``func/inference/inferer3T.py``:
``data.normalisation: authors`` (``pickling.py``'s unclipped percentile scaling),
``geometry.axis`` = their ``slice_dim`` counted in the file's own array axes,
``data.shape`` = their ``(d1, d2, d3)`` frame, the position token's divisor, fp32, and
``data.inference: authors`` for their framing (:mod:`t7synth.inference.framing`).
"""

from __future__ import annotations

import hashlib
import pickletools
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from t7synth.config import validate
from t7synth.data.intensity_lut import DEFAULT_BINS
from t7synth.errors import UserError
from t7synth.files import atomic_path
from t7synth.inference.framing import OFFICIAL_FRAME, OFFICIAL_SLICE_DIM, OFFICIAL_SLICES
from t7synth.registry import resolve
from t7synth.training.checkpoint import check_fits

#: Globals a ``torch.save`` of tensors, state dicts and optimiser states refers to: the
#: tensor rebuild function, the typed storages, ``OrderedDict`` and ``_codecs.encode``
#: (protocol 2 writes bytes through it). All are in PyTorch's own ``weights_only``
#: allow-list; nothing else of torch is accepted.
TENSOR_GLOBALS = frozenset(
    {
        "collections.OrderedDict",
        "_codecs.encode",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter",
    }
    | {
        f"torch.{kind}Storage"
        for kind in ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool")
    }
)
#: Globals of a pickled pandas DataFrame of numbers and of a numpy array, as pandas 2.x
#: with numpy 1.x (the authors' environment) and pandas 3.x with numpy 2.x write them
#: (protocol 2; listed from ``pickletools`` on both). Each unpickles to :class:`Discarded`.
DISCARDED_GLOBALS = (
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.ndarray",
    "numpy.dtype",
    "pandas.core.frame.DataFrame",
    "pandas.core.internals.managers.BlockManager",
    "pandas._libs.internals._unpickle_block",
    "pandas.core.indexes.base._new_Index",
    "pandas.core.indexes.base.Index",
    "pandas.core.indexes.range.RangeIndex",
    "pandas.DataFrame",
    "pandas.Index",
    "pandas.RangeIndex",
    "pandas.StringDtype",
    "pandas.arrays.StringArray",
    "pandas._libs.arrays.__pyx_unpickle_NDArrayBacked",
    "builtins.slice",
)
#: A state dict's pickle is a few hundred kB (the weights are separate zip members);
#: a larger one is not an official checkpoint (and not worth decompressing).
MAX_PICKLE_BYTES = 64 * 2**20
#: Protocol 2 spells the builtins module as Python 2 did.
_MODULE_ALIASES = {"__builtin__": "builtins"}


class Discarded:
    """What a DataFrame or numpy array inside an official checkpoint unpickles to.

    It accepts whatever the restricted unpickler hands it (construction arguments,
    ``__setstate__`` states) and keeps none of it, so reading the file runs no pandas
    or numpy code on the file's bytes.
    """

    __slots__ = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> Discarded:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return "<discarded>"


@dataclass
class OfficialCheckpoint:
    """The parts of an official checkpoint t7synth uses.

    Attributes:
        weights: the network's state dict, ``module.`` prefixes removed.
        epoch: the ``epoch`` the file records, or ``None``.
        sha256: hex digest of the file (provenance in the converted checkpoint).
    """

    weights: dict[str, Any]
    epoch: int | None
    sha256: str


def _pickle_bytes(path: Path) -> bytes:
    """The ``data.pkl`` member of a torch zip file, size-checked before it is read."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [
                info
                for info in archive.infolist()
                if info.filename.endswith("/data.pkl") and info.filename.count("/") == 1
            ]
            if len(members) != 1:
                raise UserError(f"{path} is not a PyTorch checkpoint (no single <archive>/data.pkl inside)")
            if members[0].file_size > MAX_PICKLE_BYTES:
                raise UserError(f"{path} is not an official checkpoint: its pickle is {members[0].file_size} bytes")
            return archive.read(members[0])
    except zipfile.BadZipFile:
        raise UserError(f"{path} is not a PyTorch zip checkpoint (torch.save of torch >= 1.6); refused") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None


def pickled_globals(data: bytes) -> set[str]:
    """The ``module.name`` of every global a pickle refers to, read without running it.

    Raises:
        ValueError: a malformed pickle, or an opcode that names a global some other way
            (``STACK_GLOBAL``, ``INST``, ``OBJ``, the extension registry): ``torch.save``
            writes protocol 2, which names globals with ``GLOBAL`` alone.
    """
    found: set[str] = set()
    for opcode, argument, _ in pickletools.genops(data):
        if opcode.name == "GLOBAL":
            module, _, name = str(argument).partition(" ")
            found.add(f"{_MODULE_ALIASES.get(module, module)}.{name}")
        elif opcode.name in ("STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4"):
            raise ValueError(f"pickle opcode {opcode.name}, which torch.save never writes")
    return found


def _check_globals(path: Path, data: bytes) -> None:
    try:
        names = pickled_globals(data)
    except ValueError as error:
        raise UserError(f"{path} is not an official checkpoint: {error}; refused") from None
    foreign = sorted(names - TENSOR_GLOBALS - set(DISCARDED_GLOBALS))
    if foreign:
        raise UserError(
            f"{path} would call {foreign[0]}"
            + (f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else "")
            + " when unpickled, which an official checkpoint never does; refused (no code from it was run)"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_official(path: str | Path) -> OfficialCheckpoint:
    """Read an official checkpoint's weights without running code from the file.

    Raises:
        UserError: a missing or unreadable file, a file that is not a torch zip
            checkpoint, a pickle naming any global outside the allow-lists, no
            ``model_state_dict`` of tensors, or a torch older than 2.6 (which cannot
            allow-list the stand-ins).
    """

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"official checkpoint not found: {path}")
    _check_globals(path, _pickle_bytes(path))
    if torch.torch_version.TorchVersion(torch.__version__) < (2, 6):
        raise UserError(
            f"reading {path} needs torch >= 2.6 (safe_globals with named stand-ins); this is torch {torch.__version__}"
        )
    stand_ins = [(Discarded, name) for name in DISCARDED_GLOBALS]
    try:
        with torch.serialization.safe_globals(stand_ins):
            # weights_only passed explicitly: torch honours it even under
            # TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, and step 1 above holds regardless.
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated members, refused opcodes
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"cannot read official checkpoint {path}: {reason}") from None
    weights = content.get("model_state_dict") if isinstance(content, dict) else None
    if not isinstance(weights, dict) or not weights:
        raise UserError(
            f"{path} is not an official checkpoint (no model_state_dict); a t7synth checkpoint needs no conversion"
        )
    stripped: dict[str, Any] = {}
    for key, value in weights.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise UserError(f"{path}: model_state_dict entry {key!r} is not a named tensor")
        # nn.DataParallel saved every name under "module."; a file saved without it has none.
        stripped[key.removeprefix("module.")] = value
    epoch = content.get("epoch")
    return OfficialCheckpoint(
        stripped, int(epoch) if isinstance(epoch, int) and not isinstance(epoch, bool) else None, _sha256(path)
    )


def converted_config(
    config_file: str | Path,
    overrides: Sequence[str] = (),
    slice_dim: int = OFFICIAL_SLICE_DIM,
    frame: Sequence[int] = OFFICIAL_FRAME,
    name: str | None = None,
):
    """The config of a converted checkpoint: the network of ``config_file`` (and
    ``--set`` overrides) with the authors' inference conventions (module docstring).

    Raises:
        UserError: a config of another model than ``unet``/``gan_unet``, a bad
            ``slice_dim`` or ``frame``, or what :func:`t7synth.registry.resolve` refuses.
    """

    config = resolve(None, config_file, list(overrides))
    if config.model.name not in ("unet", "gan_unet"):
        raise UserError(
            "the official checkpoints are U-Nets: --config must describe model unet or gan_unet, not "
            f"{config.model.name!r} ({config_file})"
        )
    if slice_dim not in (0, 1, 2):
        raise UserError(f"--slice-dim must be 0, 1 or 2, got {slice_dim}")
    if len(frame) != 3 or min(frame) < OFFICIAL_SLICES:
        raise UserError(f"--frame must be three sizes of at least {OFFICIAL_SLICES}, got {list(frame)}")
    # The GAN's file holds its generator alone: predicting needs nothing else.
    config.model.name = "unet"
    config.model.discriminator = {}
    config.model.conditioning = True
    config.model.residual = False
    config.model.position_divisor = int(frame[slice_dim])  # inferer3T.py: n_slices = ds[slice_dim]
    config.geometry.mode, config.geometry.slices, config.geometry.axis = "slab", OFFICIAL_SLICES, int(slice_dim)
    config.geometry.target, config.geometry.inplane = "center", None
    config.data.shape = [int(s) for s in frame]
    config.data.normalisation = "authors"
    config.data.percentiles = [1.0, 99.0]  # pickling.py: "clip" : (1, 99)
    config.data.inference = "authors"
    config.trainer.precision = "32-true"  # the authors trained and inferred in fp32
    if name:
        config.name = name
    validate(config)
    return config


def convert(
    official: str | Path,
    config_file: str | Path,
    out: str | Path,
    overrides: Sequence[str] = (),
    slice_dim: int = OFFICIAL_SLICE_DIM,
    frame: Sequence[int] = OFFICIAL_FRAME,
) -> str:
    """Convert an official checkpoint into a t7synth checkpoint; returns the line to print.

    The weights are checked tensor by tensor against the network ``config_file``
    describes (built on the meta device, nothing allocated) before anything is written;
    the output is written atomically.

    Raises:
        UserError: see :func:`read_official` and :func:`converted_config`; weights
            that do not fit the config's network; ``out`` naming the input.
    """

    official, out = Path(official).expanduser(), Path(out).expanduser()
    if out.exists() and official.exists() and out.resolve() == official.resolve():
        raise UserError(f"--out {out} would overwrite the official checkpoint; choose another file")
    source = read_official(official)
    config = converted_config(config_file, overrides, slice_dim, frame, name=official.stem)
    state_dict = {f"net.{key}": value for key, value in source.weights.items()}
    # The module's own buffers, as a model that never saw t7synth's training data has
    # them (models/base.py): the identity intensity LUT, voxel size 0 (no resampling:
    # inferer3T.py takes scans on the template grid as they are).
    state_dict["lut"] = torch.linspace(0, 1, DEFAULT_BINS)
    state_dict["voxel_size"] = torch.zeros(3)
    try:
        check_fits(official, config, state_dict)
    except UserError as error:
        raise UserError(
            f"{error} (the U-Net file needs experiments/paper_unet.yaml, the GAN generator "
            "experiments/paper_gan_unet.yaml)"
        ) from None
    provenance = {"file": official.name, "sha256": source.sha256, "epoch": source.epoch, "config": str(config_file)}
    with atomic_path(out) as tmp:
        torch.save(
            {"state_dict": state_dict, "hyper_parameters": {"config": config.to_dict()}, "official": provenance}, tmp
        )
    parameters = sum(v.numel() for v in source.weights.values())
    frame_text = "x".join(str(s) for s in config.data.shape)
    return (
        f"{out}: {official.name} ({parameters:,} parameters"
        + (f", epoch {source.epoch}" if source.epoch is not None else "")
        + f") as model unet, slices along array axis {config.geometry.axis} of the scan file, frame {frame_text}, "
        "the authors' normalisation and inference (inferer3T.py)"
    )
