"""``python -m t7synth.prepare``: turn raw paired 3T/7T scans into the dataset folder ``fit`` reads.

Examples::

    python -m t7synth.prepare --raw /data/raw --out /data/paired
    python -m t7synth.prepare --pairs pairs.tsv --out /data/paired --workers 2
    python -m t7synth.prepare --raw /data/coregistered --out /data/paired --no-register
    python -m t7synth.prepare --raw /data/raw --out /data/paired --overwrite   # redo every subject

Two ways to name the inputs, each scan on its own grid (resolution, field of view,
orientation):

- ``--raw DIR``, laid out like a dataset folder:
  ``DIR/sub-XXX/anat/sub-XXX_acq-3T_T1w.nii[.gz]`` and ``sub-XXX_acq-7T_T1w.nii[.gz]``,
  optionally ``sub-XXX_desc-brain_mask.nii[.gz]``, and optionally
  ``DIR/participants.tsv`` (copied through with all its columns).
- ``--pairs FILE`` (``.tsv`` or ``.csv``) with columns ``subject``, ``source`` (3T file),
  ``target`` (7T file) and optionally ``mask``, ``age``, ``sex``, ``split`` and any others,
  which go to ``participants.tsv``. Relative paths start at the table's folder; a
  subject without the ``sub-`` prefix gets it.

Per subject (:func:`prepare_subject`): both scans are reoriented to RAS+, the 3T is
registered rigidly (6 degrees of freedom) to the 7T and resampled onto the 7T's grid;
the 7T is written unchanged apart from the reorientation; a given brain mask (on the
3T's or the 7T's grid) is carried onto the 7T grid by nearest neighbour.

Output, ``--out DIR``::

    DIR/participants.tsv  DIR/sub-XXX/anat/...   the dataset (names: t7synth.data.naming)
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

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from t7synth.cli import ArgumentParser, console_entry, run_main
from t7synth.data import naming
from t7synth.errors import UserError

#: Bumped when the output for the same inputs changes; part of every subject's record,
#: so a re-run after an upgrade prepares the subjects again instead of skipping them.
PREPARE_VERSION = 1
#: The per-run QC table (one row per subject) and the folder of per-subject QC files.
QC_TABLE = "prepare.tsv"
QC_DIR = "qc"
NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: Columns of a ``--pairs`` table that describe files, not the participant.
FILE_COLUMNS = ("subject", "source", "target", "mask")
INTERPOLATIONS = ("linear", "bspline")

# Registration settings (see :func:`register_rigid`).
#: Random metric samples per resolution level: the cost of an iteration does not grow
#: with the image, and 20k samples fill a 32-bin joint histogram densely.
METRIC_SAMPLES = 20_000
HISTOGRAM_BINS = 32
#: The coarsest level keeps at least this many voxels along the shortest axis.
MIN_LEVEL_VOXELS = 12
SHRINK_FACTORS = (8, 4, 2, 1)
MAX_ITERATIONS = 200
#: A subject is flagged for a look when registration lowers the 3T-7T correlation
#: inside the head by more than this (Pearson's r, unitless).
CORRELATION_DROP = 0.02


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
class Job:
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


# -- command line -----------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m t7synth.prepare",
        description="Turn raw paired 3T/7T scans (any grids) into the dataset folder that fit reads.",
    )
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--raw", type=Path, metavar="DIR", help="raw scans laid out like a dataset folder, on any grids")
    inputs.add_argument("--pairs", type=Path, metavar="FILE", help="table (.tsv/.csv): subject, source, target[, mask, age, sex, split, ...]")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="dataset folder to write (new, empty, or an earlier prepare output)")
    parser.add_argument("--no-register", action="store_true", help="only resample by the scanner affines (scans already co-registered)")
    parser.add_argument("--interpolation", choices=INTERPOLATIONS, default="linear", help="3T resampling (default linear, as predict uses)")
    parser.add_argument("--overwrite", action="store_true", help="prepare every subject again, even complete ones")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="subjects prepared in parallel processes (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: plan, check every input, prepare the subjects, write the tables."""
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: must be at least 1")
    subjects, columns = plan_from_raw(args.raw) if args.raw is not None else plan_from_table(args.pairs)
    out = check_output(args.out, subjects)
    register, progress = not args.no_register, not args.no_progress
    stamps = {s.subject: made_from(s, register, args.interpolation) for s in subjects}
    pending = [s for s in subjects if args.overwrite or not is_complete(out, s, stamps[s.subject])]
    # Nothing is written before every pending input has been read in full and checked.
    mask_grids = check_inputs(pending, register, progress)
    threads = None if args.workers == 1 else max(1, (os.cpu_count() or 1) // args.workers)
    jobs = [
        Job(s.subject, s.source, s.target, s.mask, mask_grids[s.subject], out, register, args.interpolation, stamps[s.subject], threads)
        for s in pending
    ]
    run_jobs(jobs, args.workers, progress)
    write_participants(out, subjects, columns)
    rows = write_qc_table(out, subjects)
    print(out)
    print(summarize(out, subjects, len(jobs), rows))
    return 0


def summarize(out: Path, subjects: list[RawSubject], prepared: int, rows: list[dict]) -> str:
    """The summary line, plus one line per subject whose registration needs a look and
    a note on subject folders in ``out`` that are no longer among the inputs."""
    skipped = len(subjects) - prepared
    lines = [
        f"{len(subjects)} subjects in {naming.PARTICIPANTS}: {prepared} prepared, {skipped} already complete and skipped"
        + (" (--overwrite prepares them again)" if skipped else "")
        + f"; QC in {QC_TABLE} and {QC_DIR}/"
    ]
    for row in rows:
        if row.get("qc", "ok") != "ok":
            lines.append(f"look at {QC_DIR}/{row['subject']}.png: {row['qc']}")
    known = {s.subject for s in subjects}
    strays = sorted(p.name for p in out.glob("sub-*") if p.is_dir() and p.name not in known)
    if strays:
        lines.append(f"note: {', '.join(strays)} in {out} are not among the inputs and not listed in {naming.PARTICIPANTS}")
    return "\n".join(lines)


# -- inputs -------------------------------------------------------------------------------
def plan_from_raw(raw: Path) -> tuple[list[RawSubject], list[str]]:
    """The subjects of a raw folder laid out like a dataset, and its participant columns.

    Subjects are the ``sub-*`` folders; when ``participants.tsv`` exists, its rows and
    the folders must name the same subjects (a folder without a row, or a row without
    files, is an error rather than a silently dropped subject).

    Raises:
        UserError: no folder, no subjects, a missing 3T or 7T file, an ambiguous file
            (both ``.nii`` and ``.nii.gz``), or a malformed ``participants.tsv``.
    """
    from t7synth.data.layout import parse_participant, read_participants

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
        for name in folders:
            if name not in rows:
                raise UserError(f"{raw / name} has no row in {table}; add one or move the folder away")
        order = list(rows)
    else:
        order = folders
    if not order:
        raise UserError(f"no subjects found in {raw} (expected sub-*/anat/sub-*_acq-3T_T1w.nii.gz)")
    subjects = []
    for subject in order:
        source = _find_scan(raw, subject, naming.source_path)
        target = _find_scan(raw, subject, naming.target_path)
        for path, partner, what in ((source, target, "3T"), (target, source, "7T")):
            if not path.is_file():
                raise UserError(f"missing file {path} (the {what} scan of {subject}, partner of {partner})")
        mask = _find_scan(raw, subject, naming.mask_path)
        row = {key: (value or "").strip() for key, value in rows.get(subject, {}).items() if key}
        parse_participant(row, table, subject)  # checked now, before anything is written
        subjects.append(RawSubject(subject, source, target, mask if mask.is_file() else None, row))
    columns = [key for key in next(iter(rows.values())) if key] if rows else []
    return subjects, columns


def _find_scan(raw: Path, subject: str, name_of) -> Path:
    """The ``.nii.gz`` or ``.nii`` file that ``name_of`` names in ``raw`` (the ``.nii.gz``
    name when neither exists, so that error messages show the expected file)."""
    gz = name_of(raw, subject)
    plain = gz.with_name(gz.name[: -len(".gz")])
    if gz.is_file() and plain.is_file():
        raise UserError(f"both {gz} and {plain} exist; keep one")
    return plain if plain.is_file() else gz


def plan_from_table(table: Path) -> tuple[list[RawSubject], list[str]]:
    """The subjects of a ``--pairs`` table, and its participant columns.

    Raises:
        UserError: an unknown extension, a missing column, an empty cell in a required
            column, a bad or duplicate subject label, a file that does not exist.
    """
    from t7synth.data.layout import parse_participant

    table = table.expanduser()
    if not table.is_file():
        raise UserError(f"pairs table not found: {table}")
    delimiters = {".tsv": "\t", ".txt": "\t", ".csv": ","}
    if table.suffix.lower() not in delimiters:
        raise UserError(f"{table}: a pairs table is .tsv or .csv")
    # utf-8-sig: spreadsheet programs often start CSV files with a byte-order mark.
    with open(table, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, delimiter=delimiters[table.suffix.lower()])
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in FILE_COLUMNS[:3] if name not in header]
        if missing:
            raise UserError(f"{table} has no column {', '.join(missing)} (columns: {', '.join(header) or 'none'})")
        rows = [({(k or "").strip(): (v or "").strip() for k, v in row.items()}, reader.line_num) for row in reader]
    subjects, lines = [], {}
    for row, line in rows:
        if not any(row.values()):
            continue  # a blank line, e.g. at the end of a hand-edited file
        for name in FILE_COLUMNS[:3]:
            if not row.get(name):
                raise UserError(f"{table}, line {line}: column {name} is empty")
        subject = row["subject"] if row["subject"].startswith("sub-") else f"sub-{row['subject']}"
        if not naming.SUBJECT_PATTERN.fullmatch(subject):
            raise UserError(f"{table}, line {line}: subject {row['subject']!r} must be letters and digits (optionally after sub-)")
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
        raise UserError(f"{out} is not empty and was not written by prepare (no {QC_DIR}/ folder); choose a new or empty folder")
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


