"""Synthesise 7T-like volumes from new 3T scans with a trained checkpoint.

A new scan can come in any orientation, voxel size and shape. :class:`Synthesiser`
brings it to what the model was trained on and the prediction back to the scan's own
grid, so the output overlays the input voxel for voxel in any viewer:

1. Read the scan (:func:`~t7synth.data.layout.load_volume` checks it) in RAS+ array
   order, as training did. Reorienting only permutes and flips axes, so it is exact
   and exactly undone at the end, even for oblique (rotated) affines.
2. Normalise intensities on the scan's own grid exactly as training did
   (:func:`~t7synth.data.preprocess.normalise`: percentiles from the checkpoint's
   config, inside the brain mask: the given mask, else the voxels above 0).
3. Resample to the training voxel size (the checkpoint's ``voxel_size`` buffer) when
   it is known and differs, keeping the scan's axes and its first voxel centre; for
   an integer ratio of spacings every input voxel centre is also a model-grid centre,
   so going there and back is lossless for linear interpolation.
4. Crop or pad to the config's ``data.shape`` when training used one (centred on the
   brain, as training did), so the 2.5D models' slice-position token means the same.
5. Predict the whole volume (:meth:`~t7synth.models.base.SynthesisModule.predict_subject`:
   a sliding k-slice window for 2.5D models, Hann-blended patches for 3D models), in
   the precision the model was tested in.
6. Undo 4, 3 and 1; zero outside the brain mask; clip to the model's [0, 1] scale;
   write float32 with the scan's affine and header (sform/qform codes kept).

Steps 2 to 4 reproduce :func:`~t7synth.data.preprocess.preprocess_record`, so a
dataset subject predicted here scores what ``fit`` reported for it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from t7synth.errors import UserError

#: Voxel sizes closer than this (relative) count as equal: no resampling.
VOXEL_SIZE_TOLERANCE = 1e-3
#: Output name of a dataset subject's prediction; ``evaluate`` finds it by the label.
SYNTHETIC_SUFFIX = "_desc-synth7T_T1w.nii.gz"
#: Appended to the stem of a plain NIfTI file's name for its prediction.
PLAIN_SUFFIX = "_synth7T.nii.gz"
NIFTI_SUFFIXES = (".nii.gz", ".nii")


# -- grids ----------------------------------------------------------------------------
def spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm of each array axis (column norms of the affine)."""
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def resampled_grid(shape: Sequence[int], affine: np.ndarray, voxel_size: Sequence[float]) -> tuple[tuple[int, int, int], np.ndarray]:
    """A grid with the same axes and first voxel centre as ``(shape, affine)`` but
    ``voxel_size`` spacing, covering every voxel centre of the original grid."""
    affine = np.asarray(affine, dtype=np.float64)
    old = spacing(affine)
    new = np.asarray(voxel_size, dtype=np.float64)
    extent = (np.asarray(shape) - 1) * old
    new_shape = tuple(int(n) for n in np.floor(extent / new + 1e-6).astype(int) + 1)
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] / old * new
    return new_shape, new_affine


def resample(volume: np.ndarray, from_affine: np.ndarray, to_shape: Sequence[int], to_affine: np.ndarray, order: int) -> np.ndarray:
    """Sample ``volume`` (on ``from_affine``) at the voxel centres of another grid.

    Args:
        order: 1 for images (trilinear), 0 for masks (nearest).

    Returns:
        float32 array of ``to_shape``; points outside the volume are 0.
    """
    from scipy.ndimage import affine_transform

    # affine_transform maps output voxel indices to input voxel indices.
    matrix = np.linalg.inv(np.asarray(from_affine, dtype=np.float64)) @ np.asarray(to_affine, dtype=np.float64)
    out = affine_transform(
        np.asarray(volume, dtype=np.float32), matrix[:3, :3], matrix[:3, 3], output_shape=tuple(to_shape), order=order, mode="constant", cval=0.0
    )
    return out.astype(np.float32, copy=False)


