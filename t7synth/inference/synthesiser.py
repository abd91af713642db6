"""Synthesise 7T-like volumes from new 3T scans with a trained checkpoint.

A new scan can come in any orientation, voxel size and shape. :class:`Synthesiser`
brings it to what the model was trained on and the prediction back to the scan's own
grid, so the output overlays the input voxel for voxel in any viewer:

1. Read the scan (:func:`~t7synth.data.volumes.load_volume` checks it) in RAS+ array
   order, as training did. Reorienting only permutes and flips axes, so it is exact
   and exactly undone at the end, even for oblique (rotated) affines.
2. Normalise intensities on the scan's own grid exactly as training did
   (:func:`~t7synth.data.preprocess.normalise`: the checkpoint's ``data.normalisation``
   and percentiles, inside the brain mask: the given mask, else the voxels above 0).
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

from pathlib import Path

import numpy as np
import torch
import torchio as tio

from t7synth.data import batches, volumes
from t7synth.data.preprocess import crop_or_pad, normalise
from t7synth.errors import UserError
from t7synth.inference import framing
from t7synth.inference.grids import resample, resampled_grid, shift_to_grid, spacing
from t7synth.training.precision import resolve_precision

#: Voxel sizes closer than this (relative) count as equal: no resampling.
VOXEL_SIZE_TOLERANCE = 1e-3


def device_for(gpus: int) -> str:
    """``cpu`` or ``cuda`` for ``--gpus``; one GPU at most (one volume at a time)."""
    if gpus == 0:
        return "cpu"
    if gpus != 1:
        raise UserError(f"--gpus {gpus}: predict uses one GPU; run one predict per GPU on separate folders")

    if not torch.cuda.is_available():
        raise UserError("--gpus 1: no CUDA GPU is visible on this machine (use --gpus 0 for the CPU)")
    return "cuda"


def autocast_dtype(precision: str, device: str) -> torch.dtype | None:
    """The autocast dtype of a resolved Lightning ``precision``, ``None`` for fp32.

    Resolve ``auto`` first (:func:`t7synth.training.precision.resolve_precision`): a
    model is applied in the precision its config asks for on this hardware, the rule
    ``fit``'s test followed, so ``evaluate`` reproduces ``fit``'s test scores on the
    same machine. fp16 autocast is a GPU recipe (a GPU-trained ``16-mixed`` model runs
    in fp32 on the CPU).
    """
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16") and device.startswith("cuda"):
        return torch.float16
    return None


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
        self.normalisation = self.config.data.normalisation
        self.shape = tuple(self.config.data.shape) if self.config.data.shape else None
        voxel = model.voxel_size.detach().cpu().double().numpy()
        # 0 means the model never saw training data (a hand-built test model): keep the grid.
        self.voxel_size = tuple(float(v) for v in voxel) if bool((voxel > 0).all()) else None
        #: The precision this model runs in here, and why (printed by ``predict``).
        self.precision = resolve_precision(self.config.trainer.precision, device)
        self.dtype = autocast_dtype(self.precision.precision, device)

    def synthesise(self, source: str | Path, mask: str | Path | None = None, age: float = 0.0, sex: float = 0.5):
        """Synthesise one scan; returns a ``nibabel.Nifti1Image`` on the scan's grid.

        Raises:
            UserError: an unreadable or invalid scan or mask, a mask on another grid,
                or an empty brain mask.
        """

        source = Path(source)
        if self.config.data.inference == "authors":
            return self._synthesise_authors(source, mask, age, sex)
        array, affine = volumes.load_volume(source)
        # Reorienting flips by negative strides, which torch.from_numpy refuses.
        array = np.ascontiguousarray(array)
        inside = volumes.brain_mask(source, array, affine, Path(mask) if mask is not None else None)
        mask_t = torch.from_numpy(inside[None].astype(np.uint8))
        normalised = normalise(torch.from_numpy(array[None]), mask_t, self.percentiles, self.normalisation)[0].numpy()

        # Step 3: the training voxel size.
        grid_shape, grid_affine = array.shape, affine
        grid_image, grid_mask = normalised, inside.astype(np.float32)
        resampled = self.voxel_size is not None and not np.allclose(
            spacing(affine), self.voxel_size, rtol=VOXEL_SIZE_TOLERANCE
        )
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
        return volumes.image_like(out.astype(np.float32), affine, volumes.load_image(source))

    def write(self, job) -> Path:
        """Synthesise ``job.source`` and write ``job.output`` atomically.

        Args:
            job: a :class:`~t7synth.inference.jobs.Job` (not imported here: jobs.py
                drives the synthesiser, so importing it back would make a cycle).
        """
        return volumes.save_image(self.synthesise(job.source, job.mask, job.age, job.sex), job.output)

    def _synthesise_authors(self, source: Path, mask: str | Path | None, age: float, sex: float):
        """``data.inference: authors``: ``inferer3T.py`` exactly (converted official
        checkpoints; the steps are :mod:`t7synth.inference.framing`'s).

        The scan is read and checked as always, then used in its file's own array axes,
        normalised with the checkpoint's ``data.normalisation`` (``authors``: the brain's
        percentiles, as ``pickling.py`` prepared the script's input), cropped to its
        brain box and end-padded to the ``data.shape`` frame; every window inside the
        frame is predicted; the raw output goes back in place, zero outside the box.
        """

        array, affine = volumes.load_volume(source)
        original = volumes.load_image(source)
        inside = volumes.brain_mask(source, array, affine, Path(mask) if mask is not None else None)
        native = np.ascontiguousarray(volumes.to_file_axes(array, original))
        native_mask = torch.from_numpy(
            np.ascontiguousarray(volumes.to_file_axes(inside, original))[None].astype(np.uint8)
        )
        normalised = normalise(torch.from_numpy(native[None]), native_mask, self.percentiles, self.normalisation)[
            0
        ].numpy()
        try:
            box = framing.brain_box(normalised)
            region = framing.frame_region(box, normalised.shape, self.shape)
        except UserError as error:
            raise UserError(f"{source}: {error}") from None
        framed = torch.from_numpy(framing.to_frame(normalised, region, self.shape).astype(np.float32)[None])
        axis = self.config.geometry.axis
        tokens = {"brain_mid": framing.window_middle(box, axis), "n_slices": float(self.shape[axis])}
        prediction = self._predict(framed, None, age, sex, tokens=tokens)[0].numpy()
        out = framing.from_frame(prediction, region, normalised.shape, axis)
        return volumes.image_on_file_grid(out, original)

    # -- steps ------------------------------------------------------------------
    def _crop_or_pad(self, image: np.ndarray, mask: np.ndarray, affine: np.ndarray):
        """Tensors (1, I, J, K) on the training shape and their affine (step 4)."""
        image_t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)[None])
        mask_t = torch.from_numpy((mask > 0).astype(np.uint8)[None])
        if self.shape is None:
            return image_t, mask_t, np.asarray(affine, dtype=np.float64)

        subject = tio.Subject(
            source=tio.ScalarImage(tensor=image_t, affine=affine), mask=tio.LabelMap(tensor=mask_t, affine=affine)
        )
        subject = crop_or_pad(subject, self.shape)
        return (
            subject["source"].data.float(),
            subject["mask"].data.to(torch.uint8),
            np.asarray(subject["source"].affine, dtype=np.float64),
        )

    def _predict(
        self, source: torch.Tensor, mask: torch.Tensor | None, age: float, sex: float, tokens: dict | None = None
    ) -> torch.Tensor:
        """The model's prediction of a (1, I, J, K) volume; ``mask`` zeroes it outside
        the brain; ``tokens`` (``brain_mid``, ``n_slices``) replace those of the mask."""

        geometry = self.config.geometry
        # The same tokens the data module gives a test subject (datamodule._subject).
        axis = geometry.axis if geometry.mode == "slab" else 0
        meta = {"age": float(age), "sex": float(sex)}
        meta.update(tokens or {"brain_mid": batches.brain_middle(mask, axis), "n_slices": float(mask.shape[axis + 1])})
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        with (
            torch.no_grad(),
            torch.autocast(device_type=device_type, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None),
        ):
            return self.model.predict_subject(source, meta, mask).float().cpu()


class Fusion:
    """Several models applied to one scan, their volumes fused voxel by voxel.

    The authors' follow-up (``multi-view-super-resolution-*/Unet/average.py`` in their
    repository) trains one 2.5D model per slice axis and averages the three volumes.
    Here every model predicts the scan on the scan's own grid with its own
    preprocessing, so any models can be fused: the prediction is the voxel-wise mean,
    and the voxel-wise standard deviation across the models (the population SD,
    ``numpy.std``'s ``ddof=0``) is written beside it as an uncertainty map
    (:func:`~t7synth.data.naming.uncertainty_path`): where the views disagree.

    Args:
        synthesisers: two or more :class:`Synthesiser`; the first's config stands for
            all (``--split``; ``predict`` checks that they split alike).
    """

    def __init__(self, synthesisers) -> None:
        self.synthesisers = list(synthesisers)
        if len(self.synthesisers) < 2:
            raise ValueError("fusing needs at least two models")
        self.config = self.synthesisers[0].config

    def synthesise(self, source: str | Path, mask: str | Path | None = None, age: float = 0.0, sex: float = 0.5):
        """The mean and the SD image of every model's prediction, on the scan's grid."""
        mean = spread = None
        for count, synthesiser in enumerate(self.synthesisers, start=1):
            volume = np.asarray(synthesiser.synthesise(source, mask, age, sex).dataobj, dtype=np.float64)
            if mean is None:
                mean, spread = volume.copy(), np.zeros_like(volume)
            else:
                # Welford's update: one pass, one volume in memory per model at a time.
                delta = volume - mean
                mean += delta / count
                spread += delta * (volume - mean)
        original = volumes.load_image(source)
        sd_image = volumes.image_on_file_grid(
            np.sqrt(spread / len(self.synthesisers)), original, "t7synth synthetic 7T: SD across models"
        )
        return volumes.image_on_file_grid(mean, original), sd_image

    def write(self, job) -> Path:
        """Write ``job.output`` (the mean) and ``job.uncertainty`` (the SD), each atomically.

        The SD map is written first, so a mean on disk always has its SD map.
        """
        if job.uncertainty is None:
            raise ValueError("a fused job needs an uncertainty path (plan_jobs(uncertainty=True))")
        mean_image, sd_image = self.synthesise(job.source, job.mask, job.age, job.sex)
        volumes.save_image(sd_image, job.uncertainty)
        return volumes.save_image(mean_image, job.output)
