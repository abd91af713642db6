"""Read a trained model back from its checkpoint alone, without running pickled code.

A Lightning checkpoint is a pickle, and ``torch.load`` of an untrusted pickle can run
arbitrary code. t7synth checkpoints hold only tensors and plain containers (the
resolved config is saved as nested dicts, see :meth:`t7synth.config.Config.to_dict`),
so they load with ``weights_only=True``, PyTorch's restricted unpickler. The module
is then rebuilt from the saved config through the registry and its weights are loaded
with ``load_state_dict``; ``LightningModule.load_from_checkpoint`` is not used, since
it would unpickle with the full unpickler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from t7synth.errors import UserError


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file on the CPU with ``weights_only=True``.

    Raises:
        UserError: a missing or unreadable file, a file that is not a t7synth
            checkpoint (no ``state_dict`` or no ``hyper_parameters.config``), or one that
            holds objects the restricted unpickler refuses.
    """
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, not a torch file, refused pickle opcodes
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"cannot read checkpoint {path}: {reason}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise UserError(f"{path} is not a t7synth checkpoint (no state_dict)")
    hyper = checkpoint.get("hyper_parameters")
    if not isinstance(hyper, dict) or not isinstance(hyper.get("config"), dict):
        raise UserError(f"{path} is not a t7synth checkpoint (no hyper_parameters.config)")
    return checkpoint


def checkpoint_config(path: str | Path, checkpoint: dict[str, Any] | None = None):
    """The resolved :class:`~t7synth.config.Config` stored in a checkpoint."""
    from t7synth.config import Config

    checkpoint = checkpoint if checkpoint is not None else read_checkpoint(path)
    try:
        return Config.from_dict(checkpoint["hyper_parameters"]["config"])
    except UserError as error:
        # A checkpoint from another t7synth version can carry keys this one lacks.
        raise UserError(f"checkpoint {path}: {error}") from None


def load_model(path: str | Path, device: str = "cpu"):
    """Rebuild the :class:`~t7synth.models.base.SynthesisModule` saved in ``path``.

    The module is built from the checkpoint's config via :mod:`t7synth.registry`, its
    weights and buffers (the intensity LUT and the training voxel size included) are
    loaded strictly, and it is returned in eval mode on ``device``.

    Raises:
        UserError: see :func:`read_checkpoint`; also an unknown model name or weights
            that do not fit the network the config describes.
    """
    from t7synth import registry

    checkpoint = read_checkpoint(path)
    config = checkpoint_config(path, checkpoint)
    module_class = registry.get(config.model.name)
    model = module_class(config.to_dict())
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise UserError(f"checkpoint {path} does not fit model {config.model.name!r}: {first}") from None
    return model.eval().to(device)
