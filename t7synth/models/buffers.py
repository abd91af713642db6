"""Module buffers added after checkpoints were first written, and their defaults.

A checkpoint, model package or converted official checkpoint written before a buffer
existed lacks it; loading fills it with the value here (what the buffer meant before
it existed: "unknown" or "not fitted"), so adding a buffer never makes older models
unreadable. One table for every such buffer, used by the module's ``load_state_dict``
pre-hook and by the checkpoint and package readers (which import it without Lightning).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from t7synth.data.profile import empty_profile, uniform_histogram

#: name -> a factory of its "unknown" value:
#: ``train_age``, the training subjects' median age in years (0: unknown);
#: ``input_profile`` and ``intensity_histogram``, what the training inputs looked like
#: (:mod:`t7synth.data.profile`; "not fitted": nothing is applied or flagged from them).
LATER_BUFFERS: dict[str, Callable[[], torch.Tensor]] = {
    "train_age": lambda: torch.zeros(()),
    "input_profile": empty_profile,
    "intensity_histogram": uniform_histogram,
}


def complete_state_dict(state_dict: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """``state_dict`` with every :data:`LATER_BUFFERS` entry it lacks set to its default."""
    missing = {prefix + name: make() for name, make in LATER_BUFFERS.items() if prefix + name not in state_dict}
    return {**state_dict, **missing} if missing else state_dict
