"""GPU memory of a training step, estimated before anything is allocated, and the plan
that splits a batch over GPUs and micro-batches so that it fits.

The estimate per GPU is

    states + DDP buckets + fixed + per_sample x micro-batch

* ``states``: what lives across steps: the weights, their gradients and Adam's two
  moments (4 + 4 + 8 bytes per fp32 parameter, every trainable network of the model);
* DDP buckets: under DDP the gradients are also copied into communication buckets
  (``gradient_as_bucket_view`` is off in Lightning's default), another 4 bytes per
  parameter;
* ``fixed`` and ``per_sample``: the peak of the tensors a training step allocates on
  top of that (activations saved for the backward pass, their gradients, the
  temporaries of the backward pass), measured by running the model's training
  computation on the **meta device** (shapes only, no memory, a few seconds for the
  259M-parameter paper U-Net) at micro-batches 1 and 2 and counting live storage bytes
  with a dispatch mode, the technique of ``torch.distributed._tools.mem_tracker``.
  Two things are emulated because the meta device has neither: bf16 autocast follows
  CUDA's op lists (convolutions, linear layers and attention in bf16, GroupNorm and
  LayerNorm in fp32; https://pytorch.org/docs/stable/amp.html#cuda-op-specific-behavior),
  and attention keeps what the fused (flash / memory-efficient) kernels keep, Q, K, V,
  the output and the log-sum-exp, not an N x N matrix.

Not counted: the CUDA context, cuDNN workspaces and the caching allocator's
fragmentation, hence the margin a plan leaves (:data:`USABLE_FRACTION`,
:data:`RESERVED_BYTES`), and the frozen perceptual network (ResNet-50, 0.1 GB of
weights and its activations, a few percent of the U-Net's). ``tests/training/test_memory.py``
compares the estimate with the measured peak memory of CPU training steps.

Batch semantics (``data.batch_scope``): ``per_gpu`` (the default), ``data.batch_size``
samples per process and optimiser step; ``global``, ``data.batch_size`` samples per
optimiser step over all processes, as a paper reports it (the authors' 56 was the batch
of one DataParallel run), so each of ``world`` processes takes ``batch_size / world``.
Either share is processed in ``trainer.accumulate_grad_batches`` micro-batches
(Lightning's gradient accumulation: the update is the same, GroupNorm being per
sample); ``null`` means one on the CPU and, on GPUs, the fewest that fit.
"""

from __future__ import annotations

import dataclasses
import inspect
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.autograd.variable import Variable
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from t7synth import registry
from t7synth.config import sample_size
from t7synth.data.batches import SUBJECT_KEYS, BatchPlan, batch_share, micro_batch, plan_batches
from t7synth.data.demo.cache import default_demo_dir, ensure_demo_dataset
from t7synth.data.layout import discover
from t7synth.data.volumes import canonical_shape
from t7synth.errors import UserError

GIB = 1024**3
#: A plan may use this fraction of a GPU's memory ...
USABLE_FRACTION = 0.90
#: ... less this much for the CUDA context, cuDNN and NCCL workspaces.
RESERVED_BYTES = 1 * GIB
#: GPU sizes the summary plans for when none is visible (A100 40 GB, H100 80 GB, H200 141 GB).
REFERENCE_GPUS = {"40 GB": 40e9, "80 GB": 80e9, "141 GB": 141e9}


def usable_bytes(capacity: float) -> float:
    """What a plan may use of a GPU with ``capacity`` bytes."""
    return capacity * USABLE_FRACTION - RESERVED_BYTES


# -- measuring ------------------------------------------------------------------------
@dataclass(frozen=True)
class Footprint:
    """A config's training memory per GPU, in bytes (see the module docstring).

    ``accumulates`` is false for models that step their optimisers themselves (the
    GAN's manual optimisation), which Lightning cannot accumulate gradients for.
    """

    parameters: int
    states: int
    gradients: int
    phases: tuple[tuple[int, int], ...]
    precision: str
    accumulates: bool = True

    @property
    def per_sample(self) -> int:
        """Activation bytes per sample of the largest backward pass."""
        return max(slope for _, slope in self.phases)

    def activations(self, micro: int) -> int:
        """Peak bytes a step allocates beyond ``states`` at ``micro`` samples per forward pass."""
        return max(fixed + slope * micro for fixed, slope in self.phases)

    def peak(self, micro: int, world: int = 1) -> float:
        """Estimated peak bytes per GPU at ``micro`` samples per forward pass."""
        buckets = self.gradients if world > 1 else 0
        return self.states + buckets + self.activations(micro)

    def largest_micro_batch(self, capacity: float, world: int = 1) -> int:
        """The most samples per forward pass that fit a GPU of ``capacity`` bytes (0: none)."""
        usable, micro = usable_bytes(capacity), 0
        while self.peak(micro + 1, world) <= usable and micro < 100_000:
            micro += 1
        return micro


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of live tensor storages created inside it, and their peak.

    Every op's outputs are recorded once per storage; a weak-reference finaliser on the
    storage subtracts it when it is freed (storages keep their Python object alive as
    long as they live, so the finaliser fires exactly then).
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage._cdata
                if key not in self._sizes:
                    self._sizes[key] = storage.nbytes()
                    self.live += self._sizes[key]
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)


