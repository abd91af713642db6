"""Weight files of frozen feature networks (perceptual losses and distances).

Nothing is ever downloaded: the user names a local file, which is read with
``weights_only=True`` so that it cannot run code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from t7synth.errors import UserError


def load_feature_weights(net: nn.Module, weights: str | Path, what: str, kind: str, skip: tuple[str, ...] = ("fc.",)) -> None:
    """Load a frozen feature network's weights from a file, or fail with one clear line.

    The file is read with ``weights_only=True`` (no pickled code); a ``state_dict`` key
    and DataParallel's ``module.`` prefixes are accepted; keys starting with ``skip``
    (classifier heads) are ignored on both sides.

    Args:
        net: the network to fill.
        weights: the file's path.
        what: how the user named the file (a config key or a flag), for messages.
        kind: what the file should hold, for messages.
    """
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(f"{what}: file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{what}: cannot read {path}: {reason}") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise UserError(f"{what}: {path} holds no state dict")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith(skip)}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(skip)]
    if missing or unexpected:
        raise UserError(f"{what}: {path} is not {kind} (missing {missing[:3]}, unexpected {unexpected[:3]})")
