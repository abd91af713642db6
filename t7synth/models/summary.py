"""What ``fit --summary`` prints: the generator's parameter count and the sample geometry."""

from __future__ import annotations


def model_summary(config) -> str:
    """The ``--summary`` text: trainable generator parameters and the sample geometry."""
    import torch

    from t7synth import registry

    # On the meta device nothing is allocated: the 259M-parameter paper net counts in
    # milliseconds and without a gigabyte of memory.
    with torch.device("meta"):
        model = registry.get(config.model.name)(config.to_dict())
    count = sum(p.numel() for p in model.generator().parameters() if p.requires_grad)
    geometry = config.geometry
    if geometry.mode == "slab":
        inplane = "x".join(map(str, geometry.inplane)) if geometry.inplane else "full in-plane"
        shape = f"2.5D slab: {geometry.slices} slices along axis {geometry.axis} ({inplane}), target: {geometry.target} slice(s)"
    else:
        shape = f"3D patch: {'x'.join(map(str, geometry.patch))}, inference overlap {geometry.overlap}"
    return f"model: {config.model.name}\nparameters: {count}\ngeometry: {shape}"