def shift_to_grid(volume: np.ndarray, from_affine: np.ndarray, to_shape: Sequence[int], to_affine: np.ndarray) -> np.ndarray:
    """Copy ``volume`` onto a grid that differs from its own by a whole-voxel shift.

    This is how crops and pads (TorchIO's ``CropOrPad`` moves the affine's origin) are
    undone or repeated without interpolation: voxels outside ``volume`` become 0.

    Raises:
        ValueError: the grids differ by more than an integer translation.
    """
    transform = np.linalg.inv(np.asarray(to_affine, dtype=np.float64)) @ np.asarray(from_affine, dtype=np.float64)
    shift = np.round(transform[:3, 3]).astype(int)
    if not (np.allclose(transform[:3, :3], np.eye(3), atol=1e-3) and np.allclose(transform[:3, 3], shift, atol=1e-3)):
        raise ValueError("the grids differ by more than a whole-voxel shift")
    out = np.zeros(tuple(to_shape), dtype=np.float32)
    source_index, target_index = [], []
    for size_from, size_to, offset in zip(volume.shape, to_shape, shift):
        low = max(0, -offset)
        high = min(size_from, size_to - offset)
        if high <= low:
            return out
        source_index.append(slice(low, high))
        target_index.append(slice(low + offset, high + offset))
    out[tuple(target_index)] = volume[tuple(source_index)]
    return out


def autocast_dtype(precision: str | None, device: str) -> torch.dtype | None:
    """The autocast dtype of Lightning's ``precision`` on ``device``, ``None`` for fp32.

    ``None`` precision means what ``fit`` picks: bf16 on GPUs, fp32 on the CPU.
    Predicting in the precision the model was tested in makes ``evaluate`` reproduce
    ``fit``'s test scores.
    """
    on_gpu = device.startswith("cuda")
    precision = precision or ("bf16-mixed" if on_gpu else "32-true")
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16") and on_gpu:
        return torch.float16
    return None


