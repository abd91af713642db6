"""Whole-volume inference against the references: 3D tiling against MONAI's
``sliding_window_inference`` (same V-Net, ROI, overlap and Hann window), 2.5D tiling
against a plain batched slice loop (same U-Net and batch).

Time: the two run interleaved in this process (fp32, no autograd). Peak memory: each
runs alone in a fresh process (``python benchmarks/inference.py --peak VARIANT``) that
builds the model, reads one demo volume and predicts it once; the prediction's peak
above the process's resident size before it is compared (medians of three processes;
the whole process's peak is printed beside it, see ``common``). Run:
``python benchmarks/inference.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import common
import torch

VARIANTS = ("ours3d", "monai3d", "ours2d", "plain2d")


def setup(kind: str):
    """(predictor, volume, config) for ``3d`` (demo V-Net) or ``2d`` (demo U-Net)."""
    from t7synth import registry

    config = common.demo_config("vnet" if kind == "3d" else "unet")
    torch.manual_seed(0)
    model = registry.get(config.model.name)(config.to_dict()).eval()
    subject = common.demo_subject(config, "val")
    volume = subject["source"].data.float()
    from t7synth.data.batches import SUBJECT_KEYS

    meta = {key: float(subject[key]) for key in SUBJECT_KEYS}
    return model, volume, meta, config


def ours(model, volume, meta, config):
    return model.predict_subject(volume, meta)


def monai_3d(model, volume, meta, config):
    from monai.inferers import sliding_window_inference

    from t7synth.models.tiling import hann_window, patch_grid

    roi, overlap = patch_grid(config.geometry, volume.shape[1:])
    weight = (
        hann_window(roi[0])[:, None, None] * hann_window(roi[1])[None, :, None] * hann_window(roi[2])[None, None, :]
    )
    # MONAI's stride is int(roi * (1 - overlap)); half a voxel less overlap keeps it
    # exactly roi - overlap despite float rounding.
    fractions = [(o - 0.5) / r if o else 0.0 for o, r in zip(overlap, roi)]
    with torch.no_grad():
        return sliding_window_inference(
            volume[None],
            roi,
            config.data.inference_batch_size,
            lambda x: model(x),
            overlap=fractions,
            roi_weight_map=weight,
        )[0]


def plain_2d(model, volume, meta, config):
    """What a user would write: pad the slab axis, cut k-slice windows, predict, keep the centre."""
    from t7synth.data import batches

    axis, k = config.geometry.axis, config.geometry.slices
    half, size = k // 2, config.data.inference_batch_size
    along = volume[0].movedim(axis, 0)
    padded = torch.nn.functional.pad(along, (0, 0, 0, 0, half, half))
    output = torch.zeros_like(along)
    n = along.shape[0]
    with torch.no_grad():
        for first in range(0, n, size):
            centres = range(first, min(first + size, n))
            x = torch.stack([padded[c : c + k] for c in centres])
            batch = {"location": torch.zeros(len(x), 6, dtype=torch.long)}
            batch["location"][:, axis] = torch.tensor(list(centres)) - half
            batch.update({key: torch.full((len(x),), value) for key, value in meta.items()})
            batch["source"] = batches.channels_to_slab(x, axis)
            net_x, context = model.net_input(batch)
            output[first : first + len(x)] = model(net_x, context)[:, 0]
    return output.movedim(0, axis)[None]


def run(repeats: int = 3) -> dict:
    """Times (interleaved) and peak memories (fresh processes) of both comparisons."""
    results = {}
    for kind, reference_name, reference in (
        ("3d", "MONAI sliding_window_inference", monai_3d),
        ("2d", "plain batched slice loop", plain_2d),
    ):
        model, volume, meta, config = setup(kind)
        with torch.no_grad():
            difference = float((ours(model, volume, meta, config) - reference(model, volume, meta, config)).abs().max())
        arguments = (model, volume, meta, config)
        outside = {"ours": [], "reference": []}  # seconds per call outside the network
        network = _network_clock(model)
        timings = common.interleaved(
            {
                "ours": lambda a=arguments, n=network, o=outside: _outside(n, o["ours"], ours, a),
                "reference": lambda a=arguments, f=reference, n=network, o=outside: _outside(n, o["reference"], f, a),
            },
            repeats,
        )
        peaks = {
            variant: common.peak_rss(__file__, "--peak", variant)
            for variant in (f"ours{kind}", f"{'monai' if kind == '3d' else 'plain'}{kind}")
        }
        ours_peak, reference_peak = peaks.values()  # common.Peak each
        results[kind] = {
            "reference": reference_name,
            "ours_s": timings["ours"].median,
            "reference_s": timings["reference"].median,
            "time_ratio": common.ratio(timings["ours"], timings["reference"]),
            "ours_peak": ours_peak,
            "reference_peak": reference_peak,
            "peak_ratio": ours_peak.call / reference_peak.call,
            "max_difference": difference,
            # The tiling's own cost: both sides run the same windows through the same
            # network, so the time ratio is the network's noise unless this differs.
            "ours_outside_s": statistics.median(outside["ours"][-repeats:]),
            "reference_outside_s": statistics.median(outside["reference"][-repeats:]),
            "shape": tuple(volume.shape[1:]),
        }
    return results


def _network_clock(model) -> list[float]:
    """Make ``model``'s forward add its seconds to the returned one-element list."""
    spent = [0.0]
    forward = model.forward

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return forward(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    model.forward = timed  # an instance attribute: nn.Module.__call__ finds it first
    return spent


def _outside(network: list[float], record: list[float], function, arguments) -> None:
    """Run ``function(*arguments)``; append its seconds outside the network to ``record``."""
    network[0] = 0.0
    start = time.perf_counter()
    function(*arguments)
    record.append(time.perf_counter() - start - network[0])


def _peak(variant: str) -> None:
    kind = variant[-2:]
    model, volume, meta, config = setup(kind)
    function = {"ours3d": ours, "monai3d": monai_3d, "ours2d": ours, "plain2d": plain_2d}[variant]
    common.start_peak()
    with torch.no_grad():
        function(model, volume, meta, config)
    common.report_peak(variant=variant)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peak", choices=VARIANTS, help="run one variant once and print its peak RSS (used by run())")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.peak:
        _peak(args.peak)
        return
    for kind, result in run(args.repeats).items():
        print(
            f"{kind}: ours {result['ours_s']:.2f} s, {result['reference']} {result['reference_s']:.2f} s "
            f"(x{result['time_ratio']:.3f}; outside the network {1000 * result['ours_outside_s']:.0f} vs "
            f"{1000 * result['reference_outside_s']:.0f} ms); prediction's peak "
            f"{result['ours_peak'].call / common.MIB:.0f} vs "
            f"{result['reference_peak'].call / common.MIB:.0f} MiB (x{result['peak_ratio']:.3f}); max |difference| "
            f"{result['max_difference']:.2e}"
        )


if __name__ == "__main__":
    sys.exit(main())
