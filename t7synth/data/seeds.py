"""Random streams of the training data, one per (seed, rank, epoch).

:func:`stream_seed` derives each stream from the run seed, so each rank and each epoch
draws its own augmentations, and an epoch's data do not depend on whether the run was
resumed before it: exact kill-and-resume rests on this.
"""

from __future__ import annotations

import random

import numpy as np
import torch

# Random streams drawn from one seed; see stream_seed().
STREAM_TRAIN = 0


def stream_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed for the stream ``keys`` (e.g. rank, epoch) of the run seed ``seed``.

    NumPy's ``SeedSequence`` hashes the whole tuple, so nearby inputs (rank 0 epoch 1
    and rank 1 epoch 0, or seed 1 and seed 2) give unrelated streams, which
    ``seed + rank + epoch`` would not.
    """

    words = [int(value) % 2**64 for value in (seed, *keys)]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def seed_all(value: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and CUDA)."""

    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def training_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of rank ``rank``'s training stream in ``epoch``: augmentation, patch
    positions and order, the Queue's worker seeds and any randomness in the model."""
    return stream_seed(seed, STREAM_TRAIN, rank, epoch)