def is_complete(out: Path, subject: RawSubject, expected: dict) -> bool:
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
    from t7synth.data.layout import AFFINE_TOLERANCE, load_volume

    grids = {}
    for subject in _bar(subjects, "check inputs", progress):
        source, source_affine = load_volume(subject.source)
        target, target_affine = load_volume(subject.target)
        if not register and not _boxes_overlap(source.shape, source_affine, target.shape, target_affine):
            raise UserError(
                f"{subject.source} and {subject.target} do not overlap in scanner coordinates; "
                "leave out --no-register to register them"
            )
        grids[subject.subject] = None
        if subject.mask is not None:
            mask, mask_affine = load_volume(subject.mask)
            for name, shape, affine in (("7T", target.shape, target_affine), ("3T", source.shape, source_affine)):
                if mask.shape == shape and np.allclose(mask_affine, affine, atol=AFFINE_TOLERANCE):
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
def run_jobs(jobs: list[Job], workers: int, progress: bool) -> None:
    """Prepare ``jobs`` one after the other, or in ``workers`` processes.

    Worker processes are spawned, not forked: ITK keeps thread pools that a forked
    child would inherit in an unknown state. The first failure cancels the rest;
    subjects already written stay (each is complete).
    """
    if workers == 1 or len(jobs) < 2:
        for job in _bar(jobs, "prepare", progress):
            prepare_subject(job)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
        futures = [pool.submit(prepare_subject, job) for job in jobs]
        try:
            for future in _bar(as_completed(futures), "prepare", progress, total=len(jobs)):
                future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def prepare_subject(job: Job) -> dict:
    """Register, resample and write one subject, then its QC; return its QC row.

    Order of writes: montage and transform, then the subject folder (atomically, as a
    whole), then the record ``qc/sub-XXX.json`` that marks the subject complete. An
    interruption anywhere leaves either the previous state or a subject that the next
    run prepares again.
    """
    import SimpleITK as sitk

    from t7synth.data.layout import load_volume
    from t7synth.data.simulate import write_nifti
    from t7synth.io import atomic_dir, atomic_path

    if job.threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(job.threads)
    started = time.perf_counter()
    source, source_affine = load_volume(job.source)
    target, target_affine = load_volume(job.target)
    fixed, moving = to_sitk(target, target_affine), to_sitk(source, source_affine)
    identity = sitk.Euler3DTransform()
    transform, init = (register_rigid(fixed, moving, job) if job.register else (identity, "scanner"))

    interpolator = sitk.sitkBSpline if job.interpolation == "bspline" else sitk.sitkLinear
    after = resample(moving, fixed, transform, interpolator)
    before = after if not job.register else resample(moving, fixed, identity, interpolator)
    mask = None
    if job.mask is not None:
        mask_array, mask_affine = load_volume(job.mask)
        mask = (mask_array > 0).astype(np.uint8)
        if job.mask_grid == "3T":
            mask = resample(to_sitk(mask, mask_affine), fixed, transform, sitk.sitkNearestNeighbor).astype(np.uint8)
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
    row["qc"] = "ok" if row["corr_after"] >= row["corr_before"] - CORRELATION_DROP else (
        f"registration lowered the 3T-7T correlation ({row['corr_before']} -> {row['corr_after']})"
    )

    qc = job.out / QC_DIR
    save_qc_montage(qc / f"{job.subject}.png", before, after, target, region, row, job.register)
    with atomic_path(qc / f"{job.subject}_3Tto7T.tfm") as tmp:
        sitk.WriteTransform(transform, str(tmp))
    with atomic_dir(job.out / job.subject) as folder:
        for name_of, array in ((naming.source_path, after), (naming.target_path, target), (naming.mask_path, mask)):
            if array is not None:
                # Spell the file names through naming, rooted in the temporary folder.
                relative = name_of(job.out, job.subject).relative_to(job.out / job.subject)
                write_nifti(folder / relative, array, target_affine)
    row["seconds"] = round(time.perf_counter() - started, 1)
    with atomic_path(qc / f"{job.subject}.json") as tmp:
        tmp.write_text(json.dumps({"qc": row, "made_from": job.made_from}, indent=2) + "\n", encoding="utf-8")
    return row


