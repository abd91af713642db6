"""File names of a t7synth dataset folder (BIDS-inspired).

::

    DATASET/participants.tsv                               participant_id, age, sex, [group], [split]
    DATASET/sub-XXX/anat/sub-XXX_acq-3T_T1w.nii.gz         input, on the 7T grid
    DATASET/sub-XXX/anat/sub-XXX_acq-7T_T1w.nii.gz         target
    DATASET/sub-XXX/anat/sub-XXX_desc-brain_mask.nii.gz    optional brain mask
    DATASET/sub-XXX/anat/sub-XXX_desc-tissue_dseg.nii.gz   optional tissue labels (integers, 0 background)
    DATASET/sub-XXX/anat/sub-XXX_desc-tissue_dseg.tsv      optional look-up table of that subject's labels
    DATASET/dseg.tsv                                       look-up table of every subject's labels (BIDS inheritance)
    DATASET/sub-XXX/anat/sub-XXX_label-<CSF|GM|WM>_probseg.nii.gz   tissue probabilities (the demo writes them)

These names are the contract between ``prepare``/``demo`` (which write them), the
data module (which reads them) and ``predict``/``evaluate``; nothing else spells them out.

``prepare`` also writes ``DATASET/dataset_description.json`` (a BIDS derivative
dataset), and reads raw BIDS folders as they come (:mod:`t7synth.data.bids`)::

    RAW/sub-XXX/anat/sub-XXX[_acq-3T]_T1w.nii.gz                    no sessions
    RAW/sub-XXX/ses-YYY/anat/sub-XXX_ses-YYY[_acq-ZZZ]_T1w.nii.gz    sessions
    ... .json sidecars beside them (``MagneticFieldStrength``)

``predict`` on a dataset folder writes a BIDS derivative dataset::

    OUT/dataset_description.json
    OUT/sub-XXX/anat/sub-XXX_desc-synth7T_T1w.nii.gz
"""

from __future__ import annotations

import re
from pathlib import Path

PARTICIPANTS = "participants.tsv"
NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: Output name of a dataset subject's prediction; ``evaluate`` finds it by the label.
SYNTHETIC_SUFFIX = "_desc-synth7T_T1w.nii.gz"
#: Appended to the stem of a plain NIfTI file's name for its prediction.
PLAIN_SUFFIX = "_synth7T.nii.gz"
#: The uncertainty maps ``predict`` writes beside a prediction fused from several
#: models (the voxel-wise SD across them): ``sub-XXX_desc-synth7Tsd_T1w.nii.gz``,
#: ``<stem>_synth7T_sd.nii.gz``, and ``<stem>_sd.nii[.gz]`` beside any other name.
SYNTHETIC_SD_SUFFIX = "_desc-synth7Tsd_T1w.nii.gz"
PLAIN_SD_SUFFIX = "_synth7T_sd.nii.gz"
SUBJECT_PATTERN = re.compile(r"sub-[A-Za-z0-9]+")
SPLITS = ("train", "val", "test")
#: The tissue classes t7synth segments and scores, with their labels in a ``dseg``
#: file of this convention (the demo's, and :mod:`t7synth.measures.segmentation`'s):
#: 0 is background. The keys are BIDS's standard abbreviations.
TISSUE_LABELS = {"CSF": 1, "GM": 2, "WM": 3}
#: Full names, the ``name`` column of a ``dseg.tsv`` look-up table.
TISSUE_NAMES = {"CSF": "Cerebrospinal fluid", "GM": "Gray matter", "WM": "White matter"}
#: The dataset-level look-up table of ``dseg`` labels (BIDS: ``index``, ``name``, ``abbreviation``).
DSEG_TABLE = "dseg.tsv"


def anat_dir(root: Path, subject: str) -> Path:
    """``DATASET/sub-XXX/anat``."""
    return Path(root) / subject / "anat"


def source_path(root: Path, subject: str) -> Path:
    """The 3T input of ``subject``."""
    return anat_dir(root, subject) / f"{subject}_acq-3T_T1w.nii.gz"


def target_path(root: Path, subject: str) -> Path:
    """The 7T target of ``subject``."""
    return anat_dir(root, subject) / f"{subject}_acq-7T_T1w.nii.gz"


def mask_path(root: Path, subject: str) -> Path:
    """The (optional) brain mask of ``subject``."""
    return anat_dir(root, subject) / f"{subject}_desc-brain_mask.nii.gz"


def dseg_path(root: Path, subject: str) -> Path:
    """The (optional) tissue label map of ``subject`` (BIDS ``dseg``: one integer label per voxel)."""
    return anat_dir(root, subject) / f"{subject}_desc-tissue_dseg.nii.gz"


def dseg_table_paths(root: Path, subject: str) -> tuple[Path, Path]:
    """Where the look-up table of ``subject``'s ``dseg`` labels may be, nearest first:
    beside the label map, then at the dataset root (BIDS's inheritance principle)."""
    return anat_dir(root, subject) / f"{subject}_desc-tissue_dseg.tsv", Path(root) / DSEG_TABLE


def probseg_path(root: Path, subject: str, tissue: str) -> Path:
    """The probability map of one tissue (``CSF``, ``GM`` or ``WM``) of ``subject``."""
    return anat_dir(root, subject) / f"{subject}_label-{tissue}_probseg.nii.gz"


