"""Precision that follows the hardware: what ``trainer.precision: auto`` becomes.

bf16 is only fast where the hardware computes it: on a CPU without bf16 instructions
PyTorch converts every operand to fp32 and back, and a training step becomes 7-30x
slower than plain fp32 (measured for the demo on a 2-core AMD EPYC Zen 3, AVX2 only:
22 s a step in ``bf16-mixed`` against 1.65 s in ``32-true``; docs/performance.md).
So ``auto`` picks:

* CUDA: ``bf16-mixed`` where the GPU computes bf16 natively (Ampere and newer),
  else ``16-mixed`` (V100, T4: fp16 with a gradient scaler).
* CPU: ``bf16-mixed`` where the CPU has AVX512-BF16 or AMX tiles (what PyTorch's own
  ``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported`` report, the
  checks TorchInductor uses) or Arm's BF16 extension, and oneDNN is not capped below
  those instructions (``ONEDNN_MAX_CPU_ISA``); else ``32-true``.

An explicit precision is obeyed; ``bf16`` on a CPU without native support then warns
once per process with the measured slowdown. The choice and its reason are one line
(:func:`describe`) printed by ``fit``, ``predict`` and ``evaluate`` and recorded in the
run's ``environment.yaml``.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

#: The value that asks for the choice above (``None``, from configs and checkpoints
#: written before ``auto`` existed, means the same).
AUTO = "auto"

#: What the measured slowdown of emulated bf16 is, for the warning.
EMULATED_BF16_SLOWDOWN = (
    "PyTorch emulates bf16 there: 7-30x slower than 32-true (the demo: 22 s a step against 1.65 s "
    "on a 2-core AMD EPYC Zen 3)"
)

#: ``ONEDNN_MAX_CPU_ISA`` values that still allow oneDNN's native bf16 kernels
#: (oneDNN's ``dnnl_cpu_isa_t`` names: AVX512_CORE_BF16 and everything above it).
_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10", "ALL", "DEFAULT")


@dataclass(frozen=True)
class PrecisionChoice:
    """A resolved precision and why.

    Attributes:
        precision: a Lightning precision name (``32-true``, ``bf16-mixed``, ...).
        requested: what the config or command line asked for (``auto`` for the default).
        reason: one clause saying why, e.g. ``the CPU (AMD EPYC) has no native bf16``.
    """

    precision: str
    requested: str
    reason: str

    def describe(self) -> str:
        """The one line commands print, e.g. ``precision: 32-true (auto: the CPU (...) has no native bf16: ...)``."""
        how = "auto" if self.requested == AUTO else f"{self.requested} as configured"
        return f"precision: {self.precision} ({how}: {self.reason})"

    def record(self) -> dict:
        """The entry of ``environment.yaml``: the choice, what was asked and why."""
        return {"precision": self.precision, "precision_requested": self.requested, "precision_reason": self.reason}


def cpu_name() -> str:
    """The CPU's model name as ``lscpu`` prints it (``/proc/cpuinfo``), else the platform's."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_bf16() -> tuple[bool, str]:
    """Whether this CPU runs bf16 natively, and the instructions that say so (or lack).

    Returns:
        ``(native, what)``: e.g. ``(True, "AVX512-BF16")``, ``(False, "no AVX512-BF16 or AMX")``
        or ``(False, "oneDNN capped at AVX2 by ONEDNN_MAX_CPU_ISA")``.
    """
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i386", "i686"):
        found = [
            name
            for name, check in (("AVX512-BF16", "_is_avx512_bf16_supported"), ("AMX", "_is_amx_tile_supported"))
            if getattr(torch.cpu, check, lambda: False)()
        ]
        if not found:
            return False, "no AVX512-BF16 or AMX"
        cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
        if cap and not cap.startswith(_BF16_ISAS):
            return False, f"{' and '.join(found)} present, but oneDNN is capped at {cap} by ONEDNN_MAX_CPU_ISA"
        return True, " and ".join(found)
    # Arm: PyTorch's oneDNN check is the BF16 extension there (cpuinfo_has_arm_bf16).
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return True, "the Arm BF16 extension"
    return False, "no bf16 instructions"


def gpu_name() -> str:
    """The current CUDA GPU's name, or ``CUDA GPU`` where the driver cannot say."""
    try:
        return torch.cuda.get_device_name()
    except (RuntimeError, AssertionError, AttributeError):
        return "CUDA GPU"


def cuda_bf16() -> bool:
    """Whether the current CUDA GPU computes bf16 natively (Ampere and newer)."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.3 has no including_emulation
        return bool(torch.cuda.is_bf16_supported())


def resolve_precision(requested: str | None, device: str) -> PrecisionChoice:
    """The precision to run on ``device`` (``"cpu"`` or ``"cuda"``) for ``requested``.

    ``requested`` ``None`` or ``"auto"`` picks as the module docstring says; any other
    Lightning precision name is kept, with a one-time warning when it is bf16 on a CPU
    that would only emulate it.
    """
    on_gpu = device.startswith("cuda")
    if requested in (None, AUTO):
        if on_gpu:
            name = gpu_name()
            if cuda_bf16():
                return PrecisionChoice("bf16-mixed", AUTO, f"the GPU ({name}) computes bf16 natively")
            return PrecisionChoice("16-mixed", AUTO, f"the GPU ({name}) has no native bf16; fp16 with loss scaling")
        native, what = cpu_bf16()
        if native:
            return PrecisionChoice("bf16-mixed", AUTO, f"the CPU ({cpu_name()}) runs bf16 natively: {what}")
        return PrecisionChoice("32-true", AUTO, f"the CPU ({cpu_name()}) has no native bf16: {what}")
    if on_gpu:
        return PrecisionChoice(requested, requested, f"on the GPU ({gpu_name()})")
    native, what = cpu_bf16()
    if requested.startswith("bf16") and not native:
        warn_emulated_bf16(requested, what)
        return PrecisionChoice(requested, requested, f"on the CPU ({cpu_name()}), which emulates bf16: {what}")
    return PrecisionChoice(requested, requested, f"on the CPU ({cpu_name()})")


@functools.cache
def warn_emulated_bf16(requested: str, what: str) -> None:
    """Warn once per process that ``requested`` bf16 will be emulated on this CPU."""
    message = (
        f"warning: {requested} on a CPU without native bf16 ({cpu_name()}: {what}); {EMULATED_BF16_SLOWDOWN}. "
        "Use --precision auto (or 32-true) unless you are testing bf16 itself."
    )
    print(message, file=sys.stderr)