def to_sitk(array: np.ndarray, affine: np.ndarray):
    """A SimpleITK image of an (I, J, K) array with a nibabel (RAS) affine.

    ITK indexes arrays the other way round (K, J, I) and measures in LPS, so the first
    two world axes change sign; spacing is the column norm and direction the rest.
    """
    import SimpleITK as sitk

    affine = np.asarray(affine, dtype=np.float64)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array, dtype=np.float32).transpose(2, 1, 0)))
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    image.SetSpacing(spacing.tolist())
    image.SetOrigin((ras_to_lps @ affine[:3, 3]).tolist())
    image.SetDirection((ras_to_lps @ affine[:3, :3] / spacing).flatten().tolist())
    return image


def from_sitk(image) -> np.ndarray:
    """The (I, J, K) float32 array of a SimpleITK image made by :func:`to_sitk`."""
    import SimpleITK as sitk

    return np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0), dtype=np.float32)


def register_rigid(fixed, moving, job: Job):
    """Rigidly register ``moving`` (3T) to ``fixed`` (7T) with SimpleITK.

    Why SimpleITK and not ANTs (antspyx): SimpleITK is already installed with TorchIO,
    which t7synth depends on, and its ITK v4 registration framework is the same code
    ANTs builds on. antspyx 0.6.3 installs in about 15 s (about 90 MB) but pins
    ``numpy<2.4`` and ``scipy<1.16``, downgrading the rest of the stack.

    Method, the usual one for two scans of the same head with different contrast:

    - metric: Mattes mutual information (32 bins), because 3T and 7T intensities are
      related but not linearly (contrast, bias field);
    - transform: Euler (3 rotations, 3 translations) about the 7T's centre of mass;
    - start: scanner coordinates, or the two scans' centres of mass aligned, whichever
      the metric prefers (scanner coordinates fail when a site moves its origin,
      centres of mass when the fields of view differ a lot, e.g. a neck in the 3T);
    - multi-resolution: shrink by 8, 4, 2, 1 (levels coarser than 12 voxels are left
      out), Gaussian smoothing of half the shrink factor; a fixed number of random
      samples per level (seeded, so re-runs with the same thread count agree), with
      gradients computed at the samples only, so an iteration costs the same at any
      resolution (about 4.5 s for a 0.8 mm 7T on one core);
    - optimiser: regular-step gradient descent with parameter scales from physical
      shifts (a step of 1 moves some voxel by about 1 mm).

    Returns:
        ``(transform, start)``: an ``Euler3DTransform`` mapping 7T points to 3T points
        (LPS mm, what resampling needs) and ``"scanner"`` or ``"centre of mass"``.

    Raises:
        UserError: when ITK gives up (e.g. the scans share too little).
    """
    import SimpleITK as sitk

    size = np.asarray(fixed.GetSize())
    factors = [f for f in SHRINK_FACTORS if f == 1 or size.min() / f >= MIN_LEVEL_VOXELS]
    voxels = float(np.prod(size))
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentagePerLevel([min(1.0, METRIC_SAMPLES * f**3 / voxels) for f in factors], 0)
    method.SetShrinkFactorsPerLevel(factors)
    method.SetSmoothingSigmasPerLevel([f / 2 if f > 1 else 0 for f in factors])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInterpolator(sitk.sitkLinear)
    # Gradients at the samples only, not as whole gradient images of every level:
    # with sparse sampling this is several times faster on 7T-sized volumes.
    method.MetricUseFixedImageGradientFilterOff()
    method.MetricUseMovingImageGradientFilterOff()
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-4, numberOfIterations=MAX_ITERATIONS, relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8
    )
    method.SetOptimizerScalesFromPhysicalShift()
    try:
        transform, start = _initial_transform(fixed, moving, factors[0])
        method.SetInitialTransform(transform, inPlace=True)
        method.Execute(fixed, moving)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise UserError(
            f"{job.subject}: registering {job.source} to {job.target} failed ({reason}); check that both show the same head"
        ) from None
    return transform, start