#: BIDS: the file that makes a folder a (derivative) dataset, and the BIDS version
#: the files t7synth writes follow.
DATASET_DESCRIPTION = "dataset_description.json"
BIDS_VERSION = "1.10.0"
#: Raw BIDS inputs of ``prepare --raw``: T1-weighted scans and brain masks, in
#: ``sub-XXX/anat`` or ``sub-XXX/ses-YYY/anat``; the sidecar key with the field strength.
T1W_SUFFIX = "_T1w"
MASK_SUFFIX = "_desc-brain_mask"
SESSION_GLOB = "ses-*"
FIELD_STRENGTH_KEY = "MagneticFieldStrength"


def raw_anat_dirs(raw: Path, subject: str) -> list[Path]:
    """The ``anat`` folders of ``subject`` in a raw BIDS folder: its own, then its sessions'."""
    folder = Path(raw) / subject
    return [p for p in [folder / "anat", *sorted(folder.glob(f"{SESSION_GLOB}/anat"))] if p.is_dir()]


def synthetic_path(root: Path, subject: str) -> Path:
    """``OUT/sub-XXX/anat/sub-XXX_desc-synth7T_T1w.nii.gz``: a dataset subject's prediction
    in a BIDS derivative dataset (``predict`` on a dataset folder)."""
    return anat_dir(root, subject) / synthetic_name(subject)


def subject_label(text: str) -> str | None:
    """The first ``sub-XXX`` label inside a file name or path, or ``None``."""
    match = SUBJECT_PATTERN.search(str(text))
    return match.group(0) if match else None


def synthetic_name(subject: str) -> str:
    """``sub-XXX_desc-synth7T_T1w.nii.gz``: the prediction of a dataset subject."""
    return f"{subject}{SYNTHETIC_SUFFIX}"


def uncertainty_path(prediction: Path) -> Path:
    """Where the SD map of a fused ``prediction`` goes: beside it, named by its kind."""
    prediction = Path(prediction)
    for suffix, sd_suffix in ((SYNTHETIC_SUFFIX, SYNTHETIC_SD_SUFFIX), (PLAIN_SUFFIX, PLAIN_SD_SUFFIX)):
        if prediction.name.endswith(suffix):
            return prediction.with_name(prediction.name[: -len(suffix)] + sd_suffix)
    extension = ".nii" if prediction.name.endswith(".nii") else ".nii.gz"
    return prediction.with_name(f"{nifti_stem(prediction)}_sd{extension}")


def is_uncertainty(name: str) -> bool:
    """Whether a file name is an uncertainty map of :func:`uncertainty_path` (not a prediction)."""
    return str(name).endswith((SYNTHETIC_SD_SUFFIX, PLAIN_SD_SUFFIX, "_sd.nii.gz", "_sd.nii"))


def is_nifti(path: Path) -> bool:
    """Whether ``path`` names a NIfTI file (``.nii`` or ``.nii.gz``)."""
    return Path(path).name.endswith(NIFTI_SUFFIXES)


def nifti_stem(path: Path) -> str:
    """The file name without ``.nii``/``.nii.gz``."""
    path = Path(path)
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


# -- predict on raw scans: masks, quality table, BIDS derivatives (docs/applying.md) -------
#: The brain mask ``predict`` writes beside a plain output whose brain it extracted:
#: ``<output stem>_mask.nii.gz``.
PLAIN_MASK_SUFFIX = "_mask.nii.gz"
#: The quality table ``predict`` writes beside its outputs, one row per input.
QC_TABLE = "qc.tsv"
#: BIDS: the file listing what validators skip (``qc.tsv`` is no BIDS file).
BIDSIGNORE = ".bidsignore"
#: BIDS ``desc`` labels of ``predict --bids``'s outputs.
SYNTHETIC_DESC = "synth7T"
BRAIN_MASK_DESC = "brain"
#: Folders of a BIDS dataset that hold no raw data of its subjects.
NON_RAW_FOLDERS = ("derivatives", "sourcedata", "code")


def brain_mask_output(prediction: Path) -> Path:
    """Where ``predict`` writes the brain mask of ``prediction``: the BIDS name
    ``..._desc-brain_mask.nii.gz`` beside a ``..._desc-synth7T_T1w.nii.gz``, else
    ``<output stem>_mask.nii.gz``."""
    prediction = Path(prediction)
    if prediction.name.endswith(SYNTHETIC_SUFFIX):
        return prediction.with_name(prediction.name[: -len(SYNTHETIC_SUFFIX)] + MASK_SUFFIX + ".nii.gz")
    return prediction.with_name(nifti_stem(prediction) + PLAIN_MASK_SUFFIX)


def derivative_path(root: Path, source: Path) -> Path:
    """``ROOT/sub-XXX[/ses-YYY]/anat/<source's entities>_desc-synth7T_T1w.nii.gz``: the
    prediction of a raw BIDS T1w ``source`` (``sub-XXX[_ses-YYY][_acq-...]_T1w.nii[.gz]``)
    in a BIDS derivative dataset. The source's entities are kept (BIDS orders ``desc``
    after all of them), so two T1w of one session (``acq-``, ``run-``) stay apart."""
    stem = nifti_stem(Path(source))
    entities = stem[: -len(T1W_SUFFIX)] if stem.endswith(T1W_SUFFIX) else stem
    subject = subject_label(entities) or entities.split("_")[0]
    session = next((part for part in entities.split("_") if part.startswith("ses-")), None)
    folder = Path(root) / subject / (session or "") / "anat"
    return folder / f"{entities}{SYNTHETIC_SUFFIX}"


def sidecar_path(image: Path) -> Path:
    """A NIfTI file's JSON sidecar (BIDS): the same name with ``.json``."""
    return Path(image).with_name(nifti_stem(Path(image)) + ".json")
