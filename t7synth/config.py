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
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t7synth.errors import UserError


@dataclass
class GeometryConfig:
    """What one training sample is, and how whole volumes are tiled at inference.

    ``slab`` (2.5D): ``slices`` adjacent slices along array ``axis`` (after the volume
    is brought to RAS+ orientation), full in-plane size unless ``inplane`` crops it for
    training. The target is the centre slice (``target: center``) or the whole slab
    (``target: all``, WATNet). ``patch`` (3D): cubes of ``patch`` voxels, tiled with
    ``overlap`` voxels and a Hann window at inference.
    """

    mode: str = "slab"
    slices: int = 3
    axis: int = 1
    target: str = "center"
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
    """

    root: str | None = None
    demo_subjects: int = 20
    demo_seed: int = 0
    demo_voxel_size: float = 1.5
    shape: list[int] | None = None
    percentiles: list[float] = field(default_factory=lambda: [1.0, 99.0])
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    split_seed: int = 0
    batch_size: int = 8
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
    ``discriminator`` configures the GAN's critic.
    """

    name: str = "unet"
    net: dict[str, Any] = field(default_factory=dict)
    conditioning: bool = True
    residual: bool = False
    discriminator: dict[str, Any] = field(default_factory=dict)


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
    """Adam and a per-epoch StepLR; the ``d_*`` and ``generator_every`` keys are the GAN's."""

    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    step_gamma: float = 1.0
    step_every: int = 1
    gradient_clip: float = 0.0
    d_lr: float = 2e-4
    d_betas: list[float] = field(default_factory=lambda: [0.0, 0.9])
    generator_every: int = 5


@dataclass
class TrainerConfig:
    """Trainer settings that belong to the experiment (devices come from the CLI).

    ``precision: null`` picks ``bf16-mixed`` on GPUs and ``32-true`` on the CPU.
    """

    max_epochs: int = 10
    precision: str | None = None
    val_every: int = 1
    log_every_n_steps: int = 10
    limit_val_subjects: int | None = None


@dataclass
class WandbConfig:
    """Weights & Biases. ``mode: null`` means online with credentials, else offline.

    ``group: null`` groups runs by experiment name; a sweep sets it to the study and
    ``job_type`` to ``trial``, so a study's trials sit together on the dashboard.
    """

    project: str = "t7synth"
    entity: str | None = None
    mode: str | None = None
    group: str | None = None
    job_type: str = "train"


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
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"config file {path} is not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def parse_assignment(text: str) -> tuple[str, Any]:
    """Split ``a.b.c=value`` into the dotted key and the value, read as YAML."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set expects key=value with a dotted key, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


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
    import yaml

    from t7synth.files import atomic_path

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


def validate(config: Config) -> None:
    """Checks across keys that types alone cannot express."""
    geo = config.geometry
    if geo.mode not in ("slab", "patch"):
        raise UserError(f"config key geometry.mode must be slab or patch, got {geo.mode!r}")
    if geo.mode == "slab":
        if geo.slices < 1 or geo.slices % 2 == 0:
            raise UserError(f"geometry.slices must be odd and positive (a centre slice), got {geo.slices}")
        if geo.axis not in (0, 1, 2):
            raise UserError(f"geometry.axis must be 0, 1 or 2, got {geo.axis}")
        if geo.target not in ("center", "all"):
            raise UserError(f"geometry.target must be center or all, got {geo.target!r}")
    elif geo.overlap % 2:
        raise UserError(f"geometry.overlap must be even (TorchIO's GridSampler), got {geo.overlap}")
    low, high = config.data.percentiles
    if not 0 <= low < high <= 100:
        raise UserError(f"config key data.percentiles must satisfy 0 <= low < high <= 100, got {config.data.percentiles}")
    if config.data.shape is not None and (len(config.data.shape) != 3 or min(config.data.shape) < 1):
        raise UserError(f"config key data.shape must be three positive integers, got {config.data.shape}")
    if config.loss.perceptual < 0 or config.loss.l1 < 0:
        raise UserError("loss weights must be non-negative")
    if config.wandb.mode not in (None, "online", "offline", "disabled"):
        raise UserError(f"config key wandb.mode must be online, offline or disabled, got {config.wandb.mode!r}")

