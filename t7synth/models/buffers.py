"""Module buffers added after checkpoints were first written, and their defaults.

A checkpoint, model package or converted official checkpoint written before a buffer
existed lacks it; loading fills it with the value here (what the buffer meant before
it existed), so adding a buffer never makes older models unreadable. Kept apart from
:mod:`t7synth.models.base` so the checkpoint and package readers import it without
Lightning.
"""

from __future__ import annotations

#: ``train_age``: the training subjects' median age in years, 0 when unknown.
LATER_BUFFERS: dict[str, float] = {"train_age": 0.0}
