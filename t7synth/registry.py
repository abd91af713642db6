"""Model names, the LightningModules they stand for, and the config a name resolves to.

As in nnU-Net's ``-tr NAME``, a model is picked by name; the class is imported only
when asked for, so listing names costs nothing. :func:`resolve` lives here rather than
in :mod:`t7synth.config` because it needs the model's ``DEFAULTS``: models import the
config schema, so the config schema must not import models.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from t7synth.config import Config, deep_merge, load_yaml, parse_override, validate
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


def build_on_meta(config: Config, where: str | None = None):
    """The config's LightningModule on the meta device: shapes only, no memory, no
    initialisation cost. The one place a model is built there (the memory plan,
    ``fit --summary``, and the checks of a checkpoint or package against its config).

    Args:
        config: the resolved config.
        where: what the config came from (``checkpoint PATH``); a config that does not
            build is then one :class:`UserError` line naming it. ``None`` lets errors through.

    Raises:
        UserError: unknown model name; with ``where``, a config that does not build.
    """
    import torch

    module_class = get(config.model.name)
    if where is None:
        with torch.device("meta"):
            return module_class(config.to_dict())
    try:
        with torch.device("meta"):
            return module_class(config.to_dict())
    except UserError as error:
        raise UserError(f"{where}: {error}") from None
    except (TypeError, ValueError, RuntimeError, AssertionError) as error:
        text = str(error).strip()
        first = text.splitlines()[0] if text else type(error).__name__
        raise UserError(f"{where}: its config does not build model {config.model.name!r}: {first}") from None


def resolve(
    model: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    extra: dict[str, Any] | None = None,
) -> Config:
    """Resolve the four layers into a :class:`Config` (see :mod:`t7synth.config`).

    Args:
        model: registry name from ``--model``; else the file's ``model.name``; else ``unet``.
        config_file: an experiment YAML file, or ``None``.
        overrides: ``key=value`` strings from ``--set``.
        extra: overrides from dedicated flags (``--data``, ``--max-epochs``), applied last.

    Raises:
        UserError: unknown model or key, a bad value, or a missing/malformed file.
    """
    file_data = load_yaml(config_file) if config_file else {}
    override_data: dict[str, Any] = {}
    for text in overrides:
        override_data = deep_merge(override_data, parse_override(text))
    override_data = deep_merge(override_data, extra or {})
    file_model = (file_data.get("model") or {}).get("name") if isinstance(file_data.get("model"), dict) else None
    set_model = (override_data.get("model") or {}).get("name") if isinstance(override_data.get("model"), dict) else None
    name = set_model or model or file_model or "unet"
    if model and file_model and model != file_model:
        raise UserError(f"--model {model} contradicts model.name: {file_model} in {config_file}")
    module_class = get(name)
    layered = deep_merge(Config().to_dict(), module_class.DEFAULTS)
    layered = deep_merge(layered, file_data)
    layered = deep_merge(layered, override_data)
    layered["model"]["name"] = name
    if not layered.get("name"):
        layered["name"] = Path(config_file).stem if config_file else name
    config = Config.from_dict(layered)
    validate(config)
    return config