def _initial_transform(fixed, moving, shrink: int):
    """The better of two starts by the registration metric on the coarsest level
    (both images block-averaged by ``shrink``): scanner coordinates, or the centres of
    mass aligned. Both rotate about the 7T's centre of mass."""
    import SimpleITK as sitk

    moments = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS)
    moments = sitk.Euler3DTransform(moments)
    scanner = sitk.Euler3DTransform()
    scanner.SetCenter(moments.GetCenter())
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    small_fixed, small_moving = sitk.BinShrink(fixed, [shrink] * 3), sitk.BinShrink(moving, [shrink] * 3)
    method.SetMetricSamplingPercentage(min(1.0, METRIC_SAMPLES / float(np.prod(small_fixed.GetSize()))), 0)
    method.SetInterpolator(sitk.sitkLinear)
    scores = {}
    for name, candidate in (("scanner", scanner), ("centre of mass", moments)):
        method.SetInitialTransform(candidate, inPlace=False)
        try:
            scores[name] = method.MetricEvaluate(small_fixed, small_moving)
        except RuntimeError:  # no overlap at all from this start
            scores[name] = np.inf
    start = min(scores, key=scores.get)  # Mattes MI is negated: lower is better
    return (scanner if start == "scanner" else moments), start


def resample(moving, fixed, transform, interpolator) -> np.ndarray:
    """``moving`` sampled on ``fixed``'s grid through ``transform`` (fixed -> moving),
    as an (I, J, K) float32 array; outside ``moving`` is 0.

    B-spline interpolation overshoots at edges; negative values are clipped because
    magnitude images have none.
    """
    import SimpleITK as sitk

    image = sitk.Resample(moving, fixed, transform, interpolator, 0.0, sitk.sitkFloat32)
    return np.maximum(from_sitk(image), 0.0)


