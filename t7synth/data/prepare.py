"""Raw paired 3T/7T scans to the dataset folder ``fit`` reads: what ``prepare`` runs.

Examples::

    python -m t7synth.prepare --raw /data/raw --out /data/paired
    python -m t7synth.prepare --pairs pairs.tsv --out /data/paired --workers 2
    python -m t7synth.prepare --raw /data/coregistered --out /data/paired --no-register
    python -m t7synth.prepare --raw /data/raw --out /data/paired --overwrite   # redo every subject

Two ways to name the inputs, each scan on its own grid (resolution, field of view,
orientation):

- ``--raw DIR``, a BIDS folder as it comes: laid out like a dataset folder
  (``DIR/sub-XXX/anat/sub-XXX_acq-3T_T1w.nii[.gz]`` and ``sub-XXX_acq-7T_T1w.nii[.gz]``)
  or with sessions (``DIR/sub-XXX/ses-YYY/anat/sub-XXX_ses-YYY_T1w.nii[.gz]``), the field
  strength of each scan read from its ``ses-``/``acq-`` label, its JSON sidecar
  (``MagneticFieldStrength``) or the ``--field-strength`` mapping (see
  :mod:`t7synth.data.bids`); optionally ``*_desc-brain_mask.nii[.gz]``, and optionally
  ``DIR/participants.tsv`` (copied through with all its columns).
- ``--pairs FILE`` (``.tsv`` or ``.csv``) with columns ``subject``, ``source`` (3T file),
  ``target`` (7T file) and optionally ``mask``, ``age``, ``sex``, ``split`` and any others,
  which go to ``participants.tsv``. Relative paths start at the table's folder; a
  subject without the ``sub-`` prefix gets it.

Per subject (:func:`prepare_subject`, registration in :mod:`t7synth.data.registration`):
both scans are reoriented to RAS+, the 3T is registered rigidly (6 degrees of freedom) to
the 7T and resampled onto the 7T's grid; the 7T is written unchanged apart from the
reorientation; a given brain mask (on the 3T's or the 7T's grid) is carried onto the 7T
grid by nearest neighbour.

Output, ``--out DIR``::

    DIR/participants.tsv  DIR/sub-XXX/anat/...   the dataset (names: t7synth.data.naming)
    DIR/dataset_description.json                 BIDS: a derivative dataset made by t7synth
    DIR/prepare.tsv                              one QC row per subject (motion, correlation)
    DIR/qc/sub-XXX.png                           3T before and after registration, 7T, checkerboard
    DIR/qc/sub-XXX_3Tto7T.tfm                    the rigid transform (ITK text format, LPS mm)
    DIR/qc/sub-XXX.json                          the QC row and what the subject was made from

Every input of the subjects to prepare is read in full and checked before anything is
written, so a broken file stops the command with one ``error:`` line naming it and
writes nothing. Each subject
is written atomically; a re-run skips subjects already made from the same files with
the same settings (``--overwrite`` redoes them), so an interrupted run resumes where it
stopped. The first line printed is the dataset folder, the second a summary.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm.auto import tqdm

from t7synth.data import naming, volumes
from t7synth.data.bids import find_scans, parse_field_map, write_description
from t7synth.data.layout import check_listed, check_split_column, parse_participant, read_participants
from t7synth.data.registration import correlation, describe_motion, head_region, register_rigid, resample_onto, to_sitk
from t7synth.errors import UserError
from t7synth.files import atomic_dir, atomic_path, check_writable, remove_stale_temporaries
from t7synth.plotting import save_panels
from t7synth.textfiles import read_json, read_table

#: Bumped when the output for the same inputs changes; part of every subject's record,
#: so a re-run after an upgrade prepares the subjects again instead of skipping them.
PREPARE_VERSION = 1
#: The per-run QC table (one row per subject) and the folder of per-subject QC files.
QC_TABLE = "prepare.tsv"
QC_DIR = "qc"
#: Columns of a ``--pairs`` table that describe files, not the participant.
FILE_COLUMNS = ("subject", "source", "target", "mask")
INTERPOLATIONS = ("linear", "bspline")
#: A subject is flagged for a look when registration lowers the 3T-7T correlation
#: inside the head by more than this (Pearson's r, unitless).
CORRELATION_DROP = 0.02
#: ... or when the registered 3T still agrees poorly with the 7T (r below this) and
#: registration barely improved it (by less than CORRELATION_GAIN): the two scans are
#: then unlikely to show the same head (a wrong file, a pure-noise or empty-looking 7T).
#: Same-head 3T/7T pairs correlate well above 0.5 once aligned, whatever the contrast.
LOW_CORRELATION = 0.5
CORRELATION_GAIN = 0.1


@dataclass(frozen=True)
class RawSubject:
    """One subject's inputs and its ``participants.tsv`` row (strings, as read).

    ``row`` holds every participant column except ``participant_id``.
    """

    subject: str
    source: Path
    target: Path
    mask: Path | None = None
    row: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PairJob:
    """What one worker needs to prepare one subject (picklable for ``--workers``)."""

    subject: str
    source: Path
    target: Path
    mask: Path | None
    mask_grid: str | None  # "3T" or "7T": the scan whose grid the mask is on
    out: Path
    register: bool
    interpolation: str
    made_from: dict
    threads: int | None = None


def prepare(
    out: Path,
    raw: Path | None = None,
    pairs: Path | None = None,
    register: bool = True,
    interpolation: str = "linear",
    overwrite: bool = False,
    workers: int = 1,
    progress: bool = True,
    field_strength: str | None = None,
) -> str:
    """Plan, check every input, prepare the pending subjects, write the tables.

    Args:
        out: the dataset folder to write.
        raw, pairs: the inputs: a raw folder laid out like a dataset, or a table.
        register: register each 3T to its 7T (else only resample by the affines).
        interpolation: ``linear`` or ``bspline`` for the 3T.
        overwrite: prepare complete subjects again.
        workers: subjects prepared in parallel processes.
        progress: progress bars.
        field_strength: ``--raw`` only: ``ENTITY-LABEL=3T|7T,...`` for scans whose
            names and sidecars do not say their field strength (:mod:`t7synth.data.bids`).

    Returns:
        The summary to print (see :func:`describe_prepared`).
    """
    if workers < 1:
        raise UserError(f"--workers {workers}: must be at least 1")

    if field_strength and raw is None:
        raise UserError("--field-strength applies to --raw; a --pairs table names each file's role itself")
    mapping = parse_field_map(field_strength)
    subjects, columns = plan_from_raw(raw, mapping) if raw is not None else plan_from_table(pairs)
    out = check_output(out, subjects)
    check_writable(out)
    # What a killed run left: hidden temporary subject folders, QC files and tables.
    for folder in (out, out / QC_DIR):
        remove_stale_temporaries(folder)
    stamps = {s.subject: made_from(s, register, interpolation) for s in subjects}
    pending = [s for s in subjects if overwrite or not subject_is_prepared(out, s, stamps[s.subject])]
    # Nothing is written before every pending input has been read in full and checked.
    mask_grids = check_inputs(pending, register, progress)
    threads = None if workers == 1 else max(1, (os.cpu_count() or 1) // workers)
    jobs = [
        PairJob(
            s.subject,
            s.source,
            s.target,
            s.mask,
            mask_grids[s.subject],
            out,
            register,
            interpolation,
            stamps[s.subject],
            threads,
        )
        for s in pending
    ]
    prepare_subjects(jobs, workers, progress)
    write_participants(out, subjects, columns)

    write_description(
        out,
        f"t7synth paired 3T/7T T1w: {out.name}",
        "prepare: 3T registered rigidly to the 7T and resampled onto its grid"
        if register
        else "prepare: 3T resampled onto the 7T grid by the scanner coordinates",
        raw,
    )
    rows = write_qc_table(out, subjects)
    return describe_prepared(out, subjects, len(jobs), rows)


def describe_prepared(out: Path, subjects: list[RawSubject], prepared: int, rows: list[dict]) -> str:
    """The summary line, plus one line per subject whose registration needs a look and
    a note on subject folders in ``out`` that are no longer among the inputs."""
    skipped = len(subjects) - prepared
    lines = [
        (
            f"{len(subjects)} subjects in {naming.PARTICIPANTS}: {prepared} prepared, "
            f"{skipped} already complete and skipped"
        )
        + (" (--overwrite prepares them again)" if skipped else "")
        + f"; QC in {QC_TABLE} and {QC_DIR}/"
    ]
    for row in rows:
        if row.get("qc", "ok") != "ok":
            lines.append(f"look at {QC_DIR}/{row['subject']}.png: {row['qc']}")
    known = {s.subject for s in subjects}
    strays = sorted(p.name for p in out.glob("sub-*") if p.is_dir() and p.name not in known)
    if strays:
        lines.append(
            f"note: {', '.join(strays)} in {out} are not among the inputs and not listed in {naming.PARTICIPANTS}; "
            "fit refuses unlisted subject folders: move them away"
        )
    return "\n".join(lines)


# -- inputs -------------------------------------------------------------------------------
def plan_from_raw(raw: Path, mapping: dict | None = None) -> tuple[list[RawSubject], list[str]]:
    """The subjects of a raw BIDS folder, and its participant columns.

    Each subject's scans are found by :func:`t7synth.data.bids.find_scans` (with the
    ``--field-strength`` ``mapping``).

    Subjects are the ``sub-*`` folders; when ``participants.tsv`` exists, its rows and
    the folders must name the same subjects (a folder without a row, or a row without
    files, is an error rather than a silently dropped subject).

    Raises:
        UserError: no folder, no subjects, a missing 3T or 7T file, an ambiguous file
            (both ``.nii`` and ``.nii.gz``), or a malformed ``participants.tsv``.
    """

    raw = raw.expanduser()
    if not raw.is_dir():
        raise UserError(f"raw folder not found: {raw}")
    folders = sorted(p.name for p in raw.glob("sub-*") if p.is_dir())
    for name in folders:
        if not naming.SUBJECT_PATTERN.fullmatch(name):
            raise UserError(f"{raw / name}: subject folders are named sub-<letters and digits>")
    table = raw / naming.PARTICIPANTS
    rows = {row.pop("participant_id"): row for row in read_participants(table)} if table.is_file() else {}
    if table.is_file():
        check_listed(raw, folders, set(rows), table)  # as fit's discover does
        order = list(rows)
    else:
        order = folders
    if not order:
        raise UserError(
            f"no subjects found in {raw} (expected sub-*/anat/sub-*_acq-3T_T1w.nii.gz or "
            "sub-*/ses-*/anat/sub-*_ses-*_T1w.nii.gz; for another layout, list the pairs in a table: --pairs)"
        )
    subjects = []
    for subject in order:
        if not (raw / subject).is_dir():
            raise UserError(f"{subject} is listed in {table} but {raw / subject} does not exist")
        source, target, mask = find_scans(raw, subject, mapping)
        row = {key: (value or "").strip() for key, value in rows.get(subject, {}).items() if key}
        parse_participant(row, table, subject)  # checked now, before anything is written
        subjects.append(RawSubject(subject, source, target, mask, row))
    check_split_column({s.subject: s.row.get("split") for s in subjects}, table)
    columns = [key for key in next(iter(rows.values())) if key] if rows else []
    return subjects, columns


def plan_from_table(table: Path) -> tuple[list[RawSubject], list[str]]:
    """The subjects of a ``--pairs`` table, and its participant columns.

    Raises:
        UserError: an unknown extension, a missing column, an empty cell in a required
            column, a bad or duplicate subject label, a file that does not exist.
    """

    table = table.expanduser()
    if not table.is_file():
        raise UserError(f"pairs table not found: {table}")
    delimiters = {".tsv": "\t", ".txt": "\t", ".csv": ","}
    if table.suffix.lower() not in delimiters:
        raise UserError(f"{table}: a pairs table is .tsv or .csv")
    # UTF-8 (a byte-order mark accepted), else the Windows-1252 a European spreadsheet
    # program writes: accented names read right; binary or other bytes are one line.
    read = read_table(table, delimiter=delimiters[table.suffix.lower()], complete=False, legacy=True)
    header = [name.strip() for name in read.fieldnames]
    missing = [name for name in FILE_COLUMNS[:3] if name not in header]
    if missing:
        raise UserError(f"{table} has no column {', '.join(missing)} (columns: {', '.join(header) or 'none'})")
    rows = [
        ({(k or "").strip(): (v or "").strip() for k, v in row.items()}, line)
        for row, line in zip(read.rows, read.lines)
    ]
    subjects, lines = [], {}
    for row, line in rows:
        if not any(row.values()):
            continue  # a blank line, e.g. at the end of a hand-edited file
        for name in FILE_COLUMNS[:3]:
            if not row.get(name):
                raise UserError(f"{table}, line {line}: column {name} is empty")
        subject = row["subject"] if row["subject"].startswith("sub-") else f"sub-{row['subject']}"
        if not naming.SUBJECT_PATTERN.fullmatch(subject):
            raise UserError(
                f"{table}, line {line}: subject {row['subject']!r} must be letters and digits (optionally after sub-)"
            )
        if subject in lines:
            raise UserError(f"{table}, line {line}: subject {subject} already appears on line {lines[subject]}")
        lines[subject] = line
        paths = {name: _table_path(table, row[name]) for name in FILE_COLUMNS[1:] if row.get(name)}
        for name, path in paths.items():
            if not path.is_file():
                raise UserError(f"{table}, line {line}: {name} file of {subject} not found: {path}")
        participant = {k: v for k, v in row.items() if k and k not in FILE_COLUMNS}
        parse_participant(participant, table, subject)  # checked now, before anything is written
        subjects.append(RawSubject(subject, paths["source"], paths["target"], paths.get("mask"), participant))
    if not subjects:
        raise UserError(f"{table} lists no subjects")
    check_split_column({s.subject: s.row.get("split") for s in subjects}, table)
    return subjects, [name for name in header if name and name not in FILE_COLUMNS]


def _table_path(table: Path, text: str) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else table.parent / path


def check_output(out: Path, subjects: list[RawSubject]) -> Path:
    """Refuse an output folder that would destroy anything that is not ours.

    ``out`` may be new, empty, or an earlier prepare output (it has ``qc/``); hidden
    entries (temporary names of an interrupted run) do not count. No input may lie
    inside it, which also rules out ``--out`` equal to ``--raw``: subjects are replaced
    as a whole.
    """
    out = out.expanduser()
    for parent in [out, *out.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"output path {parent} exists and is not a folder")
            break
    resolved = out.resolve()
    for subject in subjects:
        for path in (subject.source, subject.target, subject.mask):
            if path is not None and path.resolve().is_relative_to(resolved):
                raise UserError(f"input {path} lies inside the output folder {out}; choose another --out")
    if out.is_dir() and not (out / QC_DIR).is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise UserError(
            f"{out} is not empty and was not written by prepare (no {QC_DIR}/ folder); choose a new or empty folder"
        )
    return out


def made_from(subject: RawSubject, register: bool, interpolation: str) -> dict:
    """What a prepared subject depends on: its input files (path, size, modification
    time) and the settings. A stored subject is reused only when this is unchanged."""

    def stamp(path: Path | None):
        if path is None:
            return None
        stat = path.stat()
        return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]

    return {
        "version": PREPARE_VERSION,
        "register": register,
        "interpolation": interpolation,
        "source": stamp(subject.source),
        "target": stamp(subject.target),
        "mask": stamp(subject.mask),
    }


def subject_is_prepared(out: Path, subject: RawSubject, expected: dict) -> bool:
    """Whether ``out`` holds ``subject`` made from the same inputs and settings.

    The record (``qc/sub-XXX.json``) is written after the subject folder, so a record
    that matches vouches for a complete folder.
    """
    record = _read_record(out, subject.subject)
    if record is None or record.get("made_from") != json.loads(json.dumps(expected)):
        return False
    files = [naming.source_path(out, subject.subject), naming.target_path(out, subject.subject)]
    has_mask = naming.mask_path(out, subject.subject).is_file()
    return all(p.is_file() for p in files) and has_mask == (subject.mask is not None)


def check_inputs(subjects: list[RawSubject], register: bool, progress: bool) -> dict[str, str | None]:
    """Read every volume in full and check it (as ``fit`` will), before any output.

    A truncated ``.nii.gz`` only fails when decompressed, so headers are not enough;
    this doubles the reading time, which is small next to registration.

    Returns:
        For each subject, the grid its mask is on: ``"3T"``, ``"7T"`` or ``None``.

    Raises:
        UserError: an unreadable, truncated, non-3D, non-finite or constant volume; a
            mask on neither scan's grid; with ``--no-register``, scans that do not
            overlap in scanner coordinates.
    """

    grids = {}
    for subject in _bar(subjects, "check inputs", progress):
        source, source_affine = volumes.load_volume(subject.source)
        target, target_affine = volumes.load_volume(subject.target)
        if not register and not _boxes_overlap(source.shape, source_affine, target.shape, target_affine):
            raise UserError(
                f"{subject.source} and {subject.target} do not overlap in scanner coordinates; "
                "leave out --no-register to register them"
            )
        grids[subject.subject] = None
        if subject.mask is not None:
            mask, mask_affine = volumes.load_volume(subject.mask)
            for name, shape, affine in (("7T", target.shape, target_affine), ("3T", source.shape, source_affine)):
                if mask.shape == shape and np.allclose(mask_affine, affine, atol=volumes.AFFINE_TOLERANCE):
                    grids[subject.subject] = name
                    break
            else:
                raise UserError(
                    f"{subject.mask} is on neither the grid of {subject.source} nor that of {subject.target}; "
                    "a brain mask must come from one of the two scans"
                )
    return grids


def _boxes_overlap(shape_a, affine_a, shape_b, affine_b) -> bool:
    """Whether the world bounding boxes of two grids intersect."""

    def box(shape, affine):
        corners = np.array(np.meshgrid(*[[0, s - 1] for s in shape], indexing="ij")).reshape(3, -1)
        world = affine[:3, :3] @ corners + affine[:3, 3:4]
        return world.min(axis=1), world.max(axis=1)

    (low_a, high_a), (low_b, high_b) = box(shape_a, affine_a), box(shape_b, affine_b)
    return bool(np.all(low_a <= high_b) and np.all(low_b <= high_a))


# -- one subject --------------------------------------------------------------------------
def prepare_subjects(jobs: list[PairJob], workers: int, progress: bool) -> None:
    """Prepare ``jobs`` one after the other, or in ``workers`` processes.

    Worker processes are spawned, not forked: ITK keeps thread pools that a forked
    child would inherit in an unknown state. The first failure cancels the rest;
    subjects already written stay (each is complete).
    """
    if workers == 1 or len(jobs) < 2:
        for job in _bar(jobs, "prepare", progress):
            prepare_subject(job)
        return

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
        futures = [pool.submit(prepare_subject, job) for job in jobs]
        try:
            for future in _bar(as_completed(futures), "prepare", progress, total=len(jobs)):
                future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def prepare_subject(job: PairJob) -> dict:
    """Register, resample and write one subject, then its QC; return its QC row.

    Order of writes: montage and transform, then the subject folder (atomically, as a
    whole), then the record ``qc/sub-XXX.json`` that marks the subject complete. An
    interruption anywhere leaves either the previous state or a subject that the next
    run prepares again.
    """

    if job.threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(job.threads)
    started = time.perf_counter()
    source, source_affine = volumes.load_volume(job.source)
    target, target_affine = volumes.load_volume(job.target)
    fixed, moving = to_sitk(target, target_affine), to_sitk(source, source_affine)
    identity = sitk.Euler3DTransform()
    transform, init = (
        register_rigid(fixed, moving, f"{job.subject}: {job.source} to {job.target}")
        if job.register
        else (identity, "scanner")
    )

    interpolator = sitk.sitkBSpline if job.interpolation == "bspline" else sitk.sitkLinear
    after = resample_onto(moving, fixed, transform, interpolator)
    before = after if not job.register else resample_onto(moving, fixed, identity, interpolator)
    mask = None
    if job.mask is not None:
        mask_array, mask_affine = volumes.load_volume(job.mask)
        mask = (mask_array > 0).astype(np.uint8)
        if job.mask_grid == "3T":
            mask = resample_onto(to_sitk(mask, mask_affine), fixed, transform, sitk.sitkNearestNeighbor).astype(
                np.uint8
            )
        if not mask.any():
            raise UserError(f"{job.mask} lies outside the 7T scan {job.target} after registration")

    region = head_region(target, mask)
    shift, rotation = describe_motion(transform, region, target_affine)
    row = {
        "subject": job.subject,
        "registration": f"rigid ({init} start)" if job.register else "none (scanner coordinates)",
        "rotation_deg": round(rotation, 2),
        "shift_x_mm": round(shift[0], 2),
        "shift_y_mm": round(shift[1], 2),
        "shift_z_mm": round(shift[2], 2),
        "corr_before": round(correlation(before, target, region), 4),
        "corr_after": round(correlation(after, target, region), 4),
        "mask": {None: "none", "7T": "7T grid", "3T": "3T grid, moved with the 3T"}[job.mask_grid],
        "source_grid": _grid_text(source.shape, source_affine),
        "target_grid": _grid_text(target.shape, target_affine),
    }
    row["qc"] = qc_verdict(row["corr_before"], row["corr_after"])

    qc = job.out / QC_DIR
    save_qc_montage(qc / f"{job.subject}.png", before, after, target, region, row, job.register)
    with atomic_path(qc / f"{job.subject}_3Tto7T.tfm") as tmp:
        sitk.WriteTransform(transform, str(tmp))
    with atomic_dir(job.out / job.subject) as folder:
        for name_of, array in ((naming.source_path, after), (naming.target_path, target), (naming.mask_path, mask)):
            if array is not None:
                # Spell the file names through naming, rooted in the temporary folder.
                relative = name_of(job.out, job.subject).relative_to(job.out / job.subject)
                volumes.write_nifti(folder / relative, array, target_affine)
    row["seconds"] = round(time.perf_counter() - started, 1)
    with atomic_path(qc / f"{job.subject}.json") as tmp:
        tmp.write_text(json.dumps({"qc": row, "made_from": job.made_from}, indent=2) + "\n", encoding="utf-8")
    return row


def qc_verdict(before: float, after: float) -> str:
    """``ok``, or why a subject's registration needs a look (see :data:`LOW_CORRELATION`).

    Args:
        before, after: Pearson's r of the 3T and the 7T inside the head, by scanner
            coordinates and after registration.
    """
    if after < before - CORRELATION_DROP:
        return f"registration lowered the 3T-7T correlation ({before} -> {after})"
    if after < LOW_CORRELATION and after - before < CORRELATION_GAIN:
        return (
            f"the 3T and 7T agree poorly even after registration (r {before} -> {after}): are they scans of "
            "the same head?"
        )
    return "ok"


def _grid_text(shape, affine) -> str:
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    return "x".join(str(s) for s in shape) + " @ " + "x".join(f"{v:.2f}" for v in spacing) + " mm"


def save_qc_montage(path: Path, before, after, target, region, row: dict, registered: bool) -> Path:
    """Slices through the head: the 3T by scanner coordinates, the registered 3T, the 7T
    and a checkerboard of the last two (misalignment shows as broken edges at the
    squares' borders, whatever the contrast difference)."""

    def scaled(volume):
        low, high = np.percentile(volume[region], [1, 99])
        return np.clip((volume - low) / max(high - low, 1e-12), 0, 1)

    after_01, target_01 = scaled(after), scaled(target)
    square = max(2, min(target.shape) // 8)
    # Parity of the square along each axis, broadcast (no full-size index arrays).
    i, j, k = (np.arange(n) // square for n in target.shape)
    odd = (i[:, None, None] + j[None, :, None] + k[None, None, :]) % 2 == 1
    checker = np.where(odd, target_01, after_01)
    columns = [("3T, scanner coord.", scaled(before), "gray", 1.0)] if registered else []
    columns += [
        ("3T registered" if registered else "3T on the 7T grid", after_01, "gray", 1.0),
        ("7T", target_01, "gray", 1.0),
        ("checkerboard 3T / 7T", checker, "gray", 1.0),
    ]
    title = (
        f"{row['subject']}: r(3T, 7T) {row['corr_before']:.3f} -> {row['corr_after']:.3f}, "
        f"rotation {row['rotation_deg']:.1f} deg, shift "
        f"({row['shift_x_mm']:.1f}, {row['shift_y_mm']:.1f}, {row['shift_z_mm']:.1f}) mm"
    )
    return save_panels(path, columns, region, title)


# -- tables -------------------------------------------------------------------------------
def write_participants(out: Path, subjects: list[RawSubject], columns: list[str]) -> Path:
    """``participants.tsv`` (atomically): ``participant_id, age, sex``, then the input's
    other columns in their order. Unknown age or sex is ``n/a``, as BIDS writes it."""

    header = ["participant_id", "age", "sex"] + [c for c in columns if c not in ("participant_id", "age", "sex")]
    path = out / naming.PARTICIPANTS
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        for subject in subjects:
            # split stays empty when unknown: fit reads an empty split as "not fixed".
            writer.writerow(
                [subject.subject] + [subject.row.get(c) or ("" if c == "split" else "n/a") for c in header[1:]]
            )
    return path


def write_qc_table(out: Path, subjects: list[RawSubject]) -> list[dict]:
    """``prepare.tsv`` (atomically) from the subjects' records, in participant order."""

    rows = [(_read_record(out, s.subject) or {}).get("qc", {"subject": s.subject}) for s in subjects]
    header = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(out / QC_TABLE) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, delimiter="\t", lineterminator="\n", restval="n/a")
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _read_record(out: Path, subject: str) -> dict | None:
    path = out / QC_DIR / f"{subject}.json"
    try:
        record = read_json(path) if path.is_file() else None
    except UserError:  # damaged: the subject is prepared again
        return None
    return record if isinstance(record, dict) else None


def _bar(items, desc: str, progress: bool, total: int | None = None):
    # disable=None shows the bar only on a terminal, so logs stay clean.
    return tqdm(items, desc=desc, unit="subject", total=total, disable=None if progress else True, dynamic_ncols=True)
