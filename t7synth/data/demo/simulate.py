"""The demo dataset: paired 3T/7T subjects simulated from the MNI152 template.

No paired 3T/7T data ships with any package, so the demo builds its own from the one
real brain that does: the skull-stripped MNI ICBM152 2009a T1 template (1 mm) inside
``nilearn``. Every subject is

1. **anatomy**: the template pulled through a random affine and a random smooth
   (cubic B-spline) deformation onto a fixed grid of ``voxel_size`` mm centred on the
   brain;
2. **7T target**: that anatomy plus 1 % Gaussian noise;
3. **3T source**: the same anatomy through a field-strength forward model: grey/white
   contrast compression, blur (anisotropic), a smooth multiplicative bias field and
   Rician noise, each with a per-subject random strength;
4. **tissue truth**: the template's grey- and white-matter probability maps (also in
   ``nilearn``) pulled through the same coordinates as the anatomy, cerebrospinal
   fluid as the brain mask's remainder, and their most probable class as labels.

Both images are zero outside the brain mask, as after the real pipeline's skull
stripping. The parameter ranges are the module constants below; ``docs/data.md``
tabulates them and every subject's draw is written to ``simulation.tsv``.

Determinism is a contract: the same ``seed`` gives byte-identical files. Each
subject draws from its own generator spawned from the seed, so ``sub-003`` is the
same subject whether 3 or 30 are generated, and its anatomy is the same at every
voxel size (the deformation lives on a fixed millimetre grid). All arithmetic is
single-threaded NumPy/SciPy (no BLAS, whose thread-dependent summation order could
change the last bits) and the gzip streams carry no timestamp or file name.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from nilearn import datasets
from scipy import ndimage
from tqdm.auto import tqdm

from t7synth.data import naming
from t7synth.data.volumes import write_nifti
from t7synth.errors import UserError
from t7synth.files import atomic_dir
from t7synth.textfiles import read_json

#: Bump whenever the generated files would change; it is part of the cache folder name,
#: so an old cache is never mistaken for the current forward model. ``f4`` added the
#: tissue maps; its 3T, 7T and mask files are byte-identical to ``f3``'s.
FORMAT_VERSION = "f4"

#: Per-subject table of the drawn forward-model parameters.
SIMULATION_TSV = "simulation.tsv"
#: Written last into every generated folder; identifies it and its settings.
DESCRIPTION_JSON = "dataset_description.json"

MIN_SUBJECTS = 3
#: Finer than the template's 1 mm adds no anatomy, only memory; coarser than 6 mm
#: leaves too few voxels for a brain.
VOXEL_SIZE_RANGE = (1.0, 6.0)

# --- anatomy -------------------------------------------------------------------------
ROTATION_DEG = 8.0  # each axis, uniform in [-8, 8]
SCALING = 0.06  # each axis, uniform in [0.94, 1.06]
TRANSLATION_MM = 2.0  # each axis, uniform in [-2, 2]
DEFORM_MM = (2.0, 4.0)  # per-subject bound on each control point's displacement
CONTROL_SPACING_MM = 30.0  # B-spline control-point spacing of the deformation
#: How far (mm) from the brain centre any brain the ranges above can produce may
#: reach along x, y, z: the worst case over all rotations with the smallest scaling,
#: largest shift and largest deformation is 88.8, 106.4, 94.8 mm (a test checks it).
#: Every grid's voxel centres reach at least this far, so no brain is ever cropped.
BRAIN_HALF_EXTENT_MM = (89.0, 106.5, 95.0)
SHAPE_MULTIPLE = 8

# --- 7T target -----------------------------------------------------------------------
TARGET_NOISE = 0.01  # Gaussian sigma as a fraction of the in-brain 99th percentile

# --- 3T forward model ----------------------------------------------------------------
CONTRAST_G = (1.2, 1.5)  # source = anatomy ** (1 / g): compresses grey/white contrast
#: Slope of the remap above the knee (grey matter up to white matter); below it the
#: slope is 1. A power law alone is nearly linear over brain intensities, so min-max
#: scaling undoes most of it; this knee is what makes 3T grey/white contrast visibly
#: flatter, and what an intensity lookup table can (and should) undo.
GREY_WHITE_SLOPE = (0.3, 0.45)
#: In-brain percentile of the knee: CSF and deep grey matter lie below it.
KNEE_PERCENTILE = 30.0
BLUR_SIGMA_VOX = (0.6, 1.0)  # Gaussian sigma in voxels on the two in-plane axes
BLUR_AXIS_FACTOR = (1.5, 2.0)  # times that sigma along one random (slice) axis
BIAS_AMPLITUDE = (0.2, 0.3)  # multiplier 1 + a * field, field in [-1, 1] in the brain
BIAS_ORDER = 3  # total degree of the bias polynomial
NOISE_SIGMA = (0.02, 0.04)  # Rician sigma as a fraction of the in-brain 99th percentile

# --- tissue truth ----------------------------------------------------------------------
PROBSEG_STEPS = 255  # probabilities are stored as uint8 / 255, as the template's maps are

# --- participants ----------------------------------------------------------------------
AGE_YEARS = (55, 80)  # inclusive, integers
GROUP = "CU"  # cognitively unimpaired: the template is a healthy-adult average


class Template(NamedTuple):
    """The MNI152 template: intensities in [0, 1], brain mask, voxel-to-mm affine, and
    the grey- and white-matter probability maps on the same grid (``None`` if not loaded)."""

    image: np.ndarray  # float32
    mask: np.ndarray  # uint8
    affine: np.ndarray  # 4x4
    centre_mm: np.ndarray  # centre of the brain's bounding box, in mm
    gm: np.ndarray | None = None  # float32, [0, 1]
    wm: np.ndarray | None = None  # float32, [0, 1]


class Grid(NamedTuple):
    """A voxel grid: its shape and its voxel-to-mm (RAS) affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray


