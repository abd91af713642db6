"""Slice montages: 3T | synthetic 7T | 7T | absolute error, in three orientations.

People judge synthesis by eye before they read numbers, so every validation, test and
evaluation writes one. Volumes are RAS+ arrays (i: left→right, j: posterior→anterior,
k: inferior→superior); slices are shown in radiological-free neurological view with
superior/anterior up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ERROR_MAX = 0.25


def _centre(mask: np.ndarray | None, shape) -> tuple[int, int, int]:
    if mask is None or not mask.any():
        return tuple(s // 2 for s in shape)
    indices = np.nonzero(mask)
    return tuple(int((idx.min() + idx.max()) // 2) for idx in indices)


def _views(volume: np.ndarray, centre) -> list[np.ndarray]:
    i, j, k = centre
    return [volume[:, :, k].T, volume[:, j, :].T, volume[i, :, :].T]


def _as_array(x) -> np.ndarray | None:
    if x is None:
        return None
    x = x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float32)
    return np.squeeze(x)


def save_montage(
    path: str | Path,
    source,
    prediction,
    target,
    mask=None,
    title: str = "",
) -> Path:
    """Write a montage PNG atomically and return its path.

    Args:
        path: output file (``.png``).
        source, prediction, target: (I, J, K) arrays or tensors in [0, 1];
            ``prediction`` may be ``None`` (then only 3T, 7T and their difference).
        mask: optional brain mask; the slices go through the brain's centre.
        title: figure title (subject, epoch, scores).
    """
    source, prediction, target = map(_as_array, (source, prediction, target))
    shown = prediction if prediction is not None else source
    columns = [("3T input", source, "gray", 1.0), ("synthetic 7T", prediction, "gray", 1.0), ("7T target", target, "gray", 1.0),
               ("|synthetic − 7T|", np.abs(np.clip(shown, 0, 1) - target), "magma", ERROR_MAX)]
    return save_panels(path, [c for c in columns if c[1] is not None], mask, title)


def save_panels(path: str | Path, columns, mask=None, title: str = "") -> Path:
    """Write a PNG of axial, coronal and sagittal slices (rows) of several volumes
    (columns) atomically and return its path; :func:`save_montage` is one use of it.

    Args:
        path: output file (``.png``).
        columns: ``(label, volume, cmap, vmax)`` per column; volumes are (I, J, K)
            arrays or tensors on one grid, shown from 0 to ``vmax``.
        mask: optional brain mask; the slices go through the brain's centre.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from t7synth.files import atomic_path

    columns = [(label, _as_array(volume), cmap, vmax) for label, volume, cmap, vmax in columns]
    centre = _centre(_as_array(mask), columns[0][1].shape)
    figure, axes = plt.subplots(3, len(columns), figsize=(2.6 * len(columns), 7.8), squeeze=False)
    for col, (label, volume, cmap, vmax) in enumerate(columns):
        for row, view in enumerate(_views(volume, centre)):
            axis = axes[row][col]
            axis.imshow(view, cmap=cmap, vmin=0, vmax=vmax, origin="lower", interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(label, fontsize=10)
    for row, name in enumerate(("axial", "coronal", "sagittal")):
        axes[row][0].set_ylabel(name, fontsize=10)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=80)
    plt.close(figure)
    return path
