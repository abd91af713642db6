"""Find the paired subjects of a dataset folder, read ``participants.tsv``, split by subject.

A dataset is trusted only after each volume has been read in full: a truncated
``.nii.gz`` fails only when its data is decompressed, so checking headers is not
enough. Every problem a user can cause ends in a :class:`~t7synth.errors.UserError`
that names the file.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

from t7synth.data import naming
from t7synth.errors import UserError
from t7synth.textfiles import read_table


@dataclass(frozen=True)
class SubjectRecord:
    """One paired subject: its files and what ``participants.tsv`` says of it.

    ``sex`` is 1.0 for female and 0.0 for male (the paper's token), 0.5 if unknown;
    ``age`` is in years, 0.0 if unknown; ``split`` is ``train``/``val``/``test`` or
    ``None`` when the dataset leaves splitting to t7synth. ``dseg`` is the subject's
    optional tissue label map and ``dseg_table`` its look-up table (beside it, else the
    dataset's ``dseg.tsv``; ``None`` if neither exists), which ``evaluate`` scores
    segmentations against (:mod:`t7synth.measures.segmentation`). ``site`` is the
    ``site`` column (where the scans were acquired; ``None`` if absent), which
    cross-validation by site holds out (:mod:`t7synth.data.folds`).
    """

    subject: str
    source: Path
    target: Path
    mask: Path | None
    age: float = 0.0
    sex: float = 0.5
    split: str | None = None
    dseg: Path | None = None
    dseg_table: Path | None = None
    site: str | None = None


def discover(root: str | Path) -> list[SubjectRecord]:
    """List the subjects of a dataset folder, checking that each has both partners.

    Subjects come from ``participants.tsv`` when it exists, else from the ``sub-*``
    folders. Files are not read here; see :func:`~t7synth.data.volumes.load_volume` and
    :func:`~t7synth.data.volumes.check_pair`.

    Raises:
        UserError: a missing folder, a malformed ``participants.tsv``, a subject with
            a missing 3T or 7T file, or no subjects at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset folder not found: {root}")
    table = root / naming.PARTICIPANTS
    folders = sorted(p.name for p in root.glob("sub-*") if p.is_dir())
    if table.is_file():
        rows = read_participants(table)
        check_listed(root, folders, {row["participant_id"] for row in rows}, table)
    else:
        rows = [{"participant_id": name} for name in folders]
    records = []
    for row in rows:
        subject = row["participant_id"]
        source = naming.source_path(root, subject)
        target = naming.target_path(root, subject)
        for path, partner in ((source, target), (target, source)):
            if not path.is_file():
                raise UserError(f"missing file {path} (the partner of {partner.name} for {subject})")
        mask = naming.mask_path(root, subject)
        dseg = naming.dseg_path(root, subject)
        lookup = next((p for p in naming.dseg_table_paths(root, subject) if p.is_file()), None)
        age, sex, split = parse_participant(row, table, subject)
        records.append(
            SubjectRecord(
                subject=subject,
                source=source,
                target=target,
                mask=mask if mask.is_file() else None,
                age=age,
                sex=sex,
                split=split,
                dseg=dseg if dseg.is_file() else None,
                dseg_table=lookup if dseg.is_file() else None,
                site=None if (row.get("site") or "").strip() in ("", "n/a") else row["site"].strip(),
            )
        )
    if not records:
        raise UserError(f"no subjects found in {root} (expected sub-*/anat/sub-*_acq-3T_T1w.nii.gz)")
    check_split_column({r.subject: r.split for r in records}, table)
    return records


def check_listed(root: Path, folders: list[str], listed: set[str], table: Path) -> None:
    """Refuse subject folders that ``participants.tsv`` does not list.

    ``fit`` and ``prepare`` treat such a folder alike: it is an error, not a subject
    silently left out of training (or of the preparation).

    Raises:
        UserError: naming the first unlisted folders and the table.
    """
    unlisted = [name for name in folders if name not in listed]
    if unlisted:
        shown = ", ".join(unlisted[:3]) + (f" and {len(unlisted) - 3} more" if len(unlisted) > 3 else "")
        raise UserError(
            f"{shown} in {root} {'has' if len(unlisted) == 1 else 'have'} no row in {table}; add one or move the "
            "folder away"
        )


def check_split_column(splits: dict[str, str | None], table: Path) -> None:
    """A ``split`` column is all or nothing: filled for every subject, or empty for all.

    A split column with any value is the truth for the whole dataset; a subject with
    an empty cell would otherwise be drawn into a random split, where a subject meant
    for testing could end up trained on. An entirely empty column lets t7synth split.

    Raises:
        UserError: naming the subjects with an empty cell.
    """
    empty = [subject for subject, split in splits.items() if not split]
    if empty and len(empty) < len(splits):
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise UserError(
            f"{table}: the split column is empty for {shown}; fill in train, val or test for every subject, "
            "or leave the whole column empty to let t7synth split by data.split_seed"
        )


def read_participants(table: Path) -> list[dict[str, str]]:
    """The rows of a ``participants.tsv`` (all columns, as strings), checked for a
    ``participant_id`` column of unique ``sub-<label>`` values.

    Raises:
        UserError: naming the table and the bad column or value.
    """
    # UTF-8 (with the byte-order mark spreadsheet programs write), else Windows-1252 text.
    read = read_table(table, delimiter="\t", complete=False, legacy=True)
    if "participant_id" not in read.fieldnames:
        raise UserError(f"{table} has no participant_id column (columns: {read.fieldnames or None})")
    rows = [row for row in read.rows if (row.get("participant_id") or "").strip()]
    seen = set()
    for row in rows:
        subject = row["participant_id"].strip()
        if not naming.SUBJECT_PATTERN.fullmatch(subject):
            raise UserError(f"{table}: participant_id {subject!r} is not of the form sub-<label>")
        if subject in seen:
            raise UserError(f"{table}: participant_id {subject} appears twice")
        seen.add(subject)
        row["participant_id"] = subject
    return rows


def parse_participant(row: dict[str, str | None], table: Path, subject: str) -> tuple[float, float, str | None]:
    """``(age, sex, split)`` of one ``participants.tsv`` row, as :class:`SubjectRecord`
    holds them (``prepare`` checks its input tables with this too).

    Raises:
        UserError: an age that is not a non-negative number, a sex other than M/F (or
            unknown), a split other than train/val/test.
    """
    return (
        _parse_age(row.get("age"), table, subject),
        _parse_sex(row.get("sex"), table, subject),
        _parse_split(row.get("split"), table, subject),
    )


def _parse_age(value: str | None, table: Path, subject: str) -> float:
    if value is None or value.strip() in ("", "n/a", "NA", "nan"):
        return 0.0
    try:
        age = float(value)
    except ValueError:
        raise UserError(f"{table}: age {value!r} of {subject} is not a number") from None
    if not math.isfinite(age) or age < 0:
        raise UserError(f"{table}: age {value!r} of {subject} is not a valid age")
    return age


def _parse_sex(value: str | None, table: Path, subject: str) -> float:
    text = (value or "").strip().upper()
    if text in ("F", "FEMALE"):
        return 1.0
    if text in ("M", "MALE"):
        return 0.0
    if text in ("", "N/A", "NA", "O", "OTHER", "U"):
        return 0.5
    raise UserError(f"{table}: sex {value!r} of {subject} is not M or F")


def _parse_split(value: str | None, table: Path, subject: str) -> str | None:
    text = (value or "").strip().lower()
    if not text:
        return None
    if text not in naming.SPLITS:
        raise UserError(f"{table}: split {value!r} of {subject} is not one of {', '.join(naming.SPLITS)}")
    return text


def assign_splits(
    records: list[SubjectRecord], val_fraction: float, test_fraction: float, seed: int, require_train: bool = True
) -> dict[str, list[SubjectRecord]]:
    """Split by subject: ``participants.tsv``'s ``split`` column if it has any value (then
    every row must have one, see :func:`check_split_column`), else a seeded shuffle into
    test, val and train (at least one training subject).

    ``require_train=False`` accepts a dataset without training subjects (an external
    test site that ``evaluate`` scores); training needs them."""
    if any(r.split for r in records):
        check_split_column({r.subject: r.split for r in records}, Path(naming.PARTICIPANTS))
        splits = {name: [r for r in records if r.split == name] for name in ("train", "val", "test")}
    else:
        shuffled = sorted(records, key=lambda r: r.subject)
        random.Random(seed).shuffle(shuffled)
        n = len(shuffled)
        n_test = max(1, round(test_fraction * n)) if n >= 3 and test_fraction > 0 else 0
        n_val = max(1, round(val_fraction * n)) if n - n_test >= 2 and val_fraction > 0 else 0
        splits = {
            "test": shuffled[:n_test],
            "val": shuffled[n_test : n_test + n_val],
            "train": shuffled[n_test + n_val :],
        }
    if require_train and not splits["train"]:
        raise UserError("the dataset has no training subjects (check the split column of participants.tsv)")
    return splits