@dataclass(frozen=True)
class SubjectParameters:
    """One subject's random draw; every field is a column of ``simulation.tsv``.

    Values are rounded when drawn and used exactly as rounded, so the table is the
    truth about each subject rather than an approximation of it.
    """

    participant_id: str
    rot_x_deg: float
    rot_y_deg: float
    rot_z_deg: float
    scale_x: float
    scale_y: float
    scale_z: float
    shift_x_mm: float
    shift_y_mm: float
    shift_z_mm: float
    deform_mm: float
    contrast_g: float
    grey_white_slope: float
    blur_sigma_vox: float
    blur_axis: int
    blur_axis_factor: float
    bias_amplitude: float
    noise_sigma: float
    target_noise: float


@dataclass(frozen=True)
class Participant:
    """One row of ``participants.tsv``."""

    participant_id: str
    age: int
    sex: str
    group: str
    split: str


# ---------------------------------------------------------------------------------------
# public entry point


def simulate_dataset(
    out_dir: Path,
    n_subjects: int = 20,
    seed: int = 0,
    voxel_size: float = 1.5,
    progress: bool = True,
) -> Path:
    """Write a complete simulated dataset folder (layout of :mod:`t7synth.data.naming`).

    The folder is built in a temporary sibling and renamed onto ``out_dir`` only when
    every file is written, so an interrupted run leaves nothing a later run would
    trust. An existing ``out_dir`` is replaced; callers that must not clobber user
    data check first (see :func:`t7synth.data.demo.cache.ensure_demo_dataset`).

    Subjects are ``sub-001`` ... ``sub-NNN``. Splits (by subject, in label order): with
    6 or more subjects the last 2 are ``test``, the 2 before them ``val`` and the rest
    ``train``; with 3 to 5 subjects the last one is ``test``, the one before ``val``.

    Args:
        out_dir: the dataset folder to create.
        n_subjects: how many subjects, at least 3 (one per split).
        seed: any non-negative integer; the same seed gives byte-identical files.
        voxel_size: isotropic spacing of the output grid in mm, 1 to 6.
        progress: show a progress bar over subjects (on stderr).

    Returns:
        ``out_dir``.

    Raises:
        UserError: for a parameter out of range.
    """
    check_parameters(n_subjects, seed, voxel_size)
    out_dir = Path(out_dir)
    template = load_template()
    grid = demo_grid(voxel_size, template.centre_mm)
    seeds = np.random.SeedSequence(seed).spawn(n_subjects)
    labels = subject_labels(n_subjects)
    participants: list[Participant] = []
    parameters: list[SubjectParameters] = []
    with atomic_dir(out_dir) as tmp:
        for index in _progress(range(n_subjects), progress):
            rng = np.random.default_rng(seeds[index])
            participant, params = simulate_subject(tmp, labels[index], split_of(index, n_subjects), template, grid, rng)
            participants.append(participant)
            parameters.append(params)
        _write_tsv(tmp / naming.PARTICIPANTS, [asdict(p) for p in participants])
        write_tissue_table(tmp / naming.DSEG_TABLE)
        _write_tsv(tmp / SIMULATION_TSV, [asdict(p) for p in parameters])
        _write_description(tmp / DESCRIPTION_JSON, n_subjects, seed, voxel_size, grid)
        # mkdtemp makes the folder private (0700); give it the mode every ordinary
        # folder inside it got from the umask, so a shared cache stays readable.
        os.chmod(tmp, (tmp / labels[0]).stat().st_mode & 0o777)
    return out_dir


