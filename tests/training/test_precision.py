"""``trainer.precision: auto`` follows the hardware; explicit values are obeyed; fit,
predict and evaluate say what they chose, and the run folder records it."""

from __future__ import annotations

import pytest
import torch
import yaml
from helpers import TINY_UNET

from t7synth import fit
from t7synth.cli import run_main
from t7synth.training import precision
from t7synth.training.precision import resolve_precision


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    """An x86 CPU like an AMD EPYC Zen 3: AVX2, no AVX512-BF16, no AMX."""
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    precision.warn_emulated_bf16.cache_clear()
    yield
    precision.warn_emulated_bf16.cache_clear()


@pytest.fixture
def cpu_with_bf16(monkeypatch):
    """An x86 CPU with AVX512-BF16 (AMD Zen 4, Intel Cooper Lake and later)."""
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)


def test_auto_is_fp32_on_a_cpu_without_native_bf16(cpu_without_bf16):
    for requested in ("auto", None):
        choice = resolve_precision(requested, "cpu")
        assert choice.precision == "32-true" and choice.requested == "auto"
        assert "no native bf16" in choice.reason and "AVX512-BF16" in choice.reason
    assert choice.describe().startswith("precision: 32-true (auto: the CPU (")


def test_auto_is_bf16_on_a_cpu_with_avx512_bf16_or_amx(cpu_with_bf16, monkeypatch):
    assert resolve_precision("auto", "cpu").precision == "bf16-mixed"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    choice = resolve_precision("auto", "cpu")
    assert choice.precision == "bf16-mixed" and "AMX" in choice.reason


def test_auto_respects_a_onednn_cap_below_bf16(cpu_with_bf16, monkeypatch):
    # ONEDNN_MAX_CPU_ISA=AVX2 turns oneDNN's bf16 kernels off: bf16 would be emulated.
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    choice = resolve_precision("auto", "cpu")
    assert choice.precision == "32-true" and "ONEDNN_MAX_CPU_ISA" in choice.reason
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core_bf16")
    assert resolve_precision("auto", "cpu").precision == "bf16-mixed"


def test_explicit_bf16_is_obeyed_and_warns_once_on_an_emulating_cpu(cpu_without_bf16, capsys):
    first = resolve_precision("bf16-mixed", "cpu")
    second = resolve_precision("bf16-mixed", "cpu")
    assert first.precision == second.precision == "bf16-mixed"
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "7-30x slower" in err and "--precision auto" in err
    resolve_precision("32-true", "cpu")
    assert capsys.readouterr().err == ""


def test_explicit_bf16_does_not_warn_where_it_is_native(cpu_with_bf16, capsys):
    precision.warn_emulated_bf16.cache_clear()
    assert resolve_precision("bf16-mixed", "cpu").precision == "bf16-mixed"
    assert "warning" not in capsys.readouterr().err


def test_auto_on_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert resolve_precision("auto", "cuda").precision == "16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    choice = resolve_precision("auto", "cuda")
    assert choice.precision == "bf16-mixed" and "Tesla T4" in choice.reason
    assert resolve_precision("32-true", "cuda").precision == "32-true"


def test_every_shipped_config_follows_the_hardware_by_default():
    from helpers import REPO

    from t7synth.registry import resolve

    for path in sorted((REPO / "experiments").glob("*.yaml")):
        config = resolve(None, str(path), [], {})
        # demo_watnet keeps the fp32 its README figures were measured in.
        expected = "32-true" if path.name == "demo_watnet.yaml" else "auto"
        assert config.trainer.precision == expected, path.name


def test_fit_says_what_it_chose_and_records_it(dataset, tmp_path, capfd, cpu_without_bf16):
    status = run_main(
        fit.main,
        [
            "--model",
            "unet",
            "--data",
            str(dataset),
            "--out",
            str(tmp_path / "runs"),
            "--fast-dev-run",
            "--wandb",
            "disabled",
            *[item for value in TINY_UNET for item in ("--set", value)],
        ],
    )
    err = capfd.readouterr().err
    assert status == 0
    lines = [line for line in err.splitlines() if line.startswith("precision:")]
    assert len(lines) == 1 and lines[0].startswith("precision: 32-true (auto: the CPU (")
    (run,) = (tmp_path / "runs").glob("*/version_*")
    launch = yaml.safe_load((run / "environment.yaml").read_text())["launches"][-1]
    assert launch["precision"] == "32-true" and launch["precision_requested"] == "auto"
    assert "no native bf16" in launch["precision_reason"] and launch["cpu_bf16"].startswith("none (")
