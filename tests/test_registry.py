"""Every registered model resolves, builds and runs one training step through the CLI."""

from __future__ import annotations

import pytest
from helpers import REPO

from t7synth import registry
from t7synth.models.base import SynthesisModule
from t7synth.registry import resolve


def test_all_four_models_are_registered():
    assert registry.names() == ["gan_unet", "unet", "vnet", "watnet"]


@pytest.mark.parametrize("name", ["gan_unet", "vnet", "watnet"])
def test_defaults_resolve_to_the_registered_class(name):
    module_class = registry.get(name)
    assert issubclass(module_class, SynthesisModule)
    config = resolve(name)
    assert config.model.name == name and config.name == name


@pytest.mark.parametrize("name", ["gan_unet", "vnet", "watnet"])
def test_experiment_files_name_their_model(name):
    for kind in ("paper", "demo"):
        config = resolve(None, REPO / f"experiments/{kind}_{name}.yaml")
        assert config.model.name == name


def test_only_the_gan_needs_unused_parameter_detection():
    flags = {name: registry.get(name).FIND_UNUSED_PARAMETERS for name in registry.names()}
    assert flags == {"gan_unet": True, "unet": False, "vnet": False, "watnet": False}
