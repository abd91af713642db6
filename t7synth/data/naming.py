"""File names of a t7synth dataset folder (BIDS-inspired).

::

    DATASET/participants.tsv                               participant_id, age, sex, [group], [split]
    DATASET/sub-XXX/anat/sub-XXX_acq-3T_T1w.nii.gz         input, on the 7T grid
    DATASET/sub-XXX/anat/sub-XXX_acq-7T_T1w.nii.gz         target
    DATASET/sub-XXX/anat/sub-XXX_desc-brain_mask.nii.gz    optional brain mask

These names are the contract between ``prepare``/``demo`` (which write them) and the
data module (which reads them); nothing else should spell them out.
"""

from __future__ import annotations

import re
from pathlib import Path

PARTICIPANTS = "participants.tsv"
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
