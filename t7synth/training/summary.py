"""What ``fit --summary`` prints: the generator's parameter count, the sample geometry
and the GPU memory plan (:mod:`t7synth.training.memory`)."""

from __future__ import annotations


def model_summary(config, world: int | None = None) -> str:
    """The ``--summary`` text.

    Args:
        config: the resolved config.
        world: the GPUs the run would use (``--gpus`` x ``--nodes``), or ``None`` to plan
            for 1, 2, 4 and 8.
    """
    from t7synth import registry
    from t7synth.training.memory import summary_lines

    # On the meta device nothing is allocated: the 259M-parameter paper net counts in
    # milliseconds and without a gigabyte of memory.
    model = registry.build_on_meta(config)
    count = sum(p.numel() for p in model.generator().parameters() if p.requires_grad)
    geometry = config.geometry
    if geometry.mode == "slab":
        inplane = "x".join(map(str, geometry.inplane)) if geometry.inplane else "full in-plane"
        shape = (
            f"2.5D slab: {geometry.slices} slices along axis {geometry.axis} ({inplane}), target: "
            f"{geometry.target} slice(s)"
        )
    else:
        shape = f"3D patch: {'x'.join(map(str, geometry.patch))}, inference overlap {geometry.overlap}"
    lines = [f"model: {config.model.name}", f"parameters: {count}", f"geometry: {shape}", *summary_lines(config, world)]
    return "\n".join(lines)
