"""Image scores of a synthetic volume against its 7T target: whole volume and in-brain.

All scores take volumes scaled to [0, 1] as in training (``data_range`` 1) and are
computed in float32 whatever the training precision. Prediction and target are
clamped to [0, 1] first: a linear output head may overshoot, and volumes normalised
with ``data.normalisation: authors`` extend beyond [0, 1] (negative background, 1 %
tails); clamped, they are exactly the ``clip`` volumes (``docs/data.md``), so both
modes score on one scale.

* ``psnr``: torchmetrics' PSNR over every voxel.
* ``ssim``: 3D SSIM with a Gaussian window (sigma 1.5, 11 voxels), averaged over the
  voxels at least 5 from the border, which is what scikit-image's
  ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``
  reports. The SSIM map is computed here (:func:`ssim_map`), with the Gaussian
  window applied as three 1-D filters: the window is a product of 1-D Gaussians, so
  this is the same filter as torchmetrics' dense 11x11x11 convolution at 33 instead of
  1,331 taps per voxel (5-20x faster on a demo volume), in float64.
* ``psnr_brain``: PSNR of the voxels inside the brain mask.
* ``ssim_brain``: the same SSIM map averaged inside the brain mask (the authors
  instead flattened the brain voxels to a 1-D signal; see ``docs/metrics.md``).
* ``mae``: mean absolute error over the whole volume.

The SSIM map equals scikit-image's ``full=True`` map at every voxel, border included:
scikit-image filters with SciPy's ``reflect`` mode (edge voxel repeated), whereas
PyTorch's ``reflect`` padding leaves the edge voxel out. Padding the volumes in
SciPy's way makes the two agree, so an in-brain SSIM of a
mask that reaches the border is scikit-image's too (``tests/inference/test_metric_parity.py``).
Autocast is switched off while scoring, so bf16-mixed validation and test steps score
in float32 like everything else.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio

SSIM_SIGMA = 1.5
SSIM_KERNEL = 11
NAMES = ("psnr", "ssim", "psnr_brain", "ssim_brain", "mae")


def _pad_symmetric(volume: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad every dim by ``pad`` mirroring the edge voxel too (SciPy's ``reflect`` mode)."""
    for dim in range(volume.ndim):
        size = volume.shape[dim]
        # Tile mirrored copies first so volumes thinner than ``pad`` still pad as SciPy does.
        while size < pad:
            volume = torch.cat([volume, volume.flip(dim)], dim)
            size = volume.shape[dim]
        before = volume.narrow(dim, 0, pad).flip(dim)
        after = volume.narrow(dim, volume.shape[dim] - pad, pad).flip(dim)
        volume = torch.cat([before, volume, after], dim)
    return volume