# -- one volume -------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One volume to synthesise.

    ``age`` (years) and ``sex`` (1 female, 0 male, 0.5 unknown) feed the conditioning
    tokens of models that use them; unknown values are what training used for them.
    """

    source: Path
    output: Path
    mask: Path | None = None
    age: float = 0.0
    sex: float = 0.5


class Synthesiser:
    """A trained model plus everything needed to apply it to new scans.

    Args:
        model: a :class:`~t7synth.models.base.SynthesisModule` (eval mode).
        device: ``"cpu"`` or ``"cuda"``.
        batch_size: windows or patches per forward pass; default the config's
            ``data.inference_batch_size``.
    """

    def __init__(self, model, device: str = "cpu", batch_size: int | None = None):
        self.model = model.eval().to(device)
        self.device = device
        self.config = model.config
        if batch_size is not None:
            if batch_size < 1:
                raise UserError(f"--batch-size must be at least 1, got {batch_size}")
            self.config.data.inference_batch_size = batch_size
        self.percentiles = tuple(self.config.data.percentiles)
        self.shape = tuple(self.config.data.shape) if self.config.data.shape else None
        voxel = model.voxel_size.detach().cpu().double().numpy()
        # 0 means the model never saw training data (a hand-built test model): keep the grid.
        self.voxel_size = tuple(float(v) for v in voxel) if bool((voxel > 0).all()) else None
        self.dtype = autocast_dtype(self.config.trainer.precision, device)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", batch_size: int | None = None) -> Synthesiser:
        """Load the model of ``path`` (see :func:`t7synth.checkpoint.load_model`)."""
        from t7synth.checkpoint import load_model

        return cls(load_model(path), device=device, batch_size=batch_size)

    def synthesise(self, source: str | Path, mask: str | Path | None = None, age: float = 0.0, sex: float = 0.5):
        """Synthesise one scan; returns a ``nibabel.Nifti1Image`` on the scan's grid.

        Raises:
            UserError: an unreadable or invalid scan or mask, a mask on another grid,
                or an empty brain mask.
        """
        import nibabel as nib

        from t7synth.data.layout import brain_mask, load_volume
        from t7synth.data.preprocess import normalise

        source = Path(source)
        array, affine = load_volume(source)
        # Reorienting flips by negative strides, which torch.from_numpy refuses.
        array = np.ascontiguousarray(array)
        inside = brain_mask(source, array, affine, Path(mask) if mask is not None else None)
        mask_t = torch.from_numpy(inside[None].astype(np.uint8))
        normalised = normalise(torch.from_numpy(array[None]), mask_t, self.percentiles)[0].numpy()

        # Step 3: the training voxel size.
        grid_shape, grid_affine = array.shape, affine
        grid_image, grid_mask = normalised, inside.astype(np.float32)
        resampled = self.voxel_size is not None and not np.allclose(spacing(affine), self.voxel_size, rtol=VOXEL_SIZE_TOLERANCE)
        if resampled:
            grid_shape, grid_affine = resampled_grid(array.shape, affine, self.voxel_size)
            grid_image = resample(normalised, affine, grid_shape, grid_affine, order=1)
            grid_mask = resample(inside.astype(np.float32), affine, grid_shape, grid_affine, order=0)
            if not (grid_mask > 0).any():
                raise UserError(f"the brain mask of {source} vanishes at the training voxel size {self.voxel_size}")

        # Step 4: the training shape, then the prediction.
        model_source, model_mask, model_affine = self._crop_or_pad(grid_image, grid_mask, grid_affine)
        prediction = self._predict(model_source, model_mask, age, sex)

        # Step 6: back to the scan's grid and orientation.
        out = shift_to_grid(prediction[0].numpy(), model_affine, grid_shape, grid_affine)
        if resampled:
            out = resample(out, grid_affine, array.shape, affine, order=1)
        out = np.clip(out, 0.0, 1.0) * inside
        return self._as_input_image(out.astype(np.float32), affine, nib.load(str(source)))

    def write(self, job: Job) -> Path:
        """Synthesise ``job.source`` and write ``job.output`` atomically."""
        import nibabel as nib

        from t7synth.io import atomic_path

        image = self.synthesise(job.source, job.mask, job.age, job.sex)
        with atomic_path(job.output) as tmp:
            nib.save(image, str(tmp))
        return job.output

    # -- steps ------------------------------------------------------------------
    def _crop_or_pad(self, image: np.ndarray, mask: np.ndarray, affine: np.ndarray):
        """Tensors (1, I, J, K) on the training shape and their affine (step 4)."""
        image_t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)[None])
        mask_t = torch.from_numpy((mask > 0).astype(np.uint8)[None])
        if self.shape is None:
            return image_t, mask_t, np.asarray(affine, dtype=np.float64)
        import torchio as tio

        from t7synth.data.preprocess import crop_or_pad

        subject = tio.Subject(source=tio.ScalarImage(tensor=image_t, affine=affine), mask=tio.LabelMap(tensor=mask_t, affine=affine))
        subject = crop_or_pad(subject, self.shape)
        return subject["source"].data.float(), subject["mask"].data.to(torch.uint8), np.asarray(subject["source"].affine, dtype=np.float64)

    def _predict(self, source: torch.Tensor, mask: torch.Tensor, age: float, sex: float) -> torch.Tensor:
        from t7synth.data import batches

        geometry = self.config.geometry
        # The same tokens the data module gives a test subject (datamodule._subject).
        axis = geometry.axis if geometry.mode == "slab" else 0
        meta = {"age": float(age), "sex": float(sex), "brain_mid": batches.brain_middle(mask, axis), "n_slices": float(mask.shape[axis + 1])}
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        with torch.no_grad(), torch.autocast(device_type=device_type, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None):
            return self.model.predict_subject(source, meta, mask).float().cpu()

    @staticmethod
    def _as_input_image(canonical: np.ndarray, canonical_affine: np.ndarray, original):
        """A float32 image in the original file's orientation, affine and header."""
        import nibabel as nib
        from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

        # load_volume reoriented with as_closest_canonical; apply the inverse flips/permutation.
        back = ornt_transform(axcodes2ornt(("R", "A", "S")), io_orientation(original.affine))
        image = nib.Nifti1Image(canonical, canonical_affine).as_reoriented(back)
        if not np.allclose(image.affine, original.affine, atol=1e-4):
            raise RuntimeError("reorientation to the input's axes did not restore its affine")
        header = nib.Nifti1Header.from_header(original.header)
        result = nib.Nifti1Image(np.asarray(image.dataobj, dtype=np.float32), original.affine, header=header)
        result.set_data_dtype(np.float32)
        # Keep the input's exact sform and qform (and their codes), so every viewer,
        # whichever of the two it reads, places the voxels where the input's were.
        sform, sform_code = original.header.get_sform(coded=True) if hasattr(original.header, "get_sform") else (None, 0)
        qform, qform_code = original.header.get_qform(coded=True) if hasattr(original.header, "get_qform") else (None, 0)
        result.set_sform(sform if sform_code else original.affine, int(sform_code) if sform_code else 2)
        if qform_code:
            result.set_qform(qform, int(qform_code))
        result.header.set_slope_inter(1.0, 0.0)
        # The input's display window (3T intensities) would make the output look black.
        result.header["cal_min"], result.header["cal_max"] = 0.0, 1.0
        result.header["descrip"] = b"t7synth synthetic 7T"
        return result


