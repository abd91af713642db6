"""The one place that decides whether a trained model's file is a Lightning checkpoint
or a model package, and reads it accordingly.

``predict``, ``evaluate``, ``export`` and ``fit --init`` all take a trained model's file;
each used to ask :func:`~t7synth.inference.package.is_package` itself and pick a
reader. They now ask :func:`kind_of` (what the file is) and :func:`load_trained` (the
module, whichever it is), so a new kind of file, or a change to how one is told apart
(a package is a zip with a t7synth manifest; a checkpoint is a ``torch.save`` zip
without one), is made here once. :func:`refuse_package` is the shared refusal of a
package given where a checkpoint is asked for (``--ckpt``), naming the flag to use.
"""

from __future__ import annotations

from pathlib import Path

from t7synth.errors import UserError
from t7synth.inference.package import is_package, load_package
from t7synth.training.checkpoint import load_model

PACKAGE = "model package"
CHECKPOINT = "t7synth checkpoint"


def kind_of(path: str | Path) -> str:
    """:data:`PACKAGE` for a file with a package manifest, else :data:`CHECKPOINT`
    (whether it really is one is the checkpoint reader's to decide)."""
    return PACKAGE if is_package(path) else CHECKPOINT


def load_trained(path: str | Path, device: str = "cpu"):
    """The :class:`~t7synth.models.base.SynthesisModule` in ``path`` (either kind) and
    the kind it was, ``(module, kind)``; in eval mode on ``device``.

    Raises:
        UserError: the reader's refusal (see
            :func:`~t7synth.inference.package.load_package` and
            :func:`~t7synth.training.checkpoint.load_model`).
    """
    kind = kind_of(path)
    if kind == PACKAGE:
        return load_package(path, device=device), kind
    return load_model(path, device=device), kind


def refuse_package(path: str | Path, message: str) -> None:
    """Raise ``UserError(message)`` when ``path`` is a model package (where a checkpoint
    is asked for)."""
    if kind_of(path) == PACKAGE:
        raise UserError(message)
