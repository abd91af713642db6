"""A sweep file (``sweeps/*.yaml``): one Optuna study over an experiment config.

::

    study: demo_unet_lr                        # default: the file name
    config: experiments/demo_unet.yaml         # the experiment every trial starts from
    metric: val/psnr_brain                     # a validation key of metrics.csv
    direction: maximize
    n_trials: 12                               # finished trials the study should reach
    set:                                       # fixed overrides for every trial
      trainer.max_epochs: 6
      trainer.val_every: 1
    sampler: {name: tpe, n_startup_trials: 4}  # tpe | random | qmc
    pruner: {name: median, n_warmup_steps: 2}  # median | hyperband | none
    params:                                    # dotted config key -> distribution
      optim.lr: {type: float, low: 3.0e-4, high: 3.0e-3, log: true}
      optim.step_gamma: {type: float, low: 0.3, high: 0.9}
      model.net.channels: {type: categorical, choices: [16, 32]}

Each parameter is a dotted key of the experiment config (the same keys as
``fit --set``), so a trial is exactly ``fit --config <config> --set <key>=<value>…``
and its run folder's ``config.yaml`` says what it ran. :meth:`SweepConfig.check`
resolves the experiment at every parameter's bounds before the first trial, so a
misspelt key or an impossible value stops the sweep at once, not trial after trial.

The objective is the best value of ``metric`` over the trial's validations (the
epoch ``best.ckpt`` keeps), never a test score: the test split stays held out for the
comparison after the sweep.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from t7synth.config import load_yaml, parse_assignment
from t7synth.errors import UserError
from t7synth.registry import resolve
from t7synth.training.summary import model_summary as summary
from t7synth.tuning.effect import check_params_have_effect

SAMPLERS = ("tpe", "random", "qmc")
PRUNERS = ("median", "hyperband", "none")
PARAM_TYPES = ("float", "int", "categorical")


@dataclass
class SweepConfig:
    """A parsed and checked sweep file; see the module docstring for the keys.

    Attributes:
        path: the sweep file.
        study: the Optuna study name; also the folder ``<runs_dir>/<study>``.
        config: the experiment YAML every trial starts from.
        model: registry name, when ``config`` does not name one.
        metric: the validation key trials are ranked by.
        direction: ``maximize`` or ``minimize``.
        n_trials: finished (complete or pruned) trials the study should reach.
        set: fixed ``key: value`` overrides applied to every trial.
        sampler: ``name`` plus keyword arguments of the Optuna sampler.
        pruner: ``name`` plus keyword arguments of the Optuna pruner.
        params: dotted key -> distribution (``type`` plus Optuna's arguments).
    """

    path: Path
    study: str
    config: Path | None
    model: str | None = None
    metric: str = "val/psnr_brain"
    direction: str = "maximize"
    n_trials: int = 10
    set: dict[str, Any] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe"})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})
    params: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] = ()) -> SweepConfig:
        """Read and check a sweep file.

        ``overrides`` are ``key=value`` strings (``sweep --set``) added to ``set``
        before the checks. Relative ``config`` paths are looked up from the working
        directory first and then next to the sweep file, so ``sweeps/*.yaml`` work from
        the repository root and from anywhere else.

        Raises:
            UserError: a missing file, an unknown key, or a bad value (named).
        """

        path = Path(path)
        data = load_yaml(path)
        names = [f.name for f in dataclasses.fields(cls) if f.name != "path"]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise UserError(f"{path}: unknown sweep key {unknown[0]!r}; valid keys: {', '.join(names)}")
        data.setdefault("study", path.stem)
        if data.get("config") is not None:
            data["config"] = _find(str(data["config"]), path)
        else:
            data["config"] = None
        data["set"] = data.get("set") or {}
        if not isinstance(data["set"], dict):
            raise UserError(f"{path}: set must be a mapping of dotted keys to values")
        sweep = cls(path=path, **data)
        for text in overrides:
            key, value = parse_assignment(text)
            sweep.set[key] = value
        sweep.check()
        return sweep

    def check(self) -> None:
        """Check every key, then resolve the experiment at each parameter's bounds."""
        where = str(self.path)
        if not isinstance(self.study, str) or not self.study or "/" in self.study:
            raise UserError(f"{where}: study must be a name without '/', got {self.study!r}")
        if self.direction not in ("maximize", "minimize"):
            raise UserError(f"{where}: direction must be maximize or minimize, got {self.direction!r}")
        if not isinstance(self.n_trials, int) or self.n_trials < 1:
            raise UserError(f"{where}: n_trials must be a positive integer, got {self.n_trials!r}")
        if not isinstance(self.metric, str) or not self.metric.startswith("val/"):
            raise UserError(f"{where}: metric must be a validation key (val/...), got {self.metric!r}")
        for key, options, valid in (("sampler", self.sampler, SAMPLERS), ("pruner", self.pruner, PRUNERS)):
            if not isinstance(options, dict) or options.get("name") not in valid:
                raise UserError(f"{where}: {key}.name must be one of {', '.join(valid)}, got {options!r}")
        if not isinstance(self.params, dict) or not self.params:
            raise UserError(f"{where}: params must map at least one dotted config key to a distribution")
        for key, spec in self.params.items():
            _check_param(where, key, spec)
        # Every trial is one of these configs with other values: resolving the
        # extremes, and building their model on the meta device (no memory, no
        # time), catches unknown keys and impossible values before any trial runs.

        corners = []
        for values in self._corners():
            config = self.resolve(values)
            try:
                summary(config)
            except UserError as error:
                raise UserError(f"{self.path}: {error}") from None
            corners.append(config)
        check_params_have_effect(where, list(self.params), corners)

    def resolve(self, values: dict[str, Any], extra: dict[str, Any] | None = None):
        """The experiment config of one trial: the base, ``set``, then ``values``."""

        overrides = [f"{key}={format_value(value)}" for key, value in {**self.set, **values}.items()]
        try:
            return resolve(self.model, self.config, overrides, extra)
        except UserError as error:
            raise UserError(f"{self.path}: {error}") from None

    def distributions(self) -> dict[str, Any]:
        """Optuna distributions of ``params``, keyed by the dotted config key."""

        made = {}
        for key, spec in self.params.items():
            options = {k: v for k, v in spec.items() if k != "type"}
            if spec["type"] == "float":
                made[key] = optuna.distributions.FloatDistribution(**options)
            elif spec["type"] == "int":
                made[key] = optuna.distributions.IntDistribution(**options)
            else:
                made[key] = optuna.distributions.CategoricalDistribution(options["choices"])
        return made

    def make_sampler(self, seed: int | None):
        """The Optuna sampler named in ``sampler`` (seeded for reproducible studies)."""

        options = {k: v for k, v in self.sampler.items() if k != "name"}
        classes = {
            "tpe": optuna.samplers.TPESampler,
            "random": optuna.samplers.RandomSampler,
            "qmc": optuna.samplers.QMCSampler,
        }
        try:
            return classes[self.sampler["name"]](seed=seed, **options)
        except TypeError as error:
            raise UserError(f"{self.path}: sampler: {error}") from None

    def make_pruner(self):
        """The Optuna pruner named in ``pruner``; ``none`` never prunes."""

        options = {k: v for k, v in self.pruner.items() if k != "name"}
        classes = {
            "median": optuna.pruners.MedianPruner,
            "hyperband": optuna.pruners.HyperbandPruner,
            "none": optuna.pruners.NopPruner,
        }
        try:
            return classes[self.pruner["name"]](**options)
        except (TypeError, ValueError) as error:
            raise UserError(f"{self.path}: pruner: {error}") from None

    def _corners(self) -> list[dict[str, Any]]:
        low, high = {}, {}
        for key, spec in self.params.items():
            if spec["type"] == "categorical":
                low[key], high[key] = spec["choices"][0], spec["choices"][-1]
            else:
                low[key], high[key] = spec["low"], spec["high"]
        return [low, high]


def format_value(value: Any) -> str:
    """A value as ``--set`` reads it back (YAML), e.g. ``1e-05`` -> ``1.0e-05``."""

    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("...").strip()


def _find(text: str, sweep_file: Path) -> Path:
    candidate = Path(text).expanduser()
    if candidate.is_absolute() or candidate.is_file():
        return candidate
    beside = sweep_file.parent / candidate
    if beside.is_file():
        return beside
    raise UserError(f"{sweep_file}: config file not found: {text} (looked in . and {sweep_file.parent})")


def _check_param(where: str, key: str, spec: Any) -> None:
    if not isinstance(spec, dict) or spec.get("type") not in PARAM_TYPES:
        raise UserError(f"{where}: params.{key} needs type: {' | '.join(PARAM_TYPES)}, got {spec!r}")
    kind = spec["type"]
    allowed = {
        "float": {"low", "high", "log", "step"},
        "int": {"low", "high", "log", "step"},
        "categorical": {"choices"},
    }[kind]
    unknown = sorted(set(spec) - allowed - {"type"})
    if unknown:
        raise UserError(
            f"{where}: params.{key}: unknown key {unknown[0]!r} for a {kind} (valid: {', '.join(sorted(allowed))})"
        )
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}: params.{key}.choices must be a non-empty list")
        if any(isinstance(c, (list, dict)) for c in choices):
            raise UserError(
                f"{where}: params.{key}.choices must be numbers, strings or booleans (Optuna stores no lists)"
            )
        return
    number = float if kind == "float" else int
    for bound in ("low", "high"):
        value = spec.get(bound)
        if isinstance(value, str) and kind == "float":
            try:  # YAML 1.1 reads 3e-4 (no dot) as a string
                spec[bound] = value = float(value)
            except ValueError:
                pass
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (number is int and not isinstance(value, int))
        ):
            raise UserError(
                f"{where}: params.{key}.{bound} must be a{'n' if kind == 'int' else ''} {kind}, got {value!r}"
            )
    if not spec["low"] < spec["high"]:
        raise UserError(f"{where}: params.{key}: low must be below high, got {spec['low']} and {spec['high']}")
    if spec.get("log") and spec.get("step") is not None:
        raise UserError(f"{where}: params.{key}: log and step cannot be combined")
    step = spec.get("step")
    if step is not None:
        if isinstance(step, str) and kind == "float":
            try:  # YAML 1.1 reads 1e-4 (no dot) as a string
                spec["step"] = step = float(step)
            except ValueError:
                pass
        if (
            isinstance(step, bool)
            or not isinstance(step, (int, float))
            or (number is int and not isinstance(step, int))
        ):
            raise UserError(f"{where}: params.{key}.step must be a{'n' if kind == 'int' else ''} {kind}, got {step!r}")
        if not (math.isfinite(step) and step > 0):
            raise UserError(f"{where}: params.{key}.step must be positive, got {step}")
        if step > spec["high"] - spec["low"]:
            raise UserError(
                f"{where}: params.{key}.step {step} is wider than the range {spec['low']} to {spec['high']}"
            )
    if spec.get("log") and spec["low"] <= 0:
        raise UserError(f"{where}: params.{key}: a log scale needs low > 0, got {spec['low']}")