# -- many volumes -----------------------------------------------------------------
def is_nifti(path: Path) -> bool:
    """Whether ``path`` names a NIfTI file (``.nii`` or ``.nii.gz``)."""
    return path.name.endswith(NIFTI_SUFFIXES)


def nifti_stem(path: Path) -> str:
    """The file name without ``.nii``/``.nii.gz``."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def is_dataset(folder: Path) -> bool:
    """A t7synth dataset folder: ``participants.tsv`` or ``sub-*/anat`` folders."""
    from t7synth.data import naming

    return (folder / naming.PARTICIPANTS).is_file() or any(p.is_dir() for p in folder.glob("sub-*/anat"))


def synthetic_name(subject: str) -> str:
    """``sub-XXX_desc-synth7T_T1w.nii.gz``: the prediction of a dataset subject."""
    return f"{subject}{SYNTHETIC_SUFFIX}"


def plan_jobs(
    input: str | Path,
    output: str | Path,
    mask: str | Path | None = None,
    split: str | None = None,
    config=None,
    age: float | None = None,
    sex: float | None = None,
) -> list[Job]:
    """The volumes a ``predict`` command line asks for, checked before anything runs.

    Args:
        input: a NIfTI file, a folder of NIfTI files, or a dataset folder (every
            subject's 3T input, with its mask, age and sex).
        output: a file for a file input (a folder otherwise, or when it does not end
            in ``.nii``/``.nii.gz``).
        mask: a mask file for a file input; for folders a folder holding a mask with
            the same file name or the same ``sub-XXX`` label as each input.
        split: ``train``/``val``/``test``: only that split of a dataset folder, split
            as the model's training did (``participants.tsv`` or the config's seed).
        config: the model's :class:`~t7synth.config.Config` (for ``split``).
        age, sex: conditioning values of a file input (years; 1 female, 0 male).
            Folders of files get the unknown values; a dataset folder's come from
            its ``participants.tsv``.

    Raises:
        UserError: missing paths, a folder with no NIfTI files, a missing mask, an
            output that would overwrite an input, ``split`` on a plain folder, or
            ``age``/``sex`` with a folder.
    """
    input, output = Path(input).expanduser(), Path(output).expanduser()
    mask = Path(mask).expanduser() if mask is not None else None
    if mask is not None and not mask.exists():
        raise UserError(f"mask not found: {mask}")
    if input.is_file():
        if split:
            raise UserError("--split needs a dataset folder as --input")
        if mask is not None and not mask.is_file():
            raise UserError(f"--mask must be a file when --input is a file: {mask}")
        target = output if is_nifti(output) and not output.is_dir() else output / f"{nifti_stem(input)}{PLAIN_SUFFIX}"
        jobs = [Job(source=input, output=target, mask=mask, age=0.0 if age is None else float(age), sex=0.5 if sex is None else float(sex))]
    elif input.is_dir():
        if age is not None or sex is not None:
            raise UserError("--age and --sex apply to a single file; a dataset folder takes them from participants.tsv")
        if is_nifti(output) and not output.is_dir():
            raise UserError(f"--output must be a folder when --input is a folder: {output}")
        if output.is_file():
            raise UserError(f"--output is a file, not a folder: {output}")
        if mask is not None and not mask.is_dir():
            raise UserError(f"--mask must be a folder when --input is a folder: {mask}")
        jobs = _dataset_jobs(input, output, mask, split, config) if is_dataset(input) else _folder_jobs(input, output, mask, split)
    else:
        raise UserError(f"input not found: {input}")
    sources = {job.source.resolve() for job in jobs}
    outputs: dict[Path, Path] = {}
    for job in jobs:
        resolved = job.output.resolve()
        if resolved in sources:
            raise UserError(f"output {job.output} would overwrite an input; choose another --output")
        if resolved in outputs:
            raise UserError(f"{job.source} and {outputs[resolved]} would both be written to {job.output}")
        outputs[resolved] = job.source
    return jobs


def _dataset_jobs(root: Path, output: Path, mask_dir: Path | None, split: str | None, config) -> list[Job]:
    from t7synth.data.datamodule import assign_splits
    from t7synth.data.layout import discover

    records = discover(root)
    if split:
        if config is None:
            raise UserError("--split needs the model's config to split the dataset as training did")
        data = config.data
        records = assign_splits(records, data.val_fraction, data.test_fraction, data.split_seed)[split]
        if not records:
            raise UserError(f"the {split} split of {root} has no subjects")
    jobs = []
    for record in records:
        mask = _match_mask(record.source, mask_dir) if mask_dir is not None else record.mask
        jobs.append(Job(source=record.source, output=output / synthetic_name(record.subject), mask=mask, age=record.age, sex=record.sex))
    return jobs


def _folder_jobs(folder: Path, output: Path, mask_dir: Path | None, split: str | None) -> list[Job]:
    if split:
        raise UserError(f"--split needs a dataset folder (participants.tsv or sub-*/anat), not {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p) and not p.name.startswith("."))
    if not files:
        raise UserError(f"no NIfTI files (.nii, .nii.gz) in {folder}")
    return [
        Job(source=path, output=output / f"{nifti_stem(path)}{PLAIN_SUFFIX}", mask=_match_mask(path, mask_dir) if mask_dir else None)
        for path in files
    ]


def _match_mask(source: Path, mask_dir: Path) -> Path:
    """The mask of ``source`` in ``mask_dir``: the same file name, else the one file
    with the same ``sub-XXX`` label."""
    from t7synth.data.naming import subject_label

    same = mask_dir / source.name
    if same.is_file():
        return same
    label = subject_label(source.name)
    if label:
        candidates = [p for p in sorted(mask_dir.iterdir()) if p.is_file() and is_nifti(p) and subject_label(p.name) == label]
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            raise UserError(f"several masks for {label} in {mask_dir}: {', '.join(p.name for p in candidates)}")
    raise UserError(f"no mask for {source.name} in {mask_dir} (same file name or same sub-XXX label)")


def run_jobs(synthesiser: Synthesiser, jobs: Sequence[Job], report: Callable[[str], None] | None = None, progress: bool = True) -> list[str]:
    """Synthesise every job, carrying on past volumes that fail.

    Args:
        report: called with the message of each failure as it happens (default: one
            ``error: ...`` line on stderr, printed above the progress bar).
        progress: show a tqdm bar over volumes (only on a terminal).

    Returns:
        The failure messages (each names its file); empty when all succeeded.
    """
    from tqdm.auto import tqdm

    failures: list[str] = []
    bar = tqdm(jobs, desc="predict", unit="volume", disable=None if progress else True)
    for job in bar:
        try:
            synthesiser.write(job)
        except UserError as error:
            message = str(error)
            failures.append(message)
            if report is not None:
                report(message)
            else:
                tqdm.write(f"error: {message}", file=sys.stderr)
    return failures
