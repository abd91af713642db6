"""``fit --init FILE``: the starting weights of a fine-tuning run, read as safely as ``predict`` reads.

Three kinds of file give a generator's weights:

* a t7synth checkpoint (``runs/.../checkpoints/*.ckpt``; a converted official one too),
  read by :func:`t7synth.training.checkpoint.load_model` (``weights_only``, its own
  network built on the meta device and compared before anything is allocated);
* a model package (``export``), read by :func:`t7synth.inference.package.load_package`
  (flat members, bounded sizes, SHA-256, ``weights_only``);
* an official checkpoint of the authors (what ``convert`` reads), read by
  :func:`t7synth.inference.official.read_official` (every pickled global allow-listed
  before ``torch.load(weights_only=True)``).

Only the generator is taken (:meth:`~t7synth.models.base.SynthesisModule.generator`):
the intensity LUT and voxel size are the new training data's, a GAN's critic starts
fresh, and the optimiser, its schedule and the epoch counter start at zero (the file's
are never read). The new run's network is built from its own config on the meta device
and compared with the weights tensor by tensor before ``fit`` allocates or writes
anything; the first difference is the error.
"""

from __future__ import annotations

from pathlib import Path

import torch

from t7synth import registry
from t7synth.errors import UserError
from t7synth.inference.official import read_official
from t7synth.inference.package import is_package, load_package
from t7synth.training.checkpoint import load_model


def source_weights(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The generator's weights in ``path`` and the kind of file it was.

    Raises:
        UserError: a missing file, or one that is none of the three kinds (the
            checkpoint reader's reason, or the official reader's when the file is an
            official checkpoint), or one refused as unsafe.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"--init: file not found: {path}")
    if is_package(path):
        return load_package(path).generator().state_dict(), "model package"
    try:
        return load_model(path).generator().state_dict(), "t7synth checkpoint"
    except UserError as checkpoint_error:
        try:
            official = read_official(path)
        except UserError:
            raise UserError(f"--init: {checkpoint_error}") from None
        return official.weights, "official checkpoint"


def check_weights(path: Path, weights: dict[str, torch.Tensor], config) -> None:
    """Compare ``weights`` with the generator ``config`` builds (on the meta device).

    Raises:
        UserError: naming the first tensor that is missing, unexpected or of another shape.
    """
    module_class = registry.get(config.model.name)
    with torch.device("meta"):
        expected = module_class(config.to_dict()).generator().state_dict()
    for key, tensor in expected.items():
        if key not in weights:
            raise UserError(f"--init {path}: the weights lack {key} of model {config.model.name!r}")
        if tuple(weights[key].shape) != tuple(tensor.shape):
            raise UserError(
                f"--init {path}: {key} has shape {tuple(weights[key].shape)}, model {config.model.name!r} "
                f"of this config has {tuple(tensor.shape)}"
            )
    for key in weights:
        if key not in expected:
            raise UserError(f"--init {path}: {key} is not in model {config.model.name!r} of this config")


def initial_weights(path: str | Path, config) -> dict[str, torch.Tensor]:
    """Read and check the starting weights of ``fit --init``; record their origin in
    ``config.model.init`` (the file's absolute path), which ``config.yaml`` keeps.

    Raises:
        UserError: see :func:`source_weights` and :func:`check_weights`.
    """
    path = Path(path).expanduser()
    weights, _ = source_weights(path)
    check_weights(path, weights, config)
    config.model.init = str(path.resolve())
    return {key: value.detach().clone() for key, value in weights.items()}
