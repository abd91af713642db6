"""``export --torchscript``: a model's network traced to TorchScript, for users outside
t7synth, and checked against the model at two input sizes before it is written.

t7synth itself never loads a TorchScript file (a package is read without running code,
see :mod:`t7synth.inference.package`).
"""

from __future__ import annotations

import io
import warnings

import torch

from t7synth.errors import UserError
from t7synth.inference.package import first_line

#: What ``export`` checks a TorchScript trace against the PyTorch model to.
TORCHSCRIPT_TOLERANCE = 1e-5


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
                    difference, why = float("nan"), first_line(error)
                if not difference <= TORCHSCRIPT_TOLERANCE:
                    found = (
                        f"differs from the model by {difference:.2g}" if difference == difference else f"fails ({why})"
                    )
                    raise UserError(
                        f"the TorchScript trace of {model.config.model.name} {found} on an input of shape "
                        f"{tuple(inputs[0].shape)}; export without --torchscript"
                    )
    return buffer.getvalue(), [list(inputs[0].shape) for inputs in examples]
