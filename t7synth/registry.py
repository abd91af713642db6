"""Model names and the LightningModules they stand for: the one place names live.

As in nnU-Net's ``-tr NAME``, a model is picked by name; the class is imported only
when asked for, so listing names costs nothing.
"""

from __future__ import annotations

import importlib

from t7synth.errors import UserError

MODELS: dict[str, str] = {
    "unet": "t7synth.models.unet:UNetModule",
    "gan_unet": "t7synth.models.gan_unet:GANUNetModule",
    "vnet": "t7synth.models.vnet:VNetModule",
    "watnet": "t7synth.models.watnet:WATNetModule",
}


def names() -> list[str]:
    """The registered model names, sorted."""
    return sorted(MODELS)


def get(name: str) -> type:
    """The LightningModule class registered as ``name``.

    Raises:
        UserError: for an unknown name; the message lists the valid ones.
    """
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; valid models: {', '.join(names())}")
    module_name, class_name = MODELS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)
