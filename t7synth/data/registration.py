"""Rigid 3T-to-7T registration with SimpleITK, and the measures ``prepare``'s QC reports.

Arrays here are nibabel-style (I, J, K) with RAS affines; :func:`to_sitk` and
:func:`from_sitk` convert to ITK's (K, J, I) LPS images and back.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from t7synth.errors import UserError

# Registration settings (see :func:`register_rigid`).
#: Random metric samples per resolution level: the cost of an iteration does not grow
#: with the image, and 20k samples fill a 32-bin joint histogram densely.
METRIC_SAMPLES = 20_000
HISTOGRAM_BINS = 32
#: The coarsest level keeps at least this many voxels along the shortest axis.
MIN_LEVEL_VOXELS = 12
SHRINK_FACTORS = (8, 4, 2, 1)
MAX_ITERATIONS = 200


def to_sitk(array: np.ndarray, affine: np.ndarray):
    """A SimpleITK image of an (I, J, K) array with a nibabel (RAS) affine.

    ITK indexes arrays the other way round (K, J, I) and measures in LPS, so the first
    two world axes change sign; spacing is the column norm and direction the rest.
    """

    affine = np.asarray(affine, dtype=np.float64)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array, dtype=np.float32).transpose(2, 1, 0)))
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    image.SetSpacing(spacing.tolist())
    image.SetOrigin((ras_to_lps @ affine[:3, 3]).tolist())
    image.SetDirection((ras_to_lps @ affine[:3, :3] / spacing).flatten().tolist())
    return image


def from_sitk(image) -> np.ndarray:
    """The (I, J, K) float32 array of a SimpleITK image made by :func:`to_sitk`."""

    return np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0), dtype=np.float32)


def register_rigid(fixed, moving, what: str):
    """Rigidly register ``moving`` (3T) to ``fixed`` (7T) with SimpleITK.

    Why SimpleITK and not ANTs (antspyx): SimpleITK is already installed with TorchIO,
    which t7synth depends on, and its ITK v4 registration framework is the same code
    ANTs builds on. antspyx 0.6.3 installs in about 15 s (about 90 MB) but pins
    ``numpy<2.4`` and ``scipy<1.16``, downgrading the rest of the stack.

    Method, the usual one for two scans of the same head with different contrast:

    - metric: Mattes mutual information (32 bins), because 3T and 7T intensities are
      related but not linearly (contrast, bias field);
    - transform: Euler (3 rotations, 3 translations) about the 7T's centre of mass;
    - start: scanner coordinates, or the two scans' centres of mass aligned, whichever
      the metric prefers (scanner coordinates fail when a site moves its origin,
      centres of mass when the fields of view differ a lot, e.g. a neck in the 3T);
    - multi-resolution: shrink by 8, 4, 2, 1 (levels coarser than 12 voxels are left
      out), Gaussian smoothing of half the shrink factor; a fixed number of random
      samples per level (seeded, so re-runs with the same thread count agree), with
      gradients computed at the samples only, so an iteration costs the same at any
      resolution (about 4.5 s for a 0.8 mm 7T on one core);
    - optimiser: regular-step gradient descent with parameter scales from physical
      shifts (a step of 1 moves some voxel by about 1 mm).

    Returns:
        ``(transform, start)``: an ``Euler3DTransform`` mapping 7T points to 3T points
        (LPS mm, what resampling needs) and ``"scanner"`` or ``"centre of mass"``.

    Args:
        what: names the pair in the error message (subject and files).

    Raises:
        UserError: when ITK gives up (e.g. the scans share too little).
    """

    size = np.asarray(fixed.GetSize())
    factors = [f for f in SHRINK_FACTORS if f == 1 or size.min() / f >= MIN_LEVEL_VOXELS]
    voxels = float(np.prod(size))
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentagePerLevel([min(1.0, METRIC_SAMPLES * f**3 / voxels) for f in factors], 0)
    method.SetShrinkFactorsPerLevel(factors)
    method.SetSmoothingSigmasPerLevel([f / 2 if f > 1 else 0 for f in factors])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInterpolator(sitk.sitkLinear)
    # Gradients at the samples only, not as whole gradient images of every level:
    # with sparse sampling this is several times faster on 7T-sized volumes.
    method.MetricUseFixedImageGradientFilterOff()
    method.MetricUseMovingImageGradientFilterOff()
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0,
        minStep=1e-4,
        numberOfIterations=MAX_ITERATIONS,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    try:
        transform, start = _initial_transform(fixed, moving, factors[0])
        method.SetInitialTransform(transform, inPlace=True)
        method.Execute(fixed, moving)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise UserError(f"{what}: registration failed ({reason}); check that both show the same head") from None
    return transform, start


def _initial_transform(fixed, moving, shrink: int):
    """The better of two starts by the registration metric on the coarsest level
    (both images block-averaged by ``shrink``): scanner coordinates, or the centres of
    mass aligned. Both rotate about the 7T's centre of mass."""

    moments = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    moments = sitk.Euler3DTransform(moments)
    scanner = sitk.Euler3DTransform()
    scanner.SetCenter(moments.GetCenter())
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    small_fixed, small_moving = sitk.BinShrink(fixed, [shrink] * 3), sitk.BinShrink(moving, [shrink] * 3)
    method.SetMetricSamplingPercentage(min(1.0, METRIC_SAMPLES / float(np.prod(small_fixed.GetSize()))), 0)
    method.SetInterpolator(sitk.sitkLinear)
    scores = {}
    for name, candidate in (("scanner", scanner), ("centre of mass", moments)):
        method.SetInitialTransform(candidate, inPlace=False)
        try:
            scores[name] = method.MetricEvaluate(small_fixed, small_moving)
        except RuntimeError:  # no overlap at all from this start
            scores[name] = np.inf
    start = min(scores, key=scores.get)  # Mattes MI is negated: lower is better
    return (scanner if start == "scanner" else moments), start