class _FusedAttention(torch.autograd.Function):
    """Shapes and saved tensors of a fused attention kernel (flash / memory-efficient)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        logsumexp = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, logsumexp)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


#: CUDA autocast's lower-precision and fp32 op lists, as far as t7synth's nets use them.
_LOW_PRECISION_OPS = frozenset(
    {
        "conv1d",
        "conv2d",
        "conv3d",
        "conv_transpose1d",
        "conv_transpose2d",
        "conv_transpose3d",
        "linear",
        "matmul",
        "mm",
        "bmm",
        "addmm",
        "baddbmm",
        "prelu",
    }
)
_FP32_OPS = frozenset(
    {"group_norm", "layer_norm", "softmax", "log_softmax", "binary_cross_entropy_with_logits", "l1_loss", "mse_loss"}
)


class _MetaTraining(TorchFunctionMode):
    """Autocast's casts (``dtype``, or none) and fused attention, emulated on the meta device."""

    def __init__(self, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.dtype = dtype

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "scaled_dot_product_attention":
            q, k, v = (self._cast(t, self.dtype) for t in args[:3])
            return _FusedAttention.apply(q, k, v)
        if self.dtype is not None and name in _LOW_PRECISION_OPS:
            args, kwargs = self._cast_all(args, kwargs, self.dtype)
        elif self.dtype is not None and name in _FP32_OPS:
            args, kwargs = self._cast_all(args, kwargs, torch.float32)
        return func(*args, **kwargs)

    @staticmethod
    def _cast(value, dtype):
        if dtype is not None and isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
            return value.to(dtype)
        return value

    def _cast_all(self, args, kwargs, dtype):
        return [self._cast(a, dtype) for a in args], {k: self._cast(v, dtype) for k, v in kwargs.items()}


def compute_dtype(precision: str) -> torch.dtype | None:
    """The dtype autocast computes in for a Lightning precision (``None``: no autocast).

    ``bf16-true``/``16-true`` (the whole network in half precision) are estimated as
    their mixed counterparts, an upper bound: fp32 weights and normalisations.
    """
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return None


def sample_shape(config, volume_shape: Sequence[int]) -> tuple[int, ...]:
    """One training sample's (1, *spatial) shape for volumes of ``volume_shape``."""

    return (1, *sample_size(config, tuple(volume_shape)))


def meta_batch(config, volume_shape: Sequence[int], size: int) -> dict:
    """A training batch of ``size`` samples on the meta device (shapes only)."""
    shape = sample_shape(config, volume_shape)
    with torch.device("meta"):
        volume = torch.empty(size, *shape)
        batch = {
            "source": volume,
            "target": torch.empty_like(volume),
            "mask": torch.empty(size, *shape, dtype=torch.uint8),
        }
        batch["location"] = torch.zeros(size, 6, dtype=torch.long)
        for key in SUBJECT_KEYS:
            batch[key] = torch.ones(size)
    return batch


def _training_phases(model, batch: dict) -> list:
    """A training step's backward passes, in order: callables that run a forward pass
    and return the loss to differentiate (one per optimiser).

    The GAN's passes are the model's own losses (``GANUNetModule.generator_losses`` and
    ``discriminator_losses``, gradient penalty included), so the step is written once:
    the generator's pass holds its activations and the critic's on its output (the
    critic frozen, as ``toggled_optimizer`` does); the critic's own pass holds its
    activations on real and fake slices and the gradient penalty's double backward.
    On the meta device the penalty's autocast-off context is skipped
    (``gan_unet.autocast_off``), so the estimate counts it under the emulated autocast.
    """
    x, context = model.net_input(batch)
    target = model.net_view(batch["target"]).float()
    critic = getattr(model, "discriminator", None)
    if critic is None:

        def generator_pass() -> torch.Tensor:
            return (model(x, context).float() - target).abs().mean()

        return [generator_pass]

    mask = model.net_view(batch["mask"])
    kept = {}

    def gan_generator_pass() -> torch.Tensor:
        prediction = model(x, context)
        kept["fake"] = prediction.detach().float()
        critic.requires_grad_(False)
        return model.generator_losses(prediction, target, mask)["g_loss"]

    def critic_pass() -> torch.Tensor:
        critic.requires_grad_(True)
        return model.discriminator_losses(target, kept.pop("fake"))["d_loss"]

    return [gan_generator_pass, critic_pass]


def _backward(loss: torch.Tensor) -> None:
    # loss.backward() and torch.autograd.backward() pass through torch-function modes,
    # which run them with the mode switched off, so activation checkpointing would
    # recompute its blocks without the autocast emulation. The engine, called directly,
    # keeps the mode on.

    Variable._execution_engine.run_backward((loss,), (torch.ones_like(loss),), False, False, (), True, True)


def measure(config, volume_shape: Sequence[int], precision: str, model=None) -> Footprint:
    """The :class:`Footprint` of ``config`` for volumes of ``volume_shape`` under ``precision``."""
    model = registry.build_on_meta(config) if model is None else model
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    parameters = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    grad_bytes = sum(p.numel() * p.element_size() for p in trainable)
    adam_bytes = 2 * grad_bytes
    for p in trainable:  # steady state: last step's gradients exist until backward
        p.grad = torch.zeros_like(p)
    peaks = []  # [batch size][phase]
    for size in (1, 2):
        batch = meta_batch(config, volume_shape, size)
        with _MetaTraining(compute_dtype(precision)), _LiveBytes() as tracker:
            phase_peaks = []
            for phase in _training_phases(model, batch):
                tracker.peak = tracker.live
                loss = phase()
                _backward(loss)
                del loss
                phase_peaks.append(tracker.peak)
        peaks.append(phase_peaks)
    for p in trainable:
        p.grad = None
    # Linear in the batch per phase: the slope is the per-sample part, the intercept what
    # every step holds whatever its batch (autocast's bf16 weight copies, the critic's
    # weight gradients).
    phases = tuple((max(0, 2 * one - two), max(0, two - one)) for one, two in zip(*peaks))
    return Footprint(
        parameters=parameters,
        states=weight_bytes + grad_bytes + adam_bytes,
        gradients=grad_bytes,
        phases=phases,
        precision=precision,
        accumulates=bool(model.automatic_optimization),
    )


# -- planning -------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """How one config runs on ``world`` GPUs of ``capacity`` bytes."""

    world: int
    capacity: float
    share: int
    accumulate: int
    micro: int
    estimate: float
    fits: bool

    def describe(self) -> str:
        steps = (
            f"{self.accumulate} micro-batches of {self.micro}" if self.accumulate > 1 else f"micro-batch {self.micro}"
        )
        return (
            f"{self.share} samples per GPU per step, {steps}: {self.estimate / GIB:.1f} GiB of "
            f"{self.capacity / GIB:.1f} GiB"
        )


def make_plan(config, footprint: Footprint, world: int, capacity: float) -> Plan:
    """The plan for ``world`` GPUs of ``capacity`` bytes.

    ``trainer.accumulate_grad_batches`` fixes the micro-batches; ``null`` takes the
    fewest that fit (that divide the share evenly), one where accumulation is
    impossible (manual optimisation). ``fits`` is whether the estimate is within
    :func:`usable_bytes`.
    """
    share = batch_share(config.data, world)
    fixed = config.trainer.accumulate_grad_batches
    check_accumulation(config, footprint.accumulates)
    if fixed is not None:
        options = [fixed]
    elif footprint.accumulates:
        options = [a for a in range(1, share + 1) if share % a == 0]
    else:
        options = [1]
    usable = usable_bytes(capacity)
    plan = None
    for accumulate in options:
        micro = micro_batch(config.data, world, accumulate)
        estimate = footprint.peak(micro, world)
        plan = Plan(world, capacity, share, accumulate, micro, estimate, estimate <= usable)
        if plan.fits:
            return plan
    return plan


def check_accumulation(config, accumulates: bool) -> None:
    """Refuse ``trainer.accumulate_grad_batches`` > 1 for models that cannot accumulate."""
    fixed = config.trainer.accumulate_grad_batches
    if fixed is not None and fixed > 1 and not accumulates:
        raise UserError(
            f"config key trainer.accumulate_grad_batches is {fixed}, but {config.model.name} steps its optimisers "
            "itself (manual optimisation), which Lightning cannot accumulate: use 1 or null, and "
            "model.net.checkpointing=true or more GPUs to fit memory"
        )


def refusal(config, footprint: Footprint, plan: Plan, checkpointed: Footprint | None) -> str:
    """One line saying that ``plan`` does not fit, and which batch or switch would."""
    usable = usable_bytes(plan.capacity)
    head = (
        f"the training step needs an estimated {plan.estimate / GIB:.1f} GiB per GPU "
        f"({plan.micro} samples per forward pass) but {plan.capacity / GIB:.1f} GiB GPUs leave "
        f"{usable / GIB:.1f} GiB for it"
    )
    remedies = []
    if config.trainer.accumulate_grad_batches is not None and footprint.accumulates:
        auto = make_plan(_with_accumulation(config, None), footprint, plan.world, plan.capacity)
        if auto.fits:
            remedies.append(f"set trainer.accumulate_grad_batches={auto.accumulate} (or null: the fewest that fit)")
    if checkpointed is not None:
        switched = make_plan(config, checkpointed, plan.world, plan.capacity)
        if switched.fits:
            remedies.append(f"set model.net.checkpointing=true ({switched.describe()})")
    if not remedies:
        most = footprint.largest_micro_batch(plan.capacity, plan.world)
        if most >= 1:
            remedies.append(
                f"use at most {most} samples per forward pass (a smaller data.batch_size or, with data.batch_scope "
                "global, more GPUs)"
            )
        else:
            remedies.append(
                f"the weights, gradients and Adam state alone need {footprint.peak(0, plan.world) / GIB:.1f} GiB: "
                "use larger GPUs"
            )
    return f"{head}: {'; or '.join(remedies)}"


def _with_accumulation(config, value):
    return dataclasses.replace(config, trainer=dataclasses.replace(config.trainer, accumulate_grad_batches=value))


def checkpointing_variant(config):
    """``config`` with ``model.net.checkpointing`` on, or ``None`` if its net has no such switch."""

    model = registry.build_on_meta(config)
    net = model.generator()
    if "checkpointing" not in inspect.signature(type(net)).parameters or config.model.net.get("checkpointing"):
        return None
    return dataclasses.replace(
        config, model=dataclasses.replace(config.model, net={**config.model.net, "checkpointing": True})
    )


def check_gpu_memory(config, world: int, capacity: float, precision: str, volume_shape: Sequence[int]) -> Plan:
    """The plan ``fit`` runs on GPUs; a config that cannot fit raises :class:`UserError`.

    Raises:
        UserError: one line with the estimate and the batch or switch that would fit.
    """
    footprint = measure(config, volume_shape, precision)
    plan = make_plan(config, footprint, world, capacity)
    if plan.fits:
        return plan
    variant = checkpointing_variant(config)
    checkpointed = measure(variant, volume_shape, precision) if variant is not None else None
    raise UserError(refusal(config, footprint, plan, checkpointed))


def volume_shape(config, create: bool = False) -> tuple[int, int, int] | None:
    """The preprocessed volumes' shape: ``data.shape``, else the first subject's, read
    from its NIfTI header in RAS+ axis order (as preprocessing reorients).

    Args:
        create: generate the demo dataset if it is not cached yet (``fit`` does anyway);
            otherwise an absent dataset gives ``None``.
    """
    if config.data.shape is not None:
        return tuple(config.data.shape)

    if config.data.root:
        root = Path(config.data.root).expanduser()
    else:
        data = config.data
        if create:
            root = ensure_demo_dataset(
                n_subjects=data.demo_subjects, seed=data.demo_seed, voxel_size=data.demo_voxel_size
            )
        else:
            root = default_demo_dir(data.demo_subjects, data.demo_seed, data.demo_voxel_size)
    if not root.is_dir():
        return None
    try:
        record = discover(root)[0]
    except (UserError, IndexError):
        return None
    return canonical_shape(record.source)


# -- what fit and fit --summary call --------------------------------------------------
def gpu_capacity(count: int) -> tuple[float, str]:
    """The smallest total memory in bytes of the first ``count`` visible GPUs, and their name."""
    properties = [torch.cuda.get_device_properties(i) for i in range(min(count, torch.cuda.device_count()))]
    if not properties:
        raise UserError(f"--gpus {count}: no CUDA GPU is visible on this machine")
    smallest = min(properties, key=lambda p: p.total_memory)
    return float(smallest.total_memory), smallest.name


def accumulation(config, gpus: int, world: int, precision: str) -> tuple[int, Plan | None]:
    """Micro-batches per optimiser step for a run, and the GPU memory plan behind it.

    On the CPU (``gpus == 0``) the configured number, else one; nothing is estimated.
    On GPUs the plan for the visible GPUs (:func:`check_gpu_memory`), which refuses a
    config that cannot fit before the model is built.
    """
    if gpus == 0:
        accumulate = config.trainer.accumulate_grad_batches or 1
        micro_batch(config.data, world, accumulate)
        if accumulate > 1:
            check_accumulation(config, bool(registry.build_on_meta(config).automatic_optimization))
        return accumulate, None
    capacity, _ = gpu_capacity(gpus)
    shape = volume_shape(config, create=True)
    plan = check_gpu_memory(config, world, capacity, precision, shape)
    return plan.accumulate, plan


def batch_plan(config, gpus: int, world: int, precision: str) -> BatchPlan:
    """The run's :class:`~t7synth.data.batches.BatchPlan`: :func:`accumulation`'s
    micro-batches per step (refusing a config that cannot fit) and the sizes they give."""
    accumulate, _ = accumulation(config, gpus, world, precision)
    return plan_batches(config.data, world, accumulate)


def summary_lines(config, world: int | None = None) -> list[str]:
    """The memory part of ``fit --summary``: the estimate and the plans per GPU count and size.

    Args:
        world: the run's GPU count (``--gpus`` x ``--nodes``); ``None`` plans for 1, 2,
            4 and 8. Visible GPUs are planned for as well.
    """
    # The plan is for GPUs, where "auto" is bf16 on every GPU the paper configs target.
    precision = config.trainer.precision if config.trainer.precision not in (None, "auto") else "bf16-mixed"
    shape = volume_shape(config)
    if shape is None:
        return ["memory: no data.shape and no dataset to read a volume shape from yet (the plan needs one)"]
    footprint = measure(config, shape, precision)
    sample = "x".join(map(str, sample_shape(config, shape)[1:]))
    scope = "global batch" if config.data.batch_scope == "global" else "batch per GPU"
    lines = [
        (
            f"memory per GPU, estimated ({precision}; docs/performance.md): volumes {'x'.join(map(str, shape))}, "
            f"samples {sample}, {scope} {config.data.batch_size}"
        ),
        (
            f"  weights + gradients + Adam {footprint.states / GIB:.2f} GiB (+{footprint.gradients / GIB:.2f} GiB "
            f"DDP buckets); activations {footprint.per_sample / GIB:.3f} GiB per sample "
            f"(+{footprint.activations(0) / GIB:.2f} GiB per step)"
        ),
    ]
    sizes = dict(REFERENCE_GPUS)
    if torch.cuda.is_available():
        capacity, name = gpu_capacity(torch.cuda.device_count())
        sizes = {f"{name} ({capacity / GIB:.0f} GiB)": capacity, **sizes}
    worlds = [count for count in ([world] if world else [1, 2, 4, 8]) if _divides(config, count)]
    table, missing = _plan_table(config, footprint, worlds, sizes)
    lines += table
    variant = checkpointing_variant(config) if missing else None
    if variant is not None:
        checkpointed = measure(variant, shape, precision)
        lines.append(
            f"  with model.net.checkpointing=true: activations {checkpointed.per_sample / GIB:.3f} GiB per sample"
        )
        lines += _plan_table(variant, checkpointed, worlds, sizes)[0]
    lines.append("  (cells: micro-batches per step x samples per micro-batch: estimated peak per GPU)")
    return lines


def _plan_table(config, footprint: Footprint, worlds: list[int], sizes: dict[str, float]) -> tuple[list[str], bool]:
    lines = [f"  {'GPUs':>4}  {'per GPU':>7}  " + "  ".join(f"{name:>20}" for name in sizes)]
    missing = False
    for count in worlds:
        cells = []
        for capacity in sizes.values():
            plan = make_plan(config, footprint, count, capacity)
            missing |= not plan.fits
            cells.append(
                f"{plan.accumulate} x {plan.micro}: {plan.estimate / GIB:.1f} GiB" if plan.fits else "does not fit"
            )
        lines.append(
            f"  {count:>4}  {batch_share(config.data, count):>7}  " + "  ".join(f"{cell:>20}" for cell in cells)
        )
    return lines, missing


def _divides(config, world: int) -> bool:
    try:
        batch_share(config.data, world)
        return True
    except UserError:
        return False
