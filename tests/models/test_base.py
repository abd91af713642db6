"""SynthesisModule's whole-volume prediction: what it hands to scoring and to ``predict``."""

from __future__ import annotations

import torch
from helpers import constant_module
from torch import nn

from t7synth.config import Config
from t7synth.models.base import SynthesisModule


def _module(mode: str):
    config = Config().to_dict()
    if mode == "patch":
        config["geometry"].update(mode="patch", patch=[8, 8, 8], overlap=4)
    return constant_module(config)


def test_prediction_is_zero_outside_the_brain_mask():
    mask = torch.zeros(1, 12, 14, 10, dtype=torch.uint8)
    mask[:, 3:9, 4:11, 2:8] = 1
    source = torch.rand(1, 12, 14, 10)
    meta = {"age": 60.0, "sex": 1.0, "brain_mid": 7.0, "n_slices": 14.0}
    for mode in ("slab", "patch"):
        prediction = _module(mode).eval().predict_subject(source, meta, mask)
        assert prediction.shape == source.shape and prediction.dtype == torch.float32
        assert torch.all(prediction[mask == 0] == 0), mode  # the target is zero there too
        assert torch.allclose(prediction[mask == 1], torch.tensor(0.7)), mode
        unmasked = _module(mode).eval().predict_subject(source, meta)
        assert torch.allclose(unmasked, torch.tensor(0.7)), mode  # no mask: nothing zeroed


class ContextModule(SynthesisModule):
    def build_net(self) -> nn.Module:
        return nn.Identity()

    def uses_context(self) -> bool:
        return True


def test_position_token_divides_by_the_configured_slice_count():
    """``2 (j - mid) / n``: n is the volume's slice count, or ``model.position_divisor``
    (the authors' 244 for their 242-slice volumes)."""
    batch = {
        "source": torch.zeros(2, 1, 6, 3, 5),
        "location": torch.tensor([[0, 40, 0, 6, 43, 5], [0, 200, 0, 6, 203, 5]]),
        "age": torch.tensor([70.0, 64.0]),
        "sex": torch.tensor([1.0, 0.0]),
        "brain_mid": torch.tensor([120.5, 118.0]),
        "n_slices": torch.tensor([242.0, 242.0]),
    }
    centre = torch.tensor([41.0, 201.0])
    for divisor, expected in ((None, 242.0), (244, 244.0)):
        config = Config().to_dict()
        config["model"]["position_divisor"] = divisor
        _, context = ContextModule(config).net_input(batch)
        assert context.shape == (2, 3, 1)
        torch.testing.assert_close(context[:, 0, 0], batch["age"])
        torch.testing.assert_close(context[:, 2, 0], 2 * (centre - batch["brain_mid"]) / expected)
