"""Config resolution: layers, overrides, unknown keys and every shipped experiment."""

from __future__ import annotations

import pytest
from helpers import REPO

from t7synth import registry
from t7synth.config import Config, parse_override
from t7synth.errors import UserError
from t7synth.registry import resolve

EXPERIMENTS = sorted(REPO.joinpath("experiments").glob("*.yaml"))


def test_layers_apply_in_order(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("data:\n  batch_size: 3\n  samples_per_volume: 5\n")
    config = resolve("unet", path, ["data.batch_size=7"])
    assert config.data.batch_size == 7  # --set beats the file
    assert config.data.samples_per_volume == 5  # the file beats the defaults
    assert config.geometry.mode == "slab"  # the model's DEFAULTS beat the dataclasses
    assert config.name == "exp"  # named after the file


def test_unknown_key_lists_valid_keys(tmp_path):
    with pytest.raises(UserError, match=r"unknown config key 'data.batchsize'.*data.batch_size"):
        resolve("unet", None, ["data.batchsize=3"])


def test_unknown_model_lists_valid_models():
    with pytest.raises(UserError, match="valid models: .*unet"):
        resolve("nonet")


def test_wrong_type_names_the_key():
    with pytest.raises(UserError, match="data.batch_size must be int"):
        resolve("unet", None, ["data.batch_size=big"])


def test_model_flag_must_agree_with_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("model:\n  name: unet\n")
    assert resolve(None, path).model.name == "unet"
    assert resolve("unet", path).model.name == "unet"
    with pytest.raises(UserError, match="--model vnet contradicts model.name: unet"):
        resolve("vnet", path)


@pytest.mark.parametrize("key", ["data.batch_size", "trainer.max_epochs", "seed"])
def test_booleans_are_not_integers(key):
    # YAML reads "true" as a bool, and bool is an int subclass in Python: refuse it.
    with pytest.raises(UserError, match=f"{key} must be int"):
        resolve("unet", None, [f"{key}=true"])


@pytest.mark.parametrize(
    "key, value",
    [
        ("geometry.mode", "slices"),
        ("geometry.axis", "3"),
        ("geometry.target", "middle"),
        ("wandb.mode", "dryrun"),
        ("data.normalisation", "minmax"),
        ("data.slab_sampling", "all"),
        ("trainer.test_checkpoint", "first"),
    ],
)
def test_enum_keys_list_their_values(key, value):
    with pytest.raises(UserError, match=f"config key {key} must be one of"):
        resolve("unet", None, [f"{key}={value}"])


def test_even_slab_is_rejected():
    with pytest.raises(UserError, match="geometry.slices must be odd"):
        resolve("unet", None, ["geometry.slices=4"])


def test_3d_overlap_may_be_odd_but_not_negative():
    # MONAI-style window placement needs no even overlap (TorchIO's GridSampler did).
    assert resolve("vnet", None, ["geometry.overlap=5"]).geometry.overlap == 5
    with pytest.raises(UserError, match="geometry.overlap must not be negative, got -2"):
        resolve("vnet", None, ["geometry.overlap=-2"])


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("data: [unclosed\n")
    with pytest.raises(UserError, match="broken.yaml is not valid YAML"):
        resolve("unet", path)


def test_parse_override_reads_yaml_values():
    assert parse_override("a.b=[1, 2]") == {"a": {"b": [1, 2]}}
    assert parse_override("x=null") == {"x": None}
    with pytest.raises(UserError):
        parse_override("novalue")


def test_round_trip_through_dict():
    config = resolve("unet")
    assert Config.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_experiment_resolves_and_builds(path):
    import torch

    config = resolve(None, path)
    assert config.model.name in registry.names()
    with torch.device("meta"):
        model = registry.get(config.model.name)(config.to_dict())
    assert sum(p.numel() for p in model.generator().parameters()) > 0


@pytest.mark.parametrize("path", sorted(REPO.joinpath("experiments").glob("demo_*.yaml")), ids=lambda p: p.name)
def test_demo_files_hold_only_what_differs_from_the_model_defaults(path):
    # One place per value: a demo file that repeats a default hides which choices are the demo's.
    import yaml

    from t7synth.config import deep_merge

    data = yaml.safe_load(path.read_text())
    base = deep_merge(Config().to_dict(), registry.get(data["model"]["name"]).DEFAULTS)

    def repeated(file_part, base_part, prefix=""):
        for key, value in file_part.items():
            if isinstance(value, dict) and value and isinstance(base_part.get(key), dict):
                yield from repeated(value, base_part[key], f"{prefix}{key}.")
            elif prefix + key != "model.name" and base_part.get(key) == value:
                yield prefix + key

    assert not list(repeated(data, base))
