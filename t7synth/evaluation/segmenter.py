"""Any external segmenter's per-structure agreement: ``evaluate --segmenter 'CMD'``.

The authors' follow-up scores every model with FreeSurfer's SynthSeg
(``mri_synthseg --i {input} --o {output} --robust --cpu``) on the synthetic image
against SynthSeg of the real 7T, per structure. t7synth cannot ship SynthSeg (its
weights come with FreeSurfer), so it runs whatever the user has: a command template
with ``{input}`` and ``{output}`` (SynthSeg, FastSurfer, or any script that writes a
label map numbered as FreeSurfer's colour table).

For each subject, :class:`StructureAgreement` writes every volume as it is scored (the
preprocessed 7T, and each guess: the synthetic 7T clamped to [0, 1], the 3T, the LUT)
to a NIfTI file on the preprocessed grid, runs the segmenter on it through
:class:`Segmenter`, and reads the label map back **on its own grid** (SynthSeg writes
1 mm crops whatever the input), resampled with nearest neighbour onto the 7T's grid
(:func:`labels_on_grid`, ``nibabel.processing.resample_from_to``, order 0). Scores per
structure of :data:`~t7synth.scores.STRUCTURES` (label numbers and names from
FreeSurfer's colour table, a subset shipped as ``data/FreeSurferColorLUT_subset.tsv``):

* ``seg_dice_<structure>``: Dice of the guess's structure against the 7T's;
* ``seg_voldiff_<structure>``: signed volume difference ``100 (V - V_7T) / V_7T`` in %;
* ``seg_true_dice_<structure>``: Dice against the dataset's manual labels (its
  ``dseg`` with a ``dseg.tsv`` naming FreeSurfer structures), where it has them.

A structure absent from both label maps scores Dice 1 and difference 0 (nothing to
disagree on, :func:`~t7synth.measures.segmentation.dice`'s convention).

Results are cached by content: the key is the SHA-256 of the command template and the
input file's bytes (:func:`~t7synth.data.volumes.write_nifti` writes identical arrays
as identical bytes), so a rerun, or another model's evaluation of the same subjects,
never runs the segmenter again on the 3T, the 7T or the LUT.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from t7synth.data.volumes import write_nifti
from t7synth.errors import UserError
from t7synth.files import atomic_path, cache_root
from t7synth.measures.segmentation import dice
from t7synth.measures.sharpness import as_array
from t7synth.scores import STRUCTURES

#: FreeSurfer's colour table, the subset of the structures t7synth names (index, name, R, G, B, A).
COLOUR_TABLE = Path(__file__).parent / "data" / "FreeSurferColorLUT_subset.tsv"
#: FreeSurfer structure names (without the hemisphere) -> t7synth's structure names.
#: ``Thalamus-Proper`` is FreeSurfer 6's name of ``Thalamus``.
FREESURFER_NAMES = {
    "amygdala": "amygdala",
    "hippocampus": "hippocampus",
    "thalamus": "thalamus",
    "thalamusproper": "thalamus",
    "caudate": "caudate",
    "putamen": "putamen",
    "pallidum": "pallidum",
    "lateralventricle": "lateral_ventricle",
    "cerebralcortex": "cortex",
    "cerebralwhitematter": "white_matter",
}
#: The label maps' cache under :func:`~t7synth.files.cache_root`.
CACHE_FOLDER = "segmentations"
#: How much of a failing segmenter's last error line the one-line message keeps.
ERROR_CHARS = 200


def structure_of(name: str) -> str | None:
    """t7synth's structure for a FreeSurfer label name (``Left-Amygdala`` -> ``left_amygdala``),
    else ``None``; case, hyphens, underscores and spaces are ignored."""
    match = re.fullmatch(r"(left|right)[-_ ]?(.+)", name.strip().lower())
    if not match:
        return None
    key = FREESURFER_NAMES.get(re.sub(r"[^a-z]", "", match.group(2)))
    return f"{match.group(1)}_{key}" if key else None


def read_structures(path: Path) -> dict[str, set[int]]:
    """``{structure: label numbers}`` from a table with ``index`` and ``name`` columns
    (the shipped colour table, or a dataset's BIDS ``dseg.tsv``); rows naming no
    structure of :data:`~t7synth.scores.STRUCTURES` are ignored.

    Raises:
        UserError: an unreadable table, one without those columns, or a non-integer index.
    """
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            fields, rows = reader.fieldnames or [], list(reader)
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {path}: {error}") from None
    if "index" not in fields or "name" not in fields:
        raise UserError(f"{path} needs the columns index and name, has {fields}")
    structures: dict[str, set[int]] = {}
    for row in rows:
        structure = structure_of(row["name"] or "")
        if structure is None:
            continue
        try:
            structures.setdefault(structure, set()).add(int((row["index"] or "").strip()))
        except ValueError:
            raise UserError(f"{path}: index {row['index']!r} is not an integer") from None
    return structures


def freesurfer_structures() -> dict[str, set[int]]:
    """The label numbers of every structure, from the shipped FreeSurfer colour table."""
    return read_structures(COLOUR_TABLE)


def volume_difference(labels: np.ndarray, reference: np.ndarray) -> float:
    """Signed ``100 (V - V_ref) / V_ref`` in % of two boolean masks (0 when both are
    empty, infinite when only the reference is)."""
    volume, reference_volume = int(np.count_nonzero(labels)), int(np.count_nonzero(reference))
    if reference_volume == 0:
        return 0.0 if volume == 0 else math.inf
    return 100.0 * (volume - reference_volume) / reference_volume


def agreement(labels: np.ndarray, reference: np.ndarray, structures: dict[str, set[int]]) -> dict[str, float]:
    """``seg_dice_<s>`` and ``seg_voldiff_<s>`` of two FreeSurfer-numbered label maps on one grid."""
    scores = {}
    for structure in STRUCTURES:
        numbers = sorted(structures.get(structure, ()))
        mine, theirs = np.isin(labels, numbers), np.isin(reference, numbers)
        scores[f"seg_dice_{structure}"] = dice(mine, theirs)
        scores[f"seg_voldiff_{structure}"] = volume_difference(mine, theirs)
    return scores


def manual_agreement(
    labels: np.ndarray, manual: np.ndarray, structures: dict[str, set[int]], manual_structures: dict[str, set[int]]
) -> dict[str, float]:
    """``seg_true_dice_<s>`` for each structure the manual labels' table names."""
    return {
        f"seg_true_dice_{structure}": dice(
            np.isin(labels, sorted(structures.get(structure, ()))), np.isin(manual, sorted(numbers))
        )
        for structure, numbers in manual_structures.items()
        if structure in STRUCTURES
    }


def labels_on_grid(path: Path, shape, affine) -> np.ndarray:
    """The label map in ``path`` on the grid ``(shape, affine)``: read on its own grid,
    resampled by nearest neighbour (``nibabel.processing.resample_from_to``, order 0),
    outside its field of view 0.

    Raises:
        UserError: an unreadable or non-3D label map.
    """
    import nibabel as nib
    from nibabel.processing import resample_from_to

    try:
        image = nib.load(str(path))
        image = nib.Nifti1Image(np.rint(np.asarray(image.dataobj, dtype=np.float64)).astype(np.int32), image.affine)
    except Exception as error:  # nibabel raises many types for broken files
        raise UserError(f"cannot read the label map {path}: {error}") from None
    if image.ndim != 3:
        raise UserError(f"the label map {path} is not 3D (shape {image.shape})")
    resampled = resample_from_to(image, (tuple(shape), np.asarray(affine, dtype=np.float64)), order=0, cval=0)
    return np.rint(np.asarray(resampled.dataobj)).astype(np.int32)


class Segmenter:
    """Runs a segmentation command template, caching its label maps by content.

    Args:
        template: a command with ``{input}`` and ``{output}``, split like a shell would
            (:func:`shlex.split`) but run without a shell.
        cache_dir: where label maps are kept (default: ``$T7SYNTH_CACHE/segmentations``).

    Raises:
        UserError: a template without ``{input}`` or ``{output}``, one that does not
            parse, or whose program is not found, naming ``--segmenter``.
    """

    def __init__(self, template: str, cache_dir: str | Path | None = None):
        self.template = template
        try:
            self.argv = shlex.split(template)
        except ValueError as error:
            raise UserError(f"--segmenter {template!r}: {error}") from None
        missing = [field for field in ("{input}", "{output}") if field not in template]
        if not self.argv or missing:
            raise UserError(f"--segmenter {template!r} needs {' and '.join(missing or ['a command'])}")
        if shutil.which(self.argv[0]) is None:
            raise UserError(f"--segmenter {template!r}: command not found: {self.argv[0]}")
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root() / CACHE_FOLDER
        #: How many times the command ran (the rest came from the cache).
        self.runs = 0

    def key(self, path: Path) -> str:
        """The cache key of ``path``: SHA-256 of the template and the file's bytes."""
        digest = hashlib.sha256(self.template.encode("utf-8") + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def __call__(self, path: Path) -> Path:
        """The label map of the volume in ``path``: from the cache, else by running the command.

        Raises:
            UserError: the command fails or writes no readable output (one line naming it).
        """
        cached = self.cache_dir / f"{self.key(path)}.nii.gz"
        if cached.is_file():
            return cached
        with tempfile.TemporaryDirectory(prefix="t7synth-seg-") as folder:
            output = Path(folder) / "labels.nii.gz"
            argv = [token.replace("{input}", str(path)).replace("{output}", str(output)) for token in self.argv]
            try:
                result = subprocess.run(argv, capture_output=True, text=True, errors="replace", check=False)
            except OSError as error:
                raise UserError(f"--segmenter {self.template!r} could not run: {error.strerror}") from None
            self.runs += 1
            if result.returncode != 0:
                last = next((line for line in reversed(result.stderr.splitlines()) if line.strip()), "")
                raise UserError(
                    f"--segmenter {self.template!r} failed (exit {result.returncode}) on {path.name}"
                    + (f": {last.strip()[:ERROR_CHARS]}" if last else "")
                )
            if not output.is_file() or output.stat().st_size == 0:
                raise UserError(f"--segmenter {self.template!r} wrote no {{output}} for {path.name}")
            try:  # readable and 3D, before it is cached
                labels_on_grid(output, (1, 1, 1), np.eye(4))
            except UserError as error:
                raise UserError(f"--segmenter {self.template!r} on {path.name}: {error}") from None
            with atomic_path(cached) as tmp:
                shutil.copyfile(output, tmp)
        return cached

    def labels(self, volume, affine, folder: Path, name: str) -> np.ndarray:
        """Segment ``volume`` (written to ``folder/name.nii.gz`` on ``affine``'s grid) and
        return its labels on that grid."""
        array = np.ascontiguousarray(as_array(volume), dtype=np.float32)
        path = folder / f"{name}.nii.gz"
        write_nifti(path, array, np.asarray(affine, dtype=np.float64))
        return labels_on_grid(self(path), array.shape, affine)


class StructureAgreement:
    """Per-structure scores of one subject's guesses against its 7T's segmentation.

    Args:
        segmenter: the :class:`Segmenter`.
        target: the preprocessed 7T (array or tensor, leading 1s allowed).
        affine: the preprocessed grid's affine (RAS+).
        manual: optional manual label map on the same grid and its ``{structure: labels}``.
    """

    def __init__(self, segmenter: Segmenter, target, affine, manual: tuple[np.ndarray, dict] | None = None):
        self.segmenter = segmenter
        self.affine = np.asarray(affine, dtype=np.float64)
        self.structures = freesurfer_structures()
        self._folder = tempfile.TemporaryDirectory(prefix="t7synth-seg-in-")
        self.reference = segmenter.labels(target, self.affine, Path(self._folder.name), "target")
        self.manual = manual

    def __call__(self, guess, name: str) -> dict[str, float]:
        """Every per-structure score of ``guess`` (``name`` names its temporary file)."""
        labels = self.segmenter.labels(guess, self.affine, Path(self._folder.name), name)
        scores = agreement(labels, self.reference, self.structures)
        if self.manual is not None:
            scores.update(manual_agreement(labels, self.manual[0], self.structures, self.manual[1]))
        return scores

    def close(self) -> None:
        """Remove the temporary input files."""
        self._folder.cleanup()