def resample_onto(moving, fixed, transform, interpolator) -> np.ndarray:
    """``moving`` sampled on ``fixed``'s grid through ``transform`` (fixed -> moving),
    as an (I, J, K) float32 array; outside ``moving`` is 0.

    B-spline interpolation overshoots at edges; negative values are clipped because
    magnitude images have none.
    """

    image = sitk.Resample(moving, fixed, transform, interpolator, 0.0, sitk.sitkFloat32)
    return np.maximum(from_sitk(image), 0.0)


# -- quality control ---------------------------------------------------------------------
def head_region(target: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Where QC looks: the brain mask if there is one, else the 7T voxels above 10 % of
    its 99th percentile (the head, without the air around it)."""
    if mask is not None:
        return mask > 0
    if not (target > 0).any():  # an unusual scale (all negative): above the minimum
        return target > target.min()
    return target > 0.1 * np.percentile(target[target > 0], 99)


def correlation(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    """Pearson's r of two volumes inside ``region`` (0 when either is constant there).

    Correlation is a conservative check across field strengths (contrast differs), but
    it rises when the same anatomy is aligned, which is all QC asks of it.
    """
    x, y = a[region].astype(np.float64), b[region].astype(np.float64)
    x, y = x - x.mean(), y - y.mean()
    norm = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / norm) if norm > 0 else 0.0


def describe_motion(transform, region: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, float]:
    """The registration in two human numbers: where the 7T head's centre lies in the
    3T's scanner coordinates relative to where it lies in the 7T's (mm, RAS), and the
    rotation angle (degrees; the same in RAS and LPS)."""
    centre_index = np.argwhere(region).mean(axis=0)
    centre = affine[:3, :3] @ centre_index + affine[:3, 3]
    ras_to_lps = np.array([-1.0, -1.0, 1.0])
    moved = np.asarray(transform.TransformPoint(tuple((centre * ras_to_lps).tolist()))) * ras_to_lps
    matrix = np.asarray(transform.GetMatrix()).reshape(3, 3)
    angle = np.degrees(np.arccos(np.clip((np.trace(matrix) - 1) / 2, -1.0, 1.0)))
    return moved - centre, float(angle)
