"""Read a trained model back from its checkpoint alone, without running pickled code
and without trusting its size.

A Lightning checkpoint is a pickle, and ``torch.load`` of an untrusted pickle can run
arbitrary code. t7synth checkpoints hold only tensors and plain containers (the
resolved config is saved as nested dicts, see :meth:`t7synth.config.Config.to_dict`),
so they load with ``weights_only=True``, PyTorch's restricted unpickler, passed
explicitly: torch honours an explicit ``True`` even when ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``
asks for full unpickling (that variable only changes calls that leave the argument
unset), and :func:`read_checkpoint` checks that this torch does.

A checkpoint's config also decides how big a network is, and a hostile or damaged one
can claim ``channels: 2048``: the network is therefore first built on the meta device
(no memory), its parameter shapes compared with the stored tensors, and only then
allocated (:func:`check_fits`, :func:`load_model`). ``LightningModule.load_from_checkpoint``
is not used, since it would unpickle with the full unpickler and allocate first.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from t7synth import registry
from t7synth.config import Config, validate
from t7synth.errors import UserError
from t7synth.models.buffers import LATER_BUFFERS

#: How many mismatching tensors a "does not fit" message names before "and N more".
SHOWN_MISMATCHES = 3


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _weights_only_is_honoured() -> bool:
    """Whether this torch refuses a pickled callable under ``weights_only=True`` right now.

    A tiny torch file whose pickle would call ``len(())`` is loaded the way
    :func:`read_checkpoint` loads files, in the current environment: a torch that
    honours the argument refuses it (a full unpickler returns 0).
    """

    buffer = io.BytesIO()
    torch.save(_Probe(), buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return True
    return False


class _Probe:
    def __reduce__(self):
        return (len, ((),))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file on the CPU with ``weights_only=True``, whatever the environment.

    Raises:
        UserError: a missing, empty or unreadable file, a file that is not a t7synth
            checkpoint (no ``state_dict`` or no ``hyper_parameters.config``), one that
            holds objects the restricted unpickler refuses, or a torch that would not
            restrict the unpickler (then nothing is loaded).
    """

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"cannot read checkpoint {path}: the file is empty")
    if not _weights_only_is_honoured():
        forced = (
            " (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set)" if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") else ""
        )
        raise UserError(
            f"refusing to read checkpoint {path}: this torch {torch.__version__} does not restrict "
            f"unpickling with weights_only=True{forced}; t7synth needs torch >= 2.6"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, not a torch file, refused pickle opcodes
        raise UserError(f"cannot read checkpoint {path}: {_first_line(error)}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise UserError(f"{path} is not a t7synth checkpoint (no state_dict)")
    hyper = checkpoint.get("hyper_parameters")
    if not isinstance(hyper, dict) or not isinstance(hyper.get("config"), dict):
        raise UserError(f"{path} is not a t7synth checkpoint (no hyper_parameters.config)")
    bad = [key for key, value in checkpoint["state_dict"].items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise UserError(f"{path} is not a t7synth checkpoint (state_dict entry {bad[0]!r} is not a tensor)")
    return checkpoint


def checkpoint_config(path: str | Path, checkpoint: dict[str, Any] | None = None):
    """The resolved :class:`~t7synth.config.Config` stored in a checkpoint (checked
    as a config file would be, see :func:`t7synth.config.validate`)."""

    checkpoint = checkpoint if checkpoint is not None else read_checkpoint(path)
    try:
        config = Config.from_dict(checkpoint["hyper_parameters"]["config"])
        validate(config)
    except UserError as error:
        # A checkpoint from another t7synth version can carry keys this one lacks.
        raise UserError(f"checkpoint {path}: {error}") from None
    return config


def check_fits(path: str | Path, config, state_dict: dict[str, Any]):
    """Build ``config``'s model on the meta device and compare it with ``state_dict``.

    Nothing is allocated, so a config that claims a huge network costs nothing.

    Returns:
        The model, on the meta device (``to_empty`` allocates it).

    Raises:
        UserError: naming the checkpoint, the model and the first tensors that are
            missing, unexpected or of another shape.
    """
    model = registry.build_on_meta(config, f"checkpoint {path}")
    expected = model.state_dict()
    state_dict = type(model).complete_state_dict(state_dict)
    problems = []
    for key, tensor in expected.items():
        if key not in state_dict:
            if key not in LATER_BUFFERS:
                problems.append(f"{key} is missing")
        elif tuple(state_dict[key].shape) != tuple(tensor.shape):
            problems.append(f"{key} has shape {tuple(state_dict[key].shape)}, the model's is {tuple(tensor.shape)}")
    problems += [f"{key} is not in the model" for key in state_dict if key not in expected]
    if problems:
        more = f" (and {len(problems) - SHOWN_MISMATCHES} more)" if len(problems) > SHOWN_MISMATCHES else ""
        raise UserError(
            f"checkpoint {path} does not fit model {config.model.name!r} built from its config: "
            + "; ".join(problems[:SHOWN_MISMATCHES])
            + more
        )
    return model


def load_model(path: str | Path, device: str = "cpu"):
    """Rebuild the :class:`~t7synth.models.base.SynthesisModule` saved in ``path``.

    The module is built from the checkpoint's config via :mod:`t7synth.registry` on
    the meta device, checked against the stored tensors (:func:`check_fits`), then
    allocated and its weights and buffers (the intensity LUT and the training voxel
    size included) loaded strictly; it is returned in eval mode on ``device``.

    Raises:
        UserError: see :func:`read_checkpoint` and :func:`check_fits`; also an unknown
            model name.
    """
    checkpoint = read_checkpoint(path)
    config = checkpoint_config(path, checkpoint)
    model = check_fits(path, config, checkpoint["state_dict"]).to_empty(device="cpu")
    try:
        model.load_state_dict(type(model).complete_state_dict(checkpoint["state_dict"]), strict=True)
    except RuntimeError as error:
        raise UserError(f"checkpoint {path} does not fit model {config.model.name!r}: {_first_line(error)}") from None
    return model.eval().to(device)
