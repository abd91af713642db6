"""Experiment configuration: dataclasses, YAML files and ``--set key=value`` overrides.

A configuration is resolved in four layers, each overriding the one before:

1. the dataclass defaults below (model-independent);
2. the chosen model's ``DEFAULTS`` (its geometry, losses, optimiser; see ``t7synth.models``);
3. an experiment YAML file (``--config experiments/demo_unet.yaml``);
4. ``--set data.batch_size=4`` overrides from the command line.

:func:`t7synth.registry.resolve` layers them (it alone knows the models, so this module
imports none of them). The resolved configuration is what runs: it is written to the run directory as
``config.yaml`` and stored in every checkpoint, so ``predict`` needs nothing else.
Unknown keys are an error that lists the valid ones, at any depth.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from t7synth.errors import UserError
from t7synth.files import atomic_path
from t7synth.textfiles import MAX_DEPTH, check_nesting, read_yaml


@dataclass
class GeometryConfig:
    """What one training sample is, and how whole volumes are tiled at inference.

    ``slab`` (2.5D): ``slices`` adjacent slices along array ``axis`` (after the volume
    is brought to RAS+ orientation), full in-plane size unless ``inplane`` crops it for
    training. The target is the centre slice (``target: center``) or the whole slab
    (``target: all``, WATNet). ``patch`` (3D): cubes of ``patch`` voxels, tiled with
    ``overlap`` voxels and a Hann window at inference.
    """

    mode: Literal["slab", "patch"] = "slab"
    slices: int = 3
    axis: Literal[0, 1, 2] = 1
    target: Literal["center", "all"] = "center"
    inplane: list[int] | None = None
    patch: list[int] = field(default_factory=lambda: [64, 64, 64])
    overlap: int = 8


@dataclass
class AugmentConfig:
    """Random augmentation applied each time a subject is loaded for training.

    Spatial transforms move source, target and mask together; intensity transforms
    touch the source only, so the network learns to ignore them. All default to off.
    """

    flip: float = 0.0
    affine_degrees: float = 0.0
    affine_scale: float = 0.0
    gamma: float = 0.0
    noise: float = 0.0


@dataclass
class DataConfig:
    """Where subjects come from, how they are preprocessed and sampled.

    ``root: null`` means the embedded demo dataset (``demo_subjects`` subjects from
    ``demo_seed`` at ``demo_voxel_size`` mm). ``shape`` is the fixed array shape every preprocessed volume is
    cropped or padded to, centred on the brain; ``null`` keeps the input shape.

    ``batch_size`` is the batch of one optimiser step of one process (one GPU) when
    ``batch_scope`` is ``per_gpu``, and of all processes together when it is
    ``global`` (a published batch: the paper configs), which splits it evenly over
    the GPUs; ``trainer.accumulate_grad_batches`` splits a GPU's share further
    (:mod:`t7synth.training.memory`).

    ``normalisation`` scales each volume by its brain's ``percentiles`` p1, p99:
    ``clip`` clips to [p1, p99], scales to [0, 1] and zeroes the background; ``authors``
    is the official ``pickling.py``, ``(x - p1) / (p99 - p1)`` unclipped, background
    negative (``docs/data.md``). ``slab_sampling`` picks a 2.5D training slab's centre
    slice: ``label`` (TorchIO's ``LabelSampler``: a brain voxel under the slab's centre),
    ``uniform`` (any slice holding brain, ``samples_per_volume`` draws per subject) or
    ``every`` (each brain slice once per epoch, as the authors trained;
    ``samples_per_volume`` is then unused).

    ``inference`` is how ``predict`` frames a new scan: ``t7synth`` (RAS+, crop or pad
    centred on the brain, the output zeroed outside the brain and clipped to [0, 1]) or
    ``authors``, the official ``inferer3T.py`` exactly, which converted official
    checkpoints use (``python -m t7synth.convert``): the scan's own array axes, the
    brain's box cropped and end-padded to ``shape``, the script's position tokens, the
    raw output (:mod:`t7synth.inference.official`). Training never reads it.

    ``folds``, ``fold`` and ``fold_by`` select one fold of a cross-validation
    (:mod:`t7synth.data.folds`): ``folds: null`` (default) splits by ``split``/fractions;
    ``folds: K`` holds out fold ``fold`` (0..K-1) as the test split, by ``subject``
    (balanced over sites) or by ``site`` (``folds: 0`` = one fold per site).
    """

    root: str | None = None
    demo_subjects: int = 20
    demo_seed: int = 0
    demo_voxel_size: float = 1.5
    shape: list[int] | None = None
    percentiles: list[float] = field(default_factory=lambda: [1.0, 99.0])
    normalisation: Literal["clip", "authors"] = "clip"
    slab_sampling: Literal["label", "uniform", "every"] = "label"
    inference: Literal["t7synth", "authors"] = "t7synth"
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    split_seed: int = 0
    folds: int | None = None
    fold: int = 0
    fold_by: Literal["subject", "site"] = "subject"
    batch_size: int = 8
    batch_scope: Literal["per_gpu", "global"] = "per_gpu"
    samples_per_volume: int = 16
    queue_length: int = 128
    num_workers: int = 0
    inference_batch_size: int = 16
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ModelConfig:
    """Which model (a registry name), its network's keyword arguments and options.

    ``net`` is passed to the network's constructor and checked against its signature.
    ``conditioning`` feeds age, sex and slice position as context tokens to nets that
    take them. ``residual`` adds the input's centre slice to a 2.5D net's output, so the
    net learns the 3T-to-7T correction (the paper's U-Net has none: off by default).
    ``discriminator`` configures the GAN's critic. ``position_divisor`` is the ``n`` of
    the slice-position token ``2 (j - mid) / n``: ``null`` divides by the preprocessed
    volume's slice count along ``geometry.axis``, the paper configs by the authors' 244.
    ``init`` records where the starting weights of ``fit --init`` came from (the file);
    ``null`` for weights initialised at random. Only ``fit --init`` sets it.
    """

    name: str = "unet"
    net: dict[str, Any] = field(default_factory=dict)
    conditioning: bool = True
    residual: bool = False
    discriminator: dict[str, Any] = field(default_factory=dict)
    position_divisor: int | None = None
    init: str | None = None


@dataclass
class LossConfig:
    """Loss weights. ``perceptual > 0`` needs ``perceptual_weights``, a file path."""

    l1: float = 1.0
    l1_in_mask: bool = False
    perceptual: float = 0.0
    perceptual_weights: str | None = None
    adversarial: float = 0.1
    gradient_penalty: float = 10.0


@dataclass
class OptimConfig:
    """Adam and a learning-rate schedule; the ``d_*`` and ``generator_every`` keys are the GAN's.

    ``schedule``: ``step`` (StepLR: ``lr`` times ``step_gamma`` every ``step_every``
    epochs) or ``onecycle`` (``lr`` is the peak of a one-cycle warm-up and cosine
    annealing over the whole run, stepped per batch; for models that step their
    optimisers through Lightning, not the GAN). See ``SynthesisModule.lr_schedule``.
    """

    lr: float = 1e-4
    schedule: Literal["step", "onecycle"] = "step"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    step_gamma: float = 1.0
    step_every: int = 1
    gradient_clip: float = 0.0
    d_lr: float = 2e-4
    d_betas: list[float] = field(default_factory=lambda: [0.0, 0.9])
    generator_every: int = 5


#: Lightning's precision names (``lightning_fabric.connector._PRECISION_INPUT_STR``,
#: a test keeps the two equal); spelled out so that reading a config imports no Lightning.
PRECISIONS = Literal[
    "transformer-engine",
    "transformer-engine-float16",
    "16-true",
    "16-mixed",
    "bf16-true",
    "bf16-mixed",
    "32-true",
    "64-true",
]

#: What ``trainer.precision`` accepts: ``auto`` or one of Lightning's names.
PRECISION_SETTINGS = Literal[("auto", *typing.get_args(PRECISIONS))]


@dataclass
class TrainerConfig:
    """Trainer settings that belong to the experiment (devices come from the CLI).

    ``precision: auto`` (the default) follows the hardware: ``bf16-mixed`` where the GPU
    or CPU computes bf16 natively, else ``16-mixed`` on GPUs and ``32-true`` on CPUs
    (:mod:`t7synth.training.precision`); otherwise one of Lightning's precision names
    (:data:`PRECISIONS`), obeyed as given. ``null`` (configs and checkpoints written
    before ``auto`` existed) reads as ``auto``.
    ``test_checkpoint`` is the checkpoint ``fit`` tests after training: ``best`` (highest
    in-brain validation PSNR) or ``last`` (the final epoch's, which the authors released).
    ``accumulate_grad_batches``: micro-batches per optimiser step (gradient
    accumulation); ``null`` is one on the CPU and, on GPUs, the fewest that fit in
    memory by ``fit``'s estimate (:mod:`t7synth.training.memory`).
    ``nonfinite_patience``: an optimiser step with a non-finite loss or gradient is
    skipped and counted (``train/skipped_steps``); this many in a row stop the run with
    one line naming the step (:mod:`t7synth.training.nonfinite`).
    ``join_timeout``: seconds a multi-node launch waits for nodes that cannot meet before
    it stops with one line (:mod:`t7synth.training.join`; 0: wait as long as
    ``torch.distributed`` does, 30 minutes under Lightning).
    """

    max_epochs: int = 10
    precision: PRECISION_SETTINGS | None = "auto"
    val_every: int = 1
    log_every_n_steps: int = 10
    limit_val_subjects: int | None = None
    test_checkpoint: Literal["best", "last"] = "best"
    accumulate_grad_batches: int | None = None
    nonfinite_patience: int = 10
    join_timeout: float = 300.0
    #: Stop after this many validations without a better ``val/psnr_brain`` (Lightning's
    #: ``EarlyStopping``); ``null``: train all ``max_epochs``.
    early_stopping_patience: int | None = None

    def __post_init__(self) -> None:
        # One spelling of "follow the hardware", so that a checkpoint written with
        # ``null`` resumes under today's default without a config difference.
        if self.precision is None:
            self.precision = "auto"


@dataclass
class WandbConfig:
    """Weights & Biases. ``mode: null`` means online with credentials, else offline.

    ``group: null`` groups runs by experiment name; a sweep sets it to the study and
    ``job_type`` to ``trial``, so a study's trials sit together on the dashboard.
    ``log_checkpoint: true`` also saves the tested checkpoint with the run, as a W&B
    ``model`` artifact (it can be gigabytes: off by default).
    """

    project: str = "t7synth"
    entity: str | None = None
    mode: Literal["online", "offline", "disabled"] | None = None
    group: str | None = None
    job_type: str = "train"
    log_checkpoint: bool = False
    #: ``fit --tags``/``--notes``: W&B's run tags (beside the model name) and notes.
    tags: list[str] = field(default_factory=list)
    notes: str | None = None


@dataclass
class Config:
    """A whole experiment. ``name`` names the run folder ``runs/<name>/<version>``."""

    name: str | None = None
    seed: int = 0
    runs_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts/lists/scalars: safe for YAML and for ``weights_only`` loads."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build and type-check a config; unknown keys raise :class:`UserError`."""
        return _build(cls, data, prefix="")


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``update`` merged in; nested dicts merge, anything else replaces."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with one clear error line for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    # Size, encoding (UTF-8, a byte-order mark accepted) and nesting are checked there.
    data = read_yaml(path, f"config file {path}") or {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def parse_assignment(text: str) -> tuple[str, Any]:
    """Split ``a.b.c=value`` into the dotted key and the value, read as YAML."""

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set expects key=value with a dotted key, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    except RecursionError:  # tens of thousands of brackets: deeper than any nesting check allows
        raise UserError(f"--set {key.strip()}: the value nests lists more than {MAX_DEPTH} levels deep") from None
    return key.strip(), check_nesting(value, f"--set {key.strip()}")


def parse_override(text: str) -> dict[str, Any]:
    """Turn ``a.b.c=value`` into ``{"a": {"b": {"c": value}}}``; the value is read as YAML."""
    key, value = parse_assignment(text)
    nested: dict[str, Any] = {}
    cursor = nested
    parts = key.split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def save_yaml(data: dict[str, Any], path: str | Path) -> None:
    """Write ``data`` as YAML atomically, keys in the order given."""

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise UserError(f"config key {prefix.rstrip('.') or '<root>'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        key = prefix + unknown[0]
        raise UserError(f"unknown config key {key!r}; valid keys here: {', '.join(prefix + n for n in names)}")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        hint = hints[name]
        value = data[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(value, hint, prefix + name)
    return cls(**kwargs)


def _check_type(value: Any, hint: Any, key: str) -> Any:
    """Check a scalar/list value against a simple type hint; ints are accepted as floats."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, key)
            except UserError as error:
                errors.append(error)
        raise errors[0]
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {key} must be a list, got {value!r}")
        return [_check_type(item, args[0], f"{key}[{i}]") for i, item in enumerate(value)] if args else list(value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key {key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if origin is Literal:
        # Enum-like keys are typed Literal[...]: the type is the one list of valid values.
        if isinstance(value, bool) or value not in args or type(value) is not type(next(a for a in args if a == value)):
            raise UserError(f"config key {key} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads "2e-3" (no dot) as a string; users mean a number.
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise UserError(f"config key {key} must be {hint.__name__}, got {value!r}")
    return value


#: Keys that may differ between a checkpoint and the command that resumes it. They set
#: how long the run goes on, where and how often it is logged, and how fast data is
#: read, not what is trained; ``--resume`` honours the new values. Every other key
#: must equal the checkpoint's (:func:`resume_differences`). ``seed`` may change too,
#: with a warning (see :class:`t7synth.training.callbacks.DataStreamCheck`): the run
#: continues correctly, but no longer matches an uninterrupted one.
RESUMABLE_KEYS = (
    "name",
    "runs_dir",
    "seed",
    "trainer.max_epochs",
    "trainer.log_every_n_steps",
    "trainer.nonfinite_patience",
    "trainer.join_timeout",
    "data.num_workers",
    "data.inference_batch_size",
    "wandb.*",
)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (nested mappings only; lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resume_differences(stored: Config, requested: Config) -> list[tuple[str, Any, Any]]:
    """``(key, stored value, requested value)`` for every key that differs between a
    checkpoint's config and a resumed run's, except :data:`RESUMABLE_KEYS`.

    A key missing on one side (``model.net`` keys) counts as ``None`` there.
    """
    old, new = flatten(stored.to_dict()), flatten(requested.to_dict())

    def may_change(key: str) -> bool:
        return any(
            key == allowed or (allowed.endswith(".*") and key.startswith(allowed[:-1])) for allowed in RESUMABLE_KEYS
        )

    keys = list(dict.fromkeys([*old, *new]))
    return [(key, old.get(key), new.get(key)) for key in keys if not may_change(key) and old.get(key) != new.get(key)]


def validate(config: Config) -> None:
    """Check values that types alone cannot express, when the config is resolved.

    Every number that would otherwise fail deep inside Lightning, TorchIO or torch (a
    zero batch size, a NaN learning rate, a slab wider than the volume) or silently do
    nothing (zero epochs, zero samples per volume) is refused here, with one line
    naming the key and the value. Sizes against the volume are checked when
    ``data.shape`` fixes it; otherwise the data module checks them against the data.
    """
    _check_finite(config, "")
    data, geo, optim, trainer = config.data, config.geometry, config.optim, config.trainer
    at_least_one = {
        "data.batch_size": data.batch_size,
        "data.inference_batch_size": data.inference_batch_size,
        "data.samples_per_volume": data.samples_per_volume,
        "data.queue_length": data.queue_length,
        "optim.step_every": optim.step_every,
        "optim.generator_every": optim.generator_every,
        "trainer.max_epochs": trainer.max_epochs,
        "trainer.val_every": trainer.val_every,
        "trainer.log_every_n_steps": trainer.log_every_n_steps,
        "trainer.nonfinite_patience": trainer.nonfinite_patience,
        "data.demo_subjects": data.demo_subjects,
    }
    if trainer.accumulate_grad_batches is not None:
        at_least_one["trainer.accumulate_grad_batches"] = trainer.accumulate_grad_batches
    if trainer.limit_val_subjects is not None:
        at_least_one["trainer.limit_val_subjects"] = trainer.limit_val_subjects
    if trainer.early_stopping_patience is not None:
        at_least_one["trainer.early_stopping_patience"] = trainer.early_stopping_patience
    if config.model.position_divisor is not None:
        at_least_one["model.position_divisor"] = config.model.position_divisor
    for key, value in at_least_one.items():
        if value < 1:
            raise UserError(f"config key {key} must be at least 1, got {value}")
    if data.folds is not None and (data.folds < 0 or (data.folds == 0 and data.fold_by != "site") or data.folds == 1):
        raise UserError(f"config key data.folds must be at least 2 (or 0 with data.fold_by: site), got {data.folds}")
    if data.fold < 0:
        raise UserError(f"config key data.fold must be 0 or more, got {data.fold}")
    for key, value in {"optim.lr": optim.lr, "optim.d_lr": optim.d_lr, "optim.step_gamma": optim.step_gamma}.items():
        if not value > 0:
            raise UserError(f"config key {key} must be a positive number, got {value}")
    non_negative = {
        "data.num_workers": data.num_workers,
        "optim.weight_decay": optim.weight_decay,
        "optim.gradient_clip": optim.gradient_clip,
        "seed": config.seed,
        "data.split_seed": data.split_seed,
        "data.demo_seed": data.demo_seed,
        "trainer.join_timeout": trainer.join_timeout,
        **{
            f"loss.{f.name}": getattr(config.loss, f.name)
            for f in dataclasses.fields(LossConfig)
            if f.type in ("float", float)
        },
        **{f"data.augment.{f.name}": getattr(data.augment, f.name) for f in dataclasses.fields(AugmentConfig)},
    }
    for key, value in non_negative.items():
        if value < 0:
            raise UserError(f"config key {key} must not be negative, got {value}")
    if data.samples_per_volume > data.queue_length:
        raise UserError(
            f"config key data.samples_per_volume ({data.samples_per_volume}) must not exceed data.queue_length "
            f"({data.queue_length}): the queue holds the samples of at least one whole volume"
        )
    for key, betas in (("optim.betas", optim.betas), ("optim.d_betas", optim.d_betas)):
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise UserError(f"config key {key} must be two numbers in [0, 1), got {betas}")
    if data.augment.flip > 1:
        raise UserError(f"config key data.augment.flip is a probability (0 to 1), got {data.augment.flip}")
    if data.augment.affine_scale >= 1:
        raise UserError(f"config key data.augment.affine_scale must be below 1, got {data.augment.affine_scale}")
    for key, value in (("data.val_fraction", data.val_fraction), ("data.test_fraction", data.test_fraction)):
        if not 0 <= value < 1:
            raise UserError(f"config key {key} must be in [0, 1), got {value}")
    if data.val_fraction + data.test_fraction >= 1:
        raise UserError(
            f"config keys data.val_fraction + data.test_fraction must be below 1 (training needs subjects), "
            f"got {data.val_fraction} + {data.test_fraction}"
        )
    if len(data.percentiles) != 2 or not 0 <= data.percentiles[0] < data.percentiles[1] <= 100:
        raise UserError(
            f"config key data.percentiles must be [low, high] with 0 <= low < high <= 100, got {data.percentiles}"
        )
    if data.shape is not None and (len(data.shape) != 3 or min(data.shape) < 1):
        raise UserError(f"config key data.shape must be three positive integers, got {data.shape}")
    if geo.mode == "slab":
        if geo.slices < 1 or geo.slices % 2 == 0:
            raise UserError(f"geometry.slices must be odd and positive (a centre slice), got {geo.slices}")
        if geo.inplane is not None and (len(geo.inplane) != 2 or min(geo.inplane) < 1):
            raise UserError(f"config key geometry.inplane must be two positive integers (or null), got {geo.inplane}")
    else:
        if data.slab_sampling != "label":
            raise UserError(
                f"config key data.slab_sampling is {data.slab_sampling!r}, which picks 2.5D slabs "
                "(geometry.mode slab); 3D patches are centred on brain voxels: use label"
            )
        if len(geo.patch) != 3 or min(geo.patch) < 1:
            raise UserError(f"config key geometry.patch must be three positive integers, got {geo.patch}")
        if geo.overlap < 0:
            raise UserError(f"config key geometry.overlap must not be negative, got {geo.overlap}")
    if data.inference == "authors" and (
        geo.mode != "slab" or geo.slices != 3 or geo.target != "center" or data.shape is None
    ):
        raise UserError(
            "config key data.inference authors (inferer3T.py) needs geometry.mode slab, slices 3, target center "
            f"and a data.shape frame; got {geo.mode}, {geo.slices}, {geo.target}, data.shape {data.shape}"
        )
    if data.shape is not None:
        check_sample_fits(config, tuple(data.shape), "data.shape")


def slab_patch_size(
    shape: Sequence[int], slices: int, axis: int, inplane: Sequence[int] | None = None
) -> tuple[int, int, int]:
    """Patch size of a 2.5D slab: ``slices`` along ``axis``, the rest full or ``inplane``."""
    size = list(shape) if inplane is None else _insert(list(inplane), axis, 0)
    size[axis] = slices
    return tuple(int(s) for s in size)


def _insert(values: list[int], axis: int, value: int) -> list[int]:
    values.insert(axis, value)
    return values


def sample_size(config: Config, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The size of one training sample (slab or patch) cut from a volume of ``shape``."""
    geo = config.geometry
    if geo.mode == "patch":
        return tuple(geo.patch)
    return slab_patch_size(shape, geo.slices, geo.axis, geo.inplane)


def check_sample_fits(config: Config, shape: tuple[int, ...], where: str) -> None:
    """Refuse a slab or patch larger than a volume of ``shape`` (named by ``where``).

    TorchIO's samplers would otherwise fail inside a data-loader thread.
    """
    size = sample_size(config, shape)
    if any(s > v for s, v in zip(size, shape)):
        key = "geometry.patch" if config.geometry.mode == "patch" else "geometry.slices/inplane"
        raise UserError(
            f"a training sample of {'x'.join(map(str, size))} voxels ({key}) does not fit in the "
            f"{'x'.join(map(str, shape))} volume of {where}"
        )


def _check_finite(node: Any, key: str) -> None:
    """Refuse NaN and infinity anywhere in the config (YAML reads ``.nan`` and ``.inf``)."""

    if dataclasses.is_dataclass(node):
        node = {f.name: getattr(node, f.name) for f in dataclasses.fields(node)}
    if isinstance(node, dict):
        for name, value in node.items():
            _check_finite(value, f"{key}.{name}" if key else str(name))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            _check_finite(value, f"{key}[{index}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise UserError(f"config key {key} must be a finite number, got {node}")