def check_parameters(n_subjects: int, seed: int, voxel_size: float) -> None:
    """Raise :class:`UserError` with one clear line for an unusable parameter."""
    if isinstance(n_subjects, bool) or not isinstance(n_subjects, (int, np.integer)):
        raise UserError(f"number of subjects must be an integer, got {n_subjects!r}")
    if n_subjects < MIN_SUBJECTS:
        raise UserError(
            f"number of subjects must be at least {MIN_SUBJECTS} (one each for train, val and test), got {n_subjects}"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    low, high = VOXEL_SIZE_RANGE
    if not isinstance(voxel_size, (int, float)) or not math.isfinite(voxel_size) or not low <= voxel_size <= high:
        raise UserError(f"voxel size must be between {low:g} and {high:g} mm, got {voxel_size!r}")


def subject_labels(n_subjects: int) -> list[str]:
    """``sub-001`` ... ``sub-NNN``; a label never depends on how many are generated."""
    return [f"sub-{i:03d}" for i in range(1, n_subjects + 1)]


def split_of(index: int, n_subjects: int) -> str:
    """The split of the subject at ``index`` (0-based): the last ones are held out."""
    held_out = 2 if n_subjects >= 6 else 1
    if index >= n_subjects - held_out:
        return "test"
    if index >= n_subjects - 2 * held_out:
        return "val"
    return "train"


# ---------------------------------------------------------------------------------------
# one subject


def simulate_subject(
    root: Path,
    label: str,
    split: str,
    template: Template,
    grid: Grid,
    rng: np.random.Generator,
) -> tuple[Participant, SubjectParameters]:
    """Draw, simulate and write one subject's files; return its table rows.

    All fixed-size draws come before the noise draws (whose size depends on the brain
    mask), so a subject's parameters never depend on the voxel size. The tissue maps
    draw nothing: they follow the anatomy's coordinates exactly.
    """
    participant = draw_participant(label, split, rng)
    params = draw_parameters(label, rng)
    controls = draw_deformation_controls(params.deform_mm, template.centre_mm, rng)
    bias_coefficients = draw_bias_coefficients(rng)

    coords = template_coordinates(template, grid, params, controls)
    anatomy, mask = warp_template(template, grid, params, controls, coords)
    probabilities = warp_tissues(template, coords, mask)
    brain = mask.astype(bool)
    target = simulate_target(anatomy, brain, params.target_noise, rng)
    source = simulate_source(anatomy, brain, grid, params, bias_coefficients, rng)

    write_nifti(naming.source_path(root, label), source, grid.affine)
    write_nifti(naming.target_path(root, label), target, grid.affine)
    write_nifti(naming.mask_path(root, label), mask, grid.affine)
    for tissue, probability in probabilities.items():
        # In steps of 1/255, the precision of the template's own maps: a quarter of the
        # disk space and write time of float32.
        quantised = np.round(probability * PROBSEG_STEPS).astype(np.uint8)
        write_nifti(naming.probseg_path(root, label, tissue), quantised, grid.affine, slope=1.0 / PROBSEG_STEPS)
    write_nifti(naming.dseg_path(root, label), tissue_labels(probabilities, mask), grid.affine)
    return participant, params


def draw_participant(label: str, split: str, rng: np.random.Generator) -> Participant:
    """Plausible demographics for the age range of 3T/7T ageing studies."""
    age = int(rng.integers(AGE_YEARS[0], AGE_YEARS[1] + 1))
    sex = "F" if rng.random() < 0.5 else "M"
    return Participant(label, age, sex, GROUP, split)


def draw_parameters(label: str, rng: np.random.Generator) -> SubjectParameters:
    """Draw one subject's scalar parameters, each uniform in its documented range."""

    def uniform(low: float, high: float, digits: int = 4) -> float:
        return round(float(rng.uniform(low, high)), digits)

    rotation = [uniform(-ROTATION_DEG, ROTATION_DEG, 3) for _ in range(3)]
    scale = [uniform(1 - SCALING, 1 + SCALING) for _ in range(3)]
    shift = [uniform(-TRANSLATION_MM, TRANSLATION_MM, 3) for _ in range(3)]
    return SubjectParameters(
        participant_id=label,
        rot_x_deg=rotation[0],
        rot_y_deg=rotation[1],
        rot_z_deg=rotation[2],
        scale_x=scale[0],
        scale_y=scale[1],
        scale_z=scale[2],
        shift_x_mm=shift[0],
        shift_y_mm=shift[1],
        shift_z_mm=shift[2],
        deform_mm=uniform(*DEFORM_MM, 3),
        contrast_g=uniform(*CONTRAST_G),
        grey_white_slope=uniform(*GREY_WHITE_SLOPE),
        blur_sigma_vox=uniform(*BLUR_SIGMA_VOX),
        blur_axis=int(rng.integers(0, 3)),
        blur_axis_factor=uniform(*BLUR_AXIS_FACTOR),
        bias_amplitude=uniform(*BIAS_AMPLITUDE),
        noise_sigma=uniform(*NOISE_SIGMA),
        target_noise=TARGET_NOISE,
    )


# ---------------------------------------------------------------------------------------
# template and grid


def load_template() -> Template:
    """The nilearn MNI152 2009a template, brain mask and GM/WM probability maps at 1 mm.

    All load from files inside the nilearn package (the mask is the template
    thresholded at 0.2; the probability maps are the ICBM152 2009a tissue priors,
    ``mni_icbm152_{gm,wm}_tal_nlin_sym_09a_converted.nii.gz``, which nilearn's loaders
    scale to a maximum of 1); nothing is downloaded.
    """

    image_nii = datasets.load_mni152_template(resolution=1)
    mask_nii = datasets.load_mni152_brain_mask(resolution=1)
    tissues = [datasets.load_mni152_gm_template(resolution=1), datasets.load_mni152_wm_template(resolution=1)]
    for tissue in tissues:
        if tissue.shape != image_nii.shape or not np.allclose(tissue.affine, image_nii.affine):
            raise RuntimeError("nilearn's MNI152 tissue maps are not on the template's grid")
    gm, wm = (np.clip(np.asarray(t.get_fdata(dtype=np.float32), dtype=np.float32), 0.0, 1.0) for t in tissues)
    image = np.asarray(image_nii.get_fdata(dtype=np.float32), dtype=np.float32)
    mask = (np.asarray(mask_nii.dataobj) > 0).astype(np.uint8)
    image = np.clip(image, 0.0, 1.0) * mask  # the few sub-threshold voxels are background
    affine = np.asarray(image_nii.affine, dtype=np.float64)
    corners = np.argwhere(mask)
    box_centre = (corners.min(axis=0) + corners.max(axis=0)) / 2.0
    centre_mm = affine[:3, :3] @ box_centre + affine[:3, 3]
    return Template(image, mask, affine, centre_mm, gm, wm)


def grid_shape(voxel_size: float) -> tuple[int, int, int]:
    """The fixed demo volume shape at ``voxel_size`` mm.

    Per axis, the smallest multiple of 8 voxels (so that U-Nets can halve it three
    times) whose voxel centres span ``2 * BRAIN_HALF_EXTENT_MM``: 120x144x128 at
    1.5 mm, 184x216x192 at 1 mm, 64x72x72 at 3 mm.
    """
    shape = []
    for half in BRAIN_HALF_EXTENT_MM:
        voxels = math.ceil(2 * half / voxel_size - 1e-9) + 1
        shape.append(SHAPE_MULTIPLE * math.ceil(voxels / SHAPE_MULTIPLE))
    return tuple(shape)  # type: ignore[return-value]


def demo_grid(voxel_size: float, centre_mm: np.ndarray) -> Grid:
    """An isotropic RAS grid of :func:`grid_shape` voxels centred on ``centre_mm``."""
    shape = grid_shape(voxel_size)
    affine = np.diag([voxel_size, voxel_size, voxel_size, 1.0])
    affine[:3, 3] = np.asarray(centre_mm, dtype=np.float64) - voxel_size * (np.array(shape) - 1) / 2.0
    return Grid(shape, affine)


# ---------------------------------------------------------------------------------------
# anatomy: random affine + B-spline deformation


class DeformationControls(NamedTuple):
    """Displacements (mm) on a fixed millimetre control grid, shape (3, nx, ny, nz)."""

    origin_mm: np.ndarray  # position of control point (0, 0, 0)
    displacement_mm: np.ndarray


def _control_counts() -> np.ndarray:
    """Control points per axis: they cover the grid at every allowed voxel size (whose
    shape rounding adds less than 9 voxels of the coarsest size) plus the cubic
    B-spline's support of one point on each side."""
    largest_extent = 2 * np.array(BRAIN_HALF_EXTENT_MM) + (SHAPE_MULTIPLE + 1) * VOXEL_SIZE_RANGE[1]
    return np.ceil(largest_extent / CONTROL_SPACING_MM).astype(int) + 4


def draw_deformation_controls(bound_mm: float, centre_mm: np.ndarray, rng: np.random.Generator) -> DeformationControls:
    """Uniform displacements in [-bound, bound] mm on each control point and axis.

    A cubic B-spline is a convex combination of its control values, so no voxel moves
    by more than ``bound`` per axis: that bound is what keeps every brain inside the
    fixed field of view.
    """
    counts = _control_counts()
    origin = np.asarray(centre_mm, dtype=np.float64) - CONTROL_SPACING_MM * (counts - 1) / 2.0
    displacement = rng.uniform(-bound_mm, bound_mm, size=(3, *counts))
    return DeformationControls(origin, displacement)


def _bspline_matrix(positions_mm: np.ndarray, origin_mm: float, count: int) -> np.ndarray:
    """Weights (len(positions), count) of the uniform cubic B-spline at ``positions``."""
    t = (positions_mm - origin_mm) / CONTROL_SPACING_MM
    first = np.floor(t).astype(int) - 1
    f = t - np.floor(t)
    weights = np.stack(
        [
            (1 - f) ** 3 / 6,
            (3 * f**3 - 6 * f**2 + 4) / 6,
            (-3 * f**3 + 3 * f**2 + 3 * f + 1) / 6,
            f**3 / 6,
        ],
        axis=1,
    )
    if first.min() < 0 or first.max() + 3 >= count:
        raise AssertionError("deformation control grid does not cover the output grid")
    matrix = np.zeros((len(positions_mm), count))
    rows = np.arange(len(positions_mm))
    for offset in range(4):
        matrix[rows, first + offset] = weights[:, offset]
    return matrix


def _separable_product(coefficients: np.ndarray, bases: list[np.ndarray]) -> np.ndarray:
    """``sum_ijk c[i,j,k] * bx[x,i] * by[y,j] * bz[z,k]``, one axis at a time.

    ``np.einsum`` without ``optimize`` uses its own single-threaded loops rather than
    BLAS, which keeps the result bit-identical across machines' thread counts.
    """
    bx, by, bz = bases
    out = np.einsum("ijk,xi->xjk", coefficients, bx)
    out = np.einsum("xjk,yj->xyk", out, by)
    return np.einsum("xyk,zk->xyz", out, bz)


def rotation_matrix(x_deg: float, y_deg: float, z_deg: float) -> np.ndarray:
    """``Rz @ Ry @ Rx`` for rotations about the x, y and z axes, in degrees."""
    ax, ay, az = np.deg2rad([x_deg, y_deg, z_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def template_coordinates(
    template: Template, grid: Grid, params: SubjectParameters, controls: DeformationControls
) -> np.ndarray:
    """Template voxel coordinates (3, *grid.shape) sampled by each output voxel.

    The random transform is defined in the direction resampling needs, from a
    subject's millimetres ``p`` to the template's::

        q = c + R S (p - c) + shift + d(p)

    with ``c`` the brain centre, ``R`` the rotation, ``S`` the scaling and ``d`` the
    B-spline displacement. Uniform ranges symmetric about the identity make the
    direction immaterial for the distribution of subjects.
    """
    axes_mm = [grid.affine[a, a] * np.arange(n) + grid.affine[a, 3] for a, n in enumerate(grid.shape)]
    c = template.centre_mm
    rotation = rotation_matrix(params.rot_x_deg, params.rot_y_deg, params.rot_z_deg)
    linear = rotation @ np.diag([params.scale_x, params.scale_y, params.scale_z])
    shift = np.array([params.shift_x_mm, params.shift_y_mm, params.shift_z_mm])
    to_voxel = np.linalg.inv(template.affine)
    vox_linear = to_voxel[:3, :3]

    bases = [
        _bspline_matrix(axes_mm[a], controls.origin_mm[a], controls.displacement_mm.shape[a + 1]) for a in range(3)
    ]
    displacement = [_separable_product(controls.displacement_mm[a], bases) for a in range(3)]

    # q is affine in p, and p is separable in the grid axes: broadcast three 1-D terms.
    constant = c - linear @ c + shift
    coords = np.empty((3, *grid.shape), dtype=np.float64)
    for out_axis in range(3):
        row = vox_linear[out_axis] @ linear  # d(template voxel)/d(subject mm)
        offset = vox_linear[out_axis] @ constant + to_voxel[out_axis, 3]
        coords[out_axis] = (
            offset
            + (row[0] * axes_mm[0])[:, None, None]
            + (row[1] * axes_mm[1])[None, :, None]
            + (row[2] * axes_mm[2])[None, None, :]
        )
        for d_axis in range(3):
            if vox_linear[out_axis, d_axis] != 0.0:
                coords[out_axis] += vox_linear[out_axis, d_axis] * displacement[d_axis]
    return coords


def warp_template(
    template: Template,
    grid: Grid,
    params: SubjectParameters,
    controls: DeformationControls,
    coords: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The subject's anatomy (float32, [0, 1], zero outside the brain) and mask (uint8).

    Linear interpolation for the image, nearest neighbour for the mask, both through
    the same coordinates (``coords`` from :func:`template_coordinates`, computed here
    when not given); the image is then cut to the mask so that both agree on where
    the brain ends.
    """

    if coords is None:
        coords = template_coordinates(template, grid, params, controls)
    anatomy = ndimage.map_coordinates(template.image, coords, order=1, mode="constant", cval=0.0, prefilter=False)
    mask = ndimage.map_coordinates(template.mask, coords, order=0, mode="constant", cval=0)
    _check_inside_grid(mask)
    anatomy = np.clip(anatomy, 0.0, 1.0, out=anatomy) * mask
    return anatomy.astype(np.float32), mask.astype(np.uint8)


def warp_tissues(template: Template, coords: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """The subject's tissue probabilities ``{"CSF", "GM", "WM"}`` (float32, [0, 1]).

    The template's GM and WM maps go through the anatomy's coordinates with the same
    linear interpolation, so they move exactly as the image does, and are cut to the
    subject's mask like it. Linear interpolation is a convex combination, so GM + WM
    stays at most 1, as in the template (up to float rounding); CSF is the rest of the
    mask, ``1 - GM - WM`` inside it. The three sum to 1 in the brain and are 0 outside.
    """

    if template.gm is None or template.wm is None:
        raise ValueError("the template was loaded without its tissue maps")
    brain = mask.astype(bool)
    maps = {}
    for name, prior in (("GM", template.gm), ("WM", template.wm)):
        warped = ndimage.map_coordinates(prior, coords, order=1, mode="constant", cval=0.0, prefilter=False)
        maps[name] = np.clip(warped, 0.0, 1.0).astype(np.float32) * brain
    csf = np.clip(1.0 - maps["GM"] - maps["WM"], 0.0, 1.0).astype(np.float32) * brain
    return {"CSF": csf, "GM": maps["GM"], "WM": maps["WM"]}


def tissue_labels(probabilities: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
    """Hard labels (uint8) of the most probable tissue in the brain, in the
    :data:`~t7synth.data.naming.TISSUE_LABELS` convention (1 CSF, 2 GM, 3 WM), 0 outside;
    a tie goes to the class listed first."""
    names = list(naming.TISSUE_LABELS)
    stacked = np.stack([probabilities[name] for name in names])
    values = np.array([naming.TISSUE_LABELS[name] for name in names], dtype=np.uint8)
    return np.where(mask.astype(bool), values[np.argmax(stacked, axis=0)], 0).astype(np.uint8)


def write_tissue_table(path: Path) -> None:
    """The BIDS look-up table of the labels (``index``, ``name``, ``abbreviation``)."""
    rows = [
        {"index": label, "name": naming.TISSUE_NAMES[name], "abbreviation": name}
        for name, label in naming.TISSUE_LABELS.items()
    ]
    _write_tsv(path, rows)


def _check_inside_grid(mask: np.ndarray) -> None:
    """A brain that reaches the grid's faces would be silently cropped: a bug in
    BRAIN_HALF_EXTENT_MM or the ranges, never the user's doing."""
    faces = [mask[0], mask[-1], mask[:, 0], mask[:, -1], mask[:, :, 0], mask[:, :, -1]]
    if any(face.any() for face in faces):
        raise RuntimeError("simulated brain reaches the edge of the demo grid; BRAIN_HALF_EXTENT_MM is too small")


# ---------------------------------------------------------------------------------------
# 7T target and 3T forward model


def brain_percentile(image: np.ndarray, brain: np.ndarray, q: float = 99.0) -> float:
    """The ``q``-th percentile of ``image`` inside the brain: a scale robust to outliers."""
    return float(np.percentile(image[brain], q))


def simulate_target(anatomy: np.ndarray, brain: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """7T: the anatomy with Gaussian noise of ``noise`` x the in-brain 99th percentile.

    Clipped at zero because magnitude images are non-negative.
    """
    target = anatomy.copy()
    sigma = noise * brain_percentile(anatomy, brain)
    target[brain] += sigma * rng.standard_normal(int(brain.sum()), dtype=np.float32)
    np.maximum(target, 0.0, out=target)
    target[~brain] = 0.0
    return target


def simulate_source(
    anatomy: np.ndarray,
    brain: np.ndarray,
    grid: Grid,
    params: SubjectParameters,
    bias_coefficients: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """3T: contrast compression, blur, bias field, Rician noise; zero outside the brain.

    The order follows the physics: tissue contrast is a property of the field
    strength, the point-spread function blurs what the coil sees, the receive
    sensitivity multiplies it, and thermal noise is added last.
    """
    source = compress_contrast(anatomy, brain, params.contrast_g, params.grey_white_slope)
    source = blur(source, params.blur_sigma_vox, params.blur_axis, params.blur_axis_factor)
    source *= bias_field(grid.shape, brain, bias_coefficients, params.bias_amplitude)
    source[~brain] = 0.0
    sigma = params.noise_sigma * brain_percentile(source, brain)
    source = add_rician_noise(source, brain, sigma, rng)
    source[~brain] = 0.0
    return source


def compress_contrast(anatomy: np.ndarray, brain: np.ndarray, g: float, slope: float = 1.0) -> np.ndarray:
    """Monotone remap of the [0, 1] anatomy inside the brain: ``x ** (1 / g)``, then a
    knee at the in-brain 30th percentile above which the curve rises with ``slope`` < 1.

    With ``g > 1`` the power curve is concave: it lifts grey matter (about 0.6) more
    than white matter (about 0.85), so their ratio shrinks as at 3T (``x ** g`` would do
    the opposite and *increase* the ratio). The knee then squeezes the grey-to-white
    range itself, which per-volume min-max scaling cannot undo.
    """
    out = np.zeros_like(anatomy)
    values = np.power(np.clip(anatomy[brain], 0.0, 1.0), 1.0 / g)
    knee = np.float32(np.percentile(values, KNEE_PERCENTILE))
    out[brain] = np.where(values > knee, knee + (values - knee) * np.float32(slope), values)
    return out


def blur(image: np.ndarray, sigma_vox: float, slow_axis: int, factor: float) -> np.ndarray:
    """Gaussian blur of ``sigma_vox`` in-plane and ``factor`` times that along one axis,
    the thicker-slice direction of a typical 3T acquisition."""

    sigmas = [sigma_vox] * 3
    sigmas[slow_axis] = sigma_vox * factor
    return ndimage.gaussian_filter(image, sigma=sigmas, mode="constant", cval=0.0)


def _bias_exponents() -> list[tuple[int, int, int]]:
    """Monomials x^i y^j z^k with 1 <= i + j + k <= BIAS_ORDER (no constant: the field
    is rescaled anyway and the constant would only shift it)."""
    return [
        (i, j, k)
        for i in range(BIAS_ORDER + 1)
        for j in range(BIAS_ORDER + 1)
        for k in range(BIAS_ORDER + 1)
        if 1 <= i + j + k <= BIAS_ORDER
    ]


def draw_bias_coefficients(rng: np.random.Generator) -> np.ndarray:
    """Polynomial coefficients (BIAS_ORDER+1,)*3, uniform in [-1, 1], zero elsewhere."""
    coefficients = np.zeros((BIAS_ORDER + 1,) * 3)
    for exponent in _bias_exponents():
        coefficients[exponent] = rng.uniform(-1.0, 1.0)
    return coefficients


def bias_field(
    shape: tuple[int, int, int], brain: np.ndarray, coefficients: np.ndarray, amplitude: float
) -> np.ndarray:
    """Multiplicative field ``1 + amplitude * f``, with ``f`` a random polynomial
    rescaled so that its largest absolute value inside the brain is 1.

    A polynomial is separable, so it is evaluated as three small 1-D tables
    contracted together: cheaper than computing a field at low resolution and
    upsampling it (TorchIO's bias field at 1 mm is the slow step of its pipeline),
    and exact at every voxel.
    """
    bases = []
    for n in shape:
        x = np.linspace(-1.0, 1.0, n)
        bases.append(np.stack([x**power for power in range(BIAS_ORDER + 1)], axis=1))
    field = _separable_product(coefficients, bases)
    peak = float(np.abs(field[brain]).max()) or 1.0
    return (1.0 + amplitude * field / peak).astype(np.float32)


def add_rician_noise(image: np.ndarray, brain: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Rician noise ``sqrt((x + n1)^2 + n2^2)``, ``n1, n2 ~ N(0, sigma)``, in the brain.

    A magnitude image of complex Gaussian noise: it biases dark regions upward,
    which is part of why 3T contrast looks flatter.
    """
    values = image[brain]
    n1 = sigma * rng.standard_normal(values.shape, dtype=np.float32)
    n2 = sigma * rng.standard_normal(values.shape, dtype=np.float32)
    out = np.zeros_like(image)
    out[brain] = np.sqrt((values + n1) ** 2 + n2**2)
    return out


# ---------------------------------------------------------------------------------------
# writing


def _write_tsv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _write_description(path: Path, n_subjects: int, seed: int, voxel_size: float, grid: Grid) -> None:
    """A BIDS-style ``dataset_description.json`` that also records how the folder was
    made; written last, it marks the folder as a complete demo dataset."""
    description = {
        "Name": "t7synth demo: paired 3T/7T T1w simulated from the MNI ICBM152 2009a template",
        "DatasetType": "raw",
        "GeneratedBy": [{"Name": "t7synth.data.simulate", "Version": FORMAT_VERSION}],
        "t7synth_demo": {
            "format_version": FORMAT_VERSION,
            "n_subjects": int(n_subjects),
            "seed": int(seed),
            "voxel_size": float(voxel_size),
            "shape": list(grid.shape),
        },
    }
    path.write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")


def read_description(folder: Path) -> dict | None:
    """The ``t7synth_demo`` settings of a generated folder, or ``None`` if it is not one."""
    path = Path(folder) / DESCRIPTION_JSON
    try:
        description = read_json(path) if path.is_file() else None
    except UserError:  # unreadable: not a folder the demo wrote
        return None
    settings = description.get("t7synth_demo") if isinstance(description, dict) else None
    return settings if isinstance(settings, dict) else None


def _progress(items, enabled: bool):
    if not enabled:
        return items

    return tqdm(items, desc="simulating demo subjects", unit="subject")
