"""Refuse a search parameter that the resolved config ignores, before the first trial.

A sweep that varies a key no trial reads spends its trials on noise and then reports
the "best" value of a setting that did nothing (the shipped demo sweep once searched
``optim.step_gamma`` under the one-cycle schedule, which ignores it). Each rule below
says when a key is read; a searched key that no corner of the search reads (see
:meth:`t7synth.tuning.sweep_file.SweepConfig.check`) is refused in one line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from t7synth.errors import UserError


@dataclass(frozen=True)
class Rule:
    """Keys (exact, or a prefix ending in ``.``) that only matter when ``applies(config)``."""

    keys: tuple[str, ...]
    applies: Callable
    why: Callable  # config -> the reason the key is ignored, for the message

    def covers(self, key: str) -> bool:
        return any(key == k or (k.endswith(".") and key.startswith(k)) for k in self.keys)


#: The GAN's own keys: read by ``gan_unet`` alone (its discriminator and its optimiser).
GAN_KEYS = (
    "optim.d_lr",
    "optim.d_betas",
    "optim.generator_every",
    "loss.adversarial",
    "loss.gradient_penalty",
    "model.discriminator.",
)

RULES: tuple[Rule, ...] = (
    Rule(
        ("optim.step_gamma", "optim.step_every"),
        lambda c: c.optim.schedule == "step",
        lambda c: f"optim.schedule is {c.optim.schedule}, and only the StepLR schedule (step) reads it",
    ),
    Rule(
        GAN_KEYS,
        lambda c: c.model.name == "gan_unet",
        lambda c: f"model {c.model.name} has no discriminator (GAN keys are read by gan_unet only)",
    ),
    Rule(
        ("loss.perceptual_weights",),
        lambda c: c.loss.perceptual > 0,
        lambda c: "loss.perceptual is 0, so no perceptual network is loaded",
    ),
    Rule(
        ("geometry.patch", "geometry.overlap"),
        lambda c: c.geometry.mode == "patch",
        lambda c: f"geometry.mode is {c.geometry.mode}; 3D patch keys apply to mode patch",
    ),
    Rule(
        ("geometry.slices", "geometry.axis", "geometry.inplane", "geometry.target", "data.slab_sampling"),
        lambda c: c.geometry.mode == "slab",
        lambda c: f"geometry.mode is {c.geometry.mode}; slab keys apply to mode slab",
    ),
)


def ignored_reason(key: str, config) -> str | None:
    """Why ``config`` ignores ``key``, or ``None`` when it reads it."""
    for rule in RULES:
        if rule.covers(key) and not rule.applies(config):
            return rule.why(config)
    return None


def check_params_have_effect(where: str, keys: Sequence[str], configs: Sequence) -> None:
    """Refuse a searched key that every one of ``configs`` (the search's corners) ignores.

    Raises:
        UserError: ``<sweep file>: params: <key> has no effect: <why>; ...``.
    """
    for key in keys:
        reasons = [ignored_reason(key, config) for config in configs]
        if reasons and all(reasons):
            raise UserError(
                f"{where}: params: {key} has no effect: {reasons[0]}; remove it from params or set what makes it count"
            )
