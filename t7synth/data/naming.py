"""File names of a t7synth dataset folder (BIDS-inspired).

::

    DATASET/participants.tsv                               participant_id, age, sex, [group], [split]
    DATASET/sub-XXX/anat/sub-XXX_acq-3T_T1w.nii.gz         input, on the 7T grid
    DATASET/sub-XXX/anat/sub-XXX_acq-7T_T1w.nii.gz         target
    DATASET/sub-XXX/anat/sub-XXX_desc-brain_mask.nii.gz    optional brain mask

These names are the contract between ``prepare``/``demo`` (which write them), the
data module (which reads them) and ``predict``/``evaluate``; nothing else spells them out.
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
SUBJECT_PATTERN = re.compile(r"sub-[A-Za-z0-9]+")
SPLITS = ("train", "val", "test")


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


def subject_label(text: str) -> str | None:
    """The first ``sub-XXX`` label inside a file name or path, or ``None``."""
    match = SUBJECT_PATTERN.search(str(text))
    return match.group(0) if match else None


def synthetic_name(subject: str) -> str:
    """``sub-XXX_desc-synth7T_T1w.nii.gz``: the prediction of a dataset subject."""
    return f"{subject}{SYNTHETIC_SUFFIX}"


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