# -- quality control ---------------------------------------------------------------------
def head_region(target: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Where QC looks: the brain mask if there is one, else the 7T voxels above 10 % of
    its 99th percentile (the head, without the air around it)."""
    if mask is not None:
        return mask > 0
    if not (target > 0).any():  # an unusual scale (all negative): above the minimum
        return target > target.min()
    return target > 0.1 * np.percentile(target[target > 0], 99)


def correlation(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    """Pearson's r of two volumes inside ``region`` (0 when either is constant there).

    Correlation is a conservative check across field strengths (contrast differs), but
    it rises when the same anatomy is aligned, which is all QC asks of it.
    """
    x, y = a[region].astype(np.float64), b[region].astype(np.float64)
    x, y = x - x.mean(), y - y.mean()
    norm = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / norm) if norm > 0 else 0.0


def describe_motion(transform, region: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, float]:
    """The registration in two human numbers: where the 7T head's centre lies in the
    3T's scanner coordinates relative to where it lies in the 7T's (mm, RAS), and the
    rotation angle (degrees; the same in RAS and LPS)."""
    centre_index = np.argwhere(region).mean(axis=0)
    centre = affine[:3, :3] @ centre_index + affine[:3, 3]
    ras_to_lps = np.array([-1.0, -1.0, 1.0])
    moved = np.asarray(transform.TransformPoint(tuple((centre * ras_to_lps).tolist()))) * ras_to_lps
    matrix = np.asarray(transform.GetMatrix()).reshape(3, 3)
    angle = np.degrees(np.arccos(np.clip((np.trace(matrix) - 1) / 2, -1.0, 1.0)))
    return moved - centre, float(angle)


def _grid_text(shape, affine) -> str:
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    return "x".join(str(s) for s in shape) + " @ " + "x".join(f"{v:.2f}" for v in spacing) + " mm"


def save_qc_montage(path: Path, before, after, target, region, row: dict, registered: bool) -> Path:
    """Slices through the head: the 3T by scanner coordinates, the registered 3T, the 7T
    and a checkerboard of the last two (misalignment shows as broken edges at the
    squares' borders, whatever the contrast difference)."""
    from t7synth.plotting import save_panels

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
    from t7synth.io import atomic_path

    header = ["participant_id", "age", "sex"] + [c for c in columns if c not in ("participant_id", "age", "sex")]
    path = out / naming.PARTICIPANTS
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        for subject in subjects:
            # split stays empty when unknown: fit reads an empty split as "not fixed".
            writer.writerow([subject.subject] + [subject.row.get(c) or ("" if c == "split" else "n/a") for c in header[1:]])
    return path


def write_qc_table(out: Path, subjects: list[RawSubject]) -> list[dict]:
    """``prepare.tsv`` (atomically) from the subjects' records, in participant order."""
    from t7synth.io import atomic_path

    rows = [(_read_record(out, s.subject) or {}).get("qc", {"subject": s.subject}) for s in subjects]
    header = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(out / QC_TABLE) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, delimiter="\t", lineterminator="\n", restval="n/a")
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _read_record(out: Path, subject: str) -> dict | None:
    try:
        record = json.loads((out / QC_DIR / f"{subject}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _bar(items, desc: str, progress: bool, total: int | None = None):
    from tqdm.auto import tqdm

    # disable=None shows the bar only on a terminal, so logs stay clean.
    return tqdm(items, desc=desc, unit="subject", total=total, disable=None if progress else True, dynamic_ncols=True)


#: The ``t7synth-prepare`` console script.
console = console_entry(main)

if __name__ == "__main__":
    sys.exit(run_main(main))
