"""Scoring one subject: the one function ``fit``'s validation and test and ``evaluate`` share.

``fit`` (:meth:`t7synth.models.base.SynthesisModule`) and ``evaluate``
(:class:`t7synth.evaluation.evaluator.Evaluator`) must report the same numbers for the
same prediction of the same preprocessed subject; they do so by construction because
both build their per-subject rows here. A row is ``model`` (the row kind: the model or
a reference), ``subject`` and the scores: the intensity scores of
:func:`t7synth.measures.metrics.volume_scores` and, at test time, the structure scores
of a :class:`~t7synth.measures.structure.StructureScorer`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from t7synth.measures import metrics
from t7synth.measures.structure import StructureScorer


def guess_scores(
    guess: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, structure: StructureScorer | None = None
) -> dict[str, Any]:
    """The scores of one guess (a prediction or a reference) against the subject's 7T."""
    return {**metrics.volume_scores(guess, target, mask), **(structure(guess) if structure else {})}


def subject_rows(
    subject: str,
    guesses: Mapping[str, torch.Tensor],
    target: torch.Tensor,
    mask: torch.Tensor,
    structure: StructureScorer | None = None,
    extra: Callable[[str, torch.Tensor], dict[str, Any]] | None = None,
    known: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One row per guess (row kind -> volume) of ``subject``, in the order given.

    Args:
        guesses: ``{"model": prediction, "identity": source, "lut": ...}``.
        structure: the subject's structure scorer (test time), or ``None``.
        extra: more scores of a guess, given its row kind and volume (``evaluate``'s perceptual
            distance, the authors' SSIM, the segmenter's structures).
        known: scores already computed for a row kind (``fit`` scores the references of a
            subject once and reuses them every validation); their guess is not scored again.
    """
    rows = []
    for kind, guess in guesses.items():
        scores = dict(known[kind]) if known and kind in known else guess_scores(guess, target, mask, structure)
        rows.append({"model": kind, "subject": subject, **scores, **(extra(kind, guess) if extra else {})})
    return rows