def ssim_map(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Voxel-wise 3D SSIM of two (I, J, K) volumes (float32, data range 1).

    Wang et al. (2004), eq. 13, with Gaussian-weighted local means, variances and
    covariance (population form, as scikit-image's ``use_sample_covariance=False``)
    and C1 = (0.01 L)^2, C2 = (0.03 L)^2. The window is scikit-image's and
    torchmetrics': exp(-d^2 / 2 sigma^2) for d = -5 .. 5, normalised, applied along
    each axis in turn (a 3D Gaussian is separable). Moments in float64: local variances
    are differences of nearly equal numbers. Equal to scikit-image's full SSIM map,
    border voxels included (see the module docstring for the padding).
    """

    pad = (SSIM_KERNEL - 1) // 2
    offsets = torch.arange(SSIM_KERNEL, dtype=torch.float64) - pad
    taps = torch.exp(-0.5 * (offsets / SSIM_SIGMA) ** 2)
    taps = taps / taps.sum()
    x = _pad_symmetric(prediction.double(), pad)
    y = _pad_symmetric(target.double(), pad)
    moments = torch.stack([x, y, x * x, y * y, x * y])[:, None]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = SSIM_KERNEL
        moments = F.conv3d(moments, taps.reshape(shape))  # valid: the padding is consumed
    mean_x, mean_y, xx, yy, xy = moments[:, 0]
    c1, c2 = 0.01**2, 0.03**2
    var_x, var_y, cov = xx - mean_x * mean_x, yy - mean_y * mean_y, xy - mean_x * mean_y
    ssim = ((2 * mean_x * mean_y + c1) * (2 * cov + c2)) / (
        (mean_x * mean_x + mean_y * mean_y + c1) * (var_x + var_y + c2)
    )
    return ssim.float()


def psnr(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB with peak 1, over all voxels or those inside ``mask``."""

    if mask is None:
        return float(peak_signal_noise_ratio(prediction.float(), target.float(), data_range=1.0))
    inside = mask > 0
    mse = torch.mean((prediction.float()[inside] - target.float()[inside]) ** 2)
    return float("inf") if float(mse) == 0 else -10.0 * math.log10(float(mse))


def volume_scores(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """All scores of one volume (tensors of shape (I, J, K), or with leading 1s).

    Returns:
        ``{"psnr", "ssim", "psnr_brain", "ssim_brain", "mae"}`` as floats.
    """
    prediction = prediction.detach().float().squeeze().clamp(0, 1).cpu()
    target = target.detach().float().squeeze().clamp(0, 1).cpu()
    mask = mask.detach().squeeze().cpu() > 0
    # Validation and test steps run inside Lightning's autocast: under bf16-mixed the
    # SSIM convolutions would run in bf16 (an error of ~0.01 in SSIM) despite the
    # .float() above, so autocast is switched off here.
    with torch.autocast(device_type="cpu", enabled=False):
        return _scores(prediction, target, mask)


def _scores(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    full = ssim_map(prediction, target)
    pad = (SSIM_KERNEL - 1) // 2
    interior = full[pad:-pad, pad:-pad, pad:-pad] if min(full.shape) > 2 * pad else full
    return {
        "psnr": psnr(prediction, target),
        "ssim": float(interior.mean()),
        "psnr_brain": psnr(prediction, target, mask),
        "ssim_brain": float(full[mask].mean()),
        "mae": float(torch.mean(torch.abs(prediction - target))),
    }


# -- the SSIM forms the authors reported (evaluate --ssim authors) ---------------------
#: scikit-image's ``structural_similarity`` defaults: a uniform window of 7 voxels per
#: axis, sample (N - 1) covariances, K1 0.01, K2 0.03.
SKIMAGE_WINDOW = 7
#: The columns ``evaluate --ssim authors`` adds (registered in ``scores.COLUMNS``).
AUTHORS_SSIM_NAMES = ("ssim_skimage", "ssim_brain_flat")
#: Output slices of axis 0 filtered at once, which bounds memory on full-size volumes.
_CHUNK = 32


def skimage_ssim(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """``skimage.metrics.structural_similarity(target, prediction, data_range=1)`` with
    every other argument at its default, for 1-D to 3-D arrays, in float64.

    scikit-image filters with a 7-voxel box (SciPy's ``uniform_filter``, ``reflect``
    borders), forms the SSIM map (Wang et al. 2004, eq. 13) from sample covariances,
    and averages it over the voxels at least 3 from every border: exactly those whose
    window lies inside the array, so a filter without padding ("valid") gives the same
    mean and the border mode never matters. Filtering runs over slabs of the first
    axis to keep memory bounded.

    Raises:
        ValueError: an axis shorter than the window (scikit-image refuses it too).
    """

    x, y = prediction.detach().double().cpu(), target.detach().double().cpu()
    if x.shape != y.shape or not 1 <= x.ndim <= 3:
        raise ValueError(
            f"expected two arrays of one shape with 1 to 3 axes, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if min(x.shape) < SKIMAGE_WINDOW:
        raise ValueError(
            f"every axis must have at least {SKIMAGE_WINDOW} voxels for scikit-image's SSIM window, got "
            f"{tuple(x.shape)}"
        )
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[x.ndim - 1]
    n = SKIMAGE_WINDOW**x.ndim
    cov_norm = n / (n - 1)
    c1, c2 = 0.01**2, 0.03**2
    total, count = 0.0, 0
    for start in range(0, x.shape[0] - SKIMAGE_WINDOW + 1, _CHUNK):
        part = slice(start, start + _CHUNK + SKIMAGE_WINDOW - 1)
        a, b = x[part][None, None], y[part][None, None]

        def mean(v: torch.Tensor) -> torch.Tensor:
            return pool(v, SKIMAGE_WINDOW, stride=1)

        ux, uy = mean(a), mean(b)
        vx = cov_norm * (mean(a * a) - ux * ux)
        vy = cov_norm * (mean(b * b) - uy * uy)
        vxy = cov_norm * (mean(a * b) - ux * uy)
        ssim = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
        total += float(ssim.sum())
        count += ssim.numel()
    return total / count


def authors_ssim_scores(prediction: torch.Tensor, target: torch.Tensor, axis: int = 0) -> dict[str, float]:
    """The two SSIM forms of the authors' evaluation (``LoadingModel.py``'s test block).

    * ``ssim_skimage``: :func:`skimage_ssim` of the whole volume (their ``SSIM``).
    * ``ssim_brain_flat``: their ``SSIM_brain``. Both volumes are flattened with the
      slice ``axis`` outermost (their volumes were slice stacks), the voxels where the
      target is above 0 kept, and the two 1-D signals passed to :func:`skimage_ssim`.
      Its window slides along the flattened order, so neighbours are partly spatial,
      partly not: not a spatial SSIM, and not comparable with ``ssim_brain``.

    Prediction and target are clamped to [0, 1] as in :func:`volume_scores`.

    Args:
        prediction, target: (I, J, K) volumes, or with leading 1s.
        axis: the model's slice axis (0 for 3D models).
    """
    prediction = prediction.detach().float().squeeze().clamp(0, 1).cpu()
    target = target.detach().float().squeeze().clamp(0, 1).cpu()
    with torch.autocast(device_type="cpu", enabled=False):
        flat_prediction, flat_target = prediction.movedim(axis, 0).flatten(), target.movedim(axis, 0).flatten()
        inside = flat_target > 0
        return {
            "ssim_skimage": skimage_ssim(prediction, target),
            "ssim_brain_flat": skimage_ssim(flat_prediction[inside], flat_target[inside]),
        }
