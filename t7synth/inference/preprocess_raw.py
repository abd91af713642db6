"""``predict`` on raw scans: brain extraction and N4 before the model, the brain mask and
a quality row after it, on the scan's own grid.

:class:`RawPipeline` wraps a :class:`~t7synth.inference.synthesiser.Synthesiser` (or a
:class:`~t7synth.inference.synthesiser.Fusion`) and, for each job:

1. reads the scan (:func:`~t7synth.data.volumes.load_volume`, RAS+);
2. decides what to apply: ``--skull-strip`` and ``--n4`` always; with ``--preprocess
   auto`` (the default) also what the model's training inputs had
   (:mod:`t7synth.data.profile`): brain extraction when the model was trained on
   skull-stripped brains, the scan is not stripped and no ``--mask`` is given; N4 when
   the training inputs were bias-corrected;
3. extracts the brain with deepbet and/or corrects the bias field with N4
   (:mod:`t7synth.data.skullstrip`), both on the scan's grid; writes the mask beside the
   output (:func:`~t7synth.data.naming.brain_mask_output`);
4. hands the prepared scan (zero outside the brain, the original header) and its mask
   to the synthesiser, whose output lies on the scan's grid and is zero outside the mask;
5. measures the quality row (:mod:`t7synth.inference.qc`; with ``quality``, also the
   output's and the input's no-reference quality) and, for a BIDS derivative, writes
   the JSON sidecar last (so a sidecar on disk means a complete output).

A scan that keeps a mismatch with the training inputs (``--preprocess none`` on a
full-head scan for a model trained on brains) is flagged ``preprocessing`` in its row;
a flagged row is one warning line naming every flag.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from tqdm.auto import tqdm

import t7synth
from t7synth.data import profile as training
from t7synth.data import volumes
from t7synth.data.naming import brain_mask_output, nifti_stem
from t7synth.data.preprocess import normalise
from t7synth.data.skullstrip import extract_brain, n4_correct
from t7synth.errors import UserError
from t7synth.files import atomic_path
from t7synth.inference import qc
from t7synth.inference.grids import spacing

#: ``--preprocess`` values: apply what the model's training inputs had, or only what is asked.
PREPROCESS_MODES = ("auto", "none")


def _warn(message: str) -> None:
    tqdm.write(f"warning: {message}", file=sys.stderr)


class RawPipeline:
    """A synthesiser behind brain extraction, N4 and the quality record.

    Args:
        synthesiser: a :class:`~t7synth.inference.synthesiser.Synthesiser` or ``Fusion``.
        skull_strip: always extract the brain (deepbet), ignoring the scan's zeros.
        n4: always correct the bias field (N4), inside the brain.
        preprocess: ``auto`` (also apply what the model's training inputs had) or ``none``.
        device: where deepbet runs (``cpu`` or ``cuda``).
        models: ``{"Name": ..., "File": ..., "SHA256": ...}`` of each model, for sidecars.
        warn: called with each warning (default: one ``warning:`` line on stderr).
        quality: optional no-reference quality measure ``(volume, brain mask) -> {name:
            value}`` (``predict`` passes MRIQC's CNR, CJV and SNR,
            :func:`t7synth.measures.quality.no_reference_quality`; injected by the
            command, since inference may not import evaluation). Its values for the
            output, and for the input normalised as the model saw it (``input_``
            prefix), become ``qc.tsv`` columns: a scan without a 7T gets a measured
            quality, and the input's beside it says what the model changed.
    """

    def __init__(
        self,
        synthesiser,
        skull_strip: bool = False,
        n4: bool = False,
        preprocess: str = "auto",
        device: str = "cpu",
        models: list[dict] | None = None,
        warn: Callable[[str], None] | None = None,
        quality: Callable[[np.ndarray, np.ndarray], dict[str, float]] | None = None,
    ):
        if preprocess not in PREPROCESS_MODES:
            raise UserError(f"--preprocess {preprocess}: expected one of {', '.join(PREPROCESS_MODES)}")
        self.synthesiser = synthesiser
        self.config = synthesiser.config
        self.skull_strip, self.n4, self.preprocess = skull_strip, n4, preprocess
        self.device = device
        self.models = models or []
        self.warn = warn or _warn
        self.quality = quality
        members = getattr(synthesiser, "synthesisers", [synthesiser])
        self.fused = len(members) > 1
        # The first model's record stands for all (fused models are trained alike).
        self.record = qc.training_record(members[0].model)
        self.rows: list[dict] = []

    def plan(self, array: np.ndarray, mask: np.ndarray | None) -> tuple[bool, bool]:
        """``(extract the brain, correct the bias)`` for a scan (``mask``: the user's)."""
        auto = self.preprocess == "auto" and bool(self.record["fitted"])
        strip = self.skull_strip or (
            auto
            and self.record["skull_stripped"] == training.YES
            and mask is None
            and not qc.looks_skull_stripped(array, None, self.record)
        )
        n4 = self.n4 or (auto and self.record["n4"] == training.YES)
        return strip, n4

    def write(self, job) -> Path:
        """Prepare, synthesise and record ``job`` (see the module's steps)."""
        array, affine = volumes.load_volume(job.source)
        original = volumes.load_image(job.source)
        given = None
        if job.mask is not None:
            given = volumes.brain_mask(job.source, array, affine, Path(job.mask))
        strip, n4 = self.plan(array, given)
        if strip:
            inside = extract_brain(array, str(job.source), self.device)
            stripped = True
        else:
            inside = given if given is not None else volumes.brain_mask(job.source, array, affine)
            # With a mask the network sees only the brain (normalised inside it, zero outside).
            stripped = given is not None or qc.looks_skull_stripped(array, None, self.record)
        prepared = n4_correct(array, inside, spacing(affine)) if n4 else array
        prepared = np.where(inside, prepared, 0.0).astype(np.float32) if (strip or n4) else prepared
        row = qc.quality_row(
            job.source,
            prepared,
            affine,
            inside,
            self.record,
            self.synthesiser_settings("percentiles"),
            self.synthesiser_settings("normalisation"),
            stripped,
            n4,
        )
        mask_file = job.brain_mask_output if (strip or job.brain_mask_output is not None) else None
        if mask_file is None and strip:
            mask_file = brain_mask_output(job.output)
        if mask_file is not None:
            write_mask(inside, affine, original, mask_file)
        if strip or n4:
            with tempfile.TemporaryDirectory(prefix="t7synth-raw-") as folder:
                scan = Path(folder) / f"{nifti_stem(job.source)}.nii"
                mask = Path(folder) / "mask.nii"
                volumes.save_image(volumes.image_like(prepared, affine, original), scan)
                write_mask(inside, affine, original, mask)
                try:
                    written = self.synthesiser.write(replace(job, source=scan, mask=mask))
                except UserError as error:
                    raise UserError(str(error).replace(str(scan), str(job.source))) from None
        else:
            written = self.synthesiser.write(job)
        row["output"] = str(written)
        if self.quality is not None:
            row.update(self.measure_quality(written, prepared, inside))
        if job.uncertainty is not None and Path(job.uncertainty).is_file():
            # Not load_volume: an SD map of identical models is all zeros, which it refuses.

            sd = np.asarray(nib.as_closest_canonical(volumes.load_image(job.uncertainty)).dataobj, dtype=np.float64)
            row["fused_sd_mean"] = float(sd[inside].mean())
        row[qc.FLAGS] = ",".join(qc.flags(row, self.record))
        if row[qc.FLAGS]:
            self.warn(qc.warning_line(row))
        self.rows.append(row)
        if job.sidecar is not None:
            write_sidecar(job, stripped, self.models)
        return written

    def measure_quality(self, written: Path, prepared: np.ndarray, inside: np.ndarray) -> dict[str, float]:
        """:attr:`quality` of the output (as written: RAS+, on the scan's grid, [0, 1])
        and of the input normalised as the model saw it (``input_`` columns)."""
        # Not load_volume: it refuses a constant volume, and an untrained model's output may be.

        synthetic = np.asarray(nib.as_closest_canonical(volumes.load_image(written)).dataobj, dtype=np.float32)
        scaled = normalise(
            torch.from_numpy(np.ascontiguousarray(prepared, dtype=np.float32)[None]),
            torch.from_numpy(inside[None].astype(np.uint8)),
            self.synthesiser_settings("percentiles"),
            self.synthesiser_settings("normalisation"),
        )[0].numpy()
        values = {f"input_{name}": value for name, value in self.quality(scaled, inside).items()}
        return {**self.quality(synthetic, inside), **values}

    def synthesiser_settings(self, name: str):
        members = getattr(self.synthesiser, "synthesisers", [self.synthesiser])
        return getattr(members[0], name)


def write_mask(inside: np.ndarray, affine: np.ndarray, original, path: str | Path) -> Path:
    """A RAS+ brain mask written as uint8 on the ``original`` image's grid and header."""
    image = volumes.image_like(inside.astype(np.float32), affine, original)
    image.set_data_dtype(np.uint8)
    image.header["cal_min"], image.header["cal_max"] = 0.0, 1.0
    image.header["descrip"] = b"t7synth brain mask"
    return volumes.save_image(image, path)


def write_sidecar(job, skull_stripped: bool, models: list[dict]) -> Path:
    """The BIDS JSON sidecar of a derivative, atomically: ``Sources`` (``job.sources``:
    BIDS URIs into the raw dataset), ``SkullStripped``, the models and t7synth's version."""
    data = {
        "Description": "7T-like T1w synthesised by t7synth from the 3T T1w in Sources",
        "Sources": list(job.sources),
        "SkullStripped": bool(skull_stripped),
        "Models": models,
        "T7synthVersion": t7synth.__version__,
    }
    with atomic_path(job.sidecar) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return Path(job.sidecar)
