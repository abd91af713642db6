"""A FieldBridge-MRI download to the dataset folder ``fit`` reads (``prepare --fieldbridge``).

FieldBridge-MRI (Hugging Face dataset ``lipeirong/FieldBridge-MRI``) collects public
paired scans of several field strengths and contrasts from several sites. Its table
``pairs.tsv`` (at ``DIR/pairs.tsv`` or ``DIR/metadata/pairs.tsv``) has one row per
volume with the columns :data:`COLUMNS`; the NIfTI paths (``relative_path``) start at
``DIR``. What this module assumes of the table (the dataset's README was not available
when it was written; ``docs/data.md`` lists the same assumptions):

* the two volumes of a pair share a ``pair_id`` (unique across sources), each row
  naming its own ``field_strength`` and its partner's (``paired_field_strength``);
* field strengths are written as ``3T``, ``7T``, ``1.5T``, ``64mT`` (a bare number is
  tesla); modalities as ``T1W``, ``T2W``, ``FLAIR`` (case does not matter);
* ``source_dataset`` names the site (``unc``, ``penn``, ...), ``split_group`` the
  split FieldBridge suggests; it is copied to ``participants.tsv`` as a column of that
  name, not as ``split`` (which would fix t7synth's splits and folds).

A subject is a ``pair_id`` with a T1W 3T row whose partner is 7T and the T1W 7T row of
the same ``pair_id``; every other row (another contrast, another field strength) is
skipped and counted. The pairs are distributed on one grid: that is checked (one line
naming both files otherwise), not registered again. Each volume is cropped to the
bounding box of the pair's non-zero voxels (the scans are skull-stripped in
FieldBridge's preprocessing as far as this module assumes; otherwise the box is the
head's) widened by :data:`MARGIN_MM`, optionally resampled to ``voxel_size`` mm
(TorchIO's ``Resample``: SimpleITK, linear), and written with the ``site`` column.

Subjects are prepared one at a time in each process (peak memory: one pair), in
``jobs`` spawned processes (not forked: ITK keeps thread pools that a forked child
inherits in an unknown state, as :mod:`t7synth.data.prepare` explains). A subject
whose files are missing or unreadable is reported on one line and left out; the others
are written.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import re
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from t7synth.data import naming
from t7synth.data.volumes import check_pair, load_volume, write_nifti
from t7synth.errors import UserError
from t7synth.files import atomic_dir, atomic_path, check_writable, remove_stale_temporaries
from t7synth.textfiles import read_json, read_table

#: The columns of FieldBridge's ``pairs.tsv`` this reader needs.
COLUMNS = (
    "fieldbridge_id",
    "source_dataset",
    "pair_id",
    "modality",
    "field_strength",
    "paired_field_strength",
    "relative_path",
    "split_group",
)
#: Where ``pairs.tsv`` may lie in a download, first match wins.
TABLE_PLACES = ("pairs.tsv", "metadata/pairs.tsv")
#: The participant column that names a subject's site (its ``source_dataset``).
SITE_COLUMN = "site"
#: Space kept around the brain's bounding box when cropping, in millimetres (so that
#: the brain mask, the normalisation and ``data.shape`` never see a cut brain).
MARGIN_MM = 4.0
#: Bumped when the output for the same inputs changes (a re-run prepares again).
FIELDBRIDGE_VERSION = 1
#: One JSON record per subject (what it was made from), written last: a complete subject.
RECORD_DIR = "qc"
#: The per-subject table of what was done (site, crop box, output grid, seconds).
SUMMARY_TABLE = "prepare.tsv"


@dataclass(frozen=True)
class FieldBridgePair:
    """One subject to prepare: its 3T and 7T files and its participant row."""

    subject: str
    site: str
    source: Path
    target: Path
    row: dict[str, str] = field(default_factory=dict)


@dataclass
class Plan:
    """What ``pairs.tsv`` holds: the subjects, the skipped rows counted by reason, and
    the bad rows (one line each)."""

    pairs: list[FieldBridgePair]
    skipped: Counter
    problems: list[str]


@dataclass(frozen=True)
class Job:
    """What one process needs for one subject (picklable)."""

    pair: FieldBridgePair
    out: Path
    voxel_size: float | None
    made_from: dict


def find_table(root: Path) -> Path:
    """``DIR/pairs.tsv`` or ``DIR/metadata/pairs.tsv``.

    Raises:
        UserError: no such folder or no table in either place.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"FieldBridge folder not found: {root}")
    for place in TABLE_PLACES:
        if (root / place).is_file():
            return root / place
    raise UserError(f"{root} has no {' or '.join(TABLE_PLACES)}; is it a FieldBridge-MRI download?")


def field_tesla(text: str) -> float | None:
    """``3T`` -> 3.0, ``1.5 T`` -> 1.5, ``64mT`` -> 0.064, ``7`` -> 7.0; ``None`` if unreadable."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(m?t)?\s*", text or "", flags=re.IGNORECASE)
    if not match:
        return None
    value = float(match.group(1))
    return value / 1000 if (match.group(2) or "").lower() == "mt" else value


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", text)


def subject_label(site: str, pair_id: str) -> str:
    """``sub-<site><pair>``: letters and digits only; the site is left out when the
    pair id already starts with it (``unc_001`` -> ``sub-unc001``)."""
    site_part, pair_part = _label(site), _label(pair_id)
    if pair_part.lower().startswith(site_part.lower()):
        return f"sub-{pair_part}"
    return f"sub-{site_part}{pair_part}"


def read_plan(root: Path, sources: list[str] | None = None) -> Plan:
    """The T1W 3T/7T subjects of a download (optionally of ``sources`` only).

    Raises:
        UserError: no table, a table without the needed columns, ``sources`` naming a
            source the table lacks, no subject at all.
    """
    root = Path(root).expanduser()
    table = find_table(root)
    # The guarded reader (size, encoding, binary content): one line naming the table.
    read = read_table(table, delimiter="\t", complete=False, legacy=True)
    header = [(name or "").strip() for name in read.fieldnames]
    missing = [name for name in COLUMNS if name not in header and name != "fieldbridge_id"]
    if missing:
        raise UserError(f"{table} has no column {', '.join(missing)} (columns: {', '.join(header) or 'none'})")
    rows = []
    for line, raw in zip(read.lines, read.rows, strict=True):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k}
        if any(row.values()):
            rows.append((line, row))
    known = sorted({row["source_dataset"] for _, row in rows if row["source_dataset"]})
    if sources:
        wanted = {s.strip().lower() for s in sources if s.strip()}
        unknown = sorted(wanted - {k.lower() for k in known})
        if unknown:
            raise UserError(f"--sources {', '.join(unknown)}: not in {table} (its sources: {', '.join(known)})")
        rows = [(line, row) for line, row in rows if row["source_dataset"].lower() in wanted]
    skipped: Counter = Counter()
    problems: list[str] = []
    sources_3t: dict[str, tuple[int, dict]] = {}
    targets_7t: dict[str, tuple[int, dict]] = {}
    for line, row in rows:
        where = f"{table}, line {line}"
        modality = row["modality"].upper()
        if modality != "T1W":
            skipped[modality or "no modality"] += 1
            continue
        tesla, partner = field_tesla(row["field_strength"]), field_tesla(row["paired_field_strength"])
        empty = [name for name in ("source_dataset", "pair_id", "relative_path") if not row[name]]
        if empty:
            problems.append(f"{where}: column {empty[0]} is empty")
            continue
        if tesla is None:
            problems.append(f"{where}: field_strength {row['field_strength']!r} is not a field strength like 3T")
            continue
        pair = row["pair_id"]
        if {tesla, partner} == {3.0, 7.0}:
            chosen = sources_3t if tesla == 3.0 else targets_7t
            if pair in chosen:
                problems.append(f"{where}: a second T1W {row['field_strength']} row of pair_id {pair}")
                continue
            chosen[pair] = (line, row)
        else:
            skipped[f"T1W {row['field_strength']}/{row['paired_field_strength'] or '?'}"] += 1
    pairs, labels = [], {}
    for pair, (line, row) in sources_3t.items():
        if pair not in targets_7t:
            problems.append(f"{table}, line {line}: pair_id {pair} has no T1W 7T row")
            continue
        site = row["source_dataset"]
        subject = subject_label(site, pair)
        if subject in labels:
            problems.append(
                f"{table}, line {line}: pair_id {pair} gives subject {subject}, as pair_id {labels[subject]}"
            )
            continue
        labels[subject] = pair
        target_row = targets_7t[pair][1]
        participant = {SITE_COLUMN: site, "split_group": row.get("split_group", "")}
        pairs.append(
            FieldBridgePair(subject, site, root / row["relative_path"], root / target_row["relative_path"], participant)
        )
    for pair, (line, _) in targets_7t.items():
        if pair not in sources_3t:
            problems.append(f"{table}, line {line}: pair_id {pair} has no T1W 3T row")
    if not pairs:
        raise UserError(f"{table} lists no T1W 3T/7T pair" + (f" of {', '.join(sources)}" if sources else ""))
    pairs.sort(key=lambda p: (p.site, p.subject))
    return Plan(pairs, skipped, problems)


def made_from(pair: FieldBridgePair, voxel_size: float | None) -> dict:
    """What a prepared subject depends on (files with size and time, settings)."""

    def stamp(path: Path):
        try:
            stat = path.stat()
        except OSError:
            return None
        return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]

    return {
        "version": FIELDBRIDGE_VERSION,
        "voxel_size": voxel_size,
        "margin_mm": MARGIN_MM,
        "source": stamp(pair.source),
        "target": stamp(pair.target),
    }


def _record_path(out: Path, subject: str) -> Path:
    return out / RECORD_DIR / f"{subject}.json"


def _read_record(out: Path, subject: str) -> dict | None:
    path = _record_path(out, subject)
    if not path.is_file():
        return None
    try:
        record = read_json(path)
    except UserError:  # damaged: the subject is prepared again
        return None
    return record if isinstance(record, dict) else None


def is_prepared(job: Job) -> bool:
    """Whether ``job.out`` already holds the subject made from the same files and settings."""
    record = _read_record(job.out, job.pair.subject)
    if record is None or record.get("made_from") != json.loads(json.dumps(job.made_from)):
        return False
    subject = job.pair.subject
    return naming.source_path(job.out, subject).is_file() and naming.target_path(job.out, subject).is_file()


def crop_box(source: np.ndarray, target: np.ndarray, spacing: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of the voxels above 0 of either scan, widened by
    :data:`MARGIN_MM` on every side (clipped to the volume)."""
    inside = (source > 0) | (target > 0)
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(inside.any(axis=others))
        margin = int(np.ceil(MARGIN_MM / float(spacing[axis])))
        box.append(slice(max(0, hits[0] - margin), min(inside.shape[axis], hits[-1] + 1 + margin)))
    return tuple(box)


def cropped_affine(affine: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """The affine of ``volume[box]``: the same axes, the origin moved to the box's corner."""
    shifted = np.array(affine, dtype=np.float64)
    shifted[:3, 3] = affine[:3, :3] @ np.array([s.start for s in box], dtype=np.float64) + affine[:3, 3]
    return shifted


def resample(array: np.ndarray, affine: np.ndarray, voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """``array`` on an isotropic ``voxel_size`` mm grid over the same field of view
    (TorchIO ``Resample``, linear interpolation through SimpleITK)."""
    import torchio as tio

    image = tio.ScalarImage(tensor=array[None], affine=affine)
    resampled = tio.Resample(voxel_size, image_interpolation="linear")(image)
    return np.ascontiguousarray(resampled.data[0].numpy(), dtype=np.float32), np.asarray(resampled.affine)


def prepare_one(job: Job) -> dict:
    """Read, check, crop, resample and write one subject; return its summary row.

    The subject folder is written atomically as a whole, then its record: an
    interruption leaves the previous state or a subject the next run prepares again.

    Raises:
        UserError: a missing or unreadable file, or scans on different grids (naming both).
    """
    started = time.perf_counter()
    pair = job.pair
    source, source_affine = load_volume(pair.source)
    target, target_affine = load_volume(pair.target)
    check_pair(pair.source, source.shape, source_affine, pair.target, target.shape, target_affine)
    spacing = np.sqrt((np.asarray(target_affine)[:3, :3] ** 2).sum(axis=0))
    box = crop_box(source, target, spacing)
    # Copies of the crops, so the full-size arrays can be freed before resampling.
    source, target = source[box].copy(), target[box].copy()
    affine = cropped_affine(np.asarray(target_affine), box)
    if job.voxel_size is not None:
        source, _ = resample(source, affine, job.voxel_size)
        target, affine = resample(target, affine, job.voxel_size)
    with atomic_dir(job.out / pair.subject) as folder:
        for name_of, array in ((naming.source_path, source), (naming.target_path, target)):
            relative = name_of(job.out, pair.subject).relative_to(job.out / pair.subject)
            write_nifti(folder / relative, array, affine)
    out_spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    row = {
        "subject": pair.subject,
        SITE_COLUMN: pair.site,
        "source_file": str(pair.source),
        "target_file": str(pair.target),
        "crop": "x".join(f"{s.start}:{s.stop}" for s in box),
        "grid": "x".join(str(n) for n in target.shape) + " @ " + "x".join(f"{v:.2f}" for v in out_spacing) + " mm",
        "seconds": round(time.perf_counter() - started, 1),
    }
    with atomic_path(_record_path(job.out, pair.subject)) as tmp:
        tmp.write_text(json.dumps({"row": row, "made_from": job.made_from}, indent=2) + "\n", encoding="utf-8")
    return row


def _run(jobs: list[Job], workers: int, progress: bool) -> dict[str, str]:
    """Prepare ``jobs`` (in ``workers`` spawned processes); ``{subject: error line}`` of those that failed."""
    failed: dict[str, str] = {}
    bar = tqdm(total=len(jobs), desc="prepare", unit="subject", disable=None if progress else True, dynamic_ncols=True)
    with bar:
        if workers == 1 or len(jobs) < 2:
            for job in jobs:
                try:
                    prepare_one(job)
                except UserError as error:
                    failed[job.pair.subject] = f"{job.pair.subject}: {error}"
                bar.update()
            return failed
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
            futures = {pool.submit(prepare_one, job): job for job in jobs}
            for future in as_completed(futures):
                subject = futures[future].pair.subject
                try:
                    future.result()
                except UserError as error:
                    failed[subject] = f"{subject}: {error}"
                bar.update()
    return failed


def write_participants(out: Path, pairs: list[FieldBridgePair]) -> Path:
    """``participants.tsv`` of the written subjects: ``participant_id, age, sex, site, split_group``
    (age and sex are not in ``pairs.tsv``: ``n/a`` as BIDS writes unknowns)."""
    path = out / naming.PARTICIPANTS
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["participant_id", "age", "sex", SITE_COLUMN, "split_group"])
        for pair in pairs:
            writer.writerow([pair.subject, "n/a", "n/a", pair.site, pair.row.get("split_group") or "n/a"])
    return path


def write_summary(out: Path, pairs: list[FieldBridgePair]) -> Path:
    """``prepare.tsv``: each written subject's row, from its record."""
    rows = [(_read_record(out, p.subject) or {}).get("row", {"subject": p.subject}) for p in pairs]
    header = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(out / SUMMARY_TABLE) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, delimiter="\t", lineterminator="\n", restval="n/a")
        writer.writeheader()
        writer.writerows(rows)
    return out / SUMMARY_TABLE


@dataclass
class Outcome:
    """What ``prepare --fieldbridge`` did: the summary to print and the lines of what failed."""

    summary: str
    problems: list[str]


def prepare_fieldbridge(
    root: Path | None,
    out: Path,
    sources: str | list[str] | None = None,
    voxel_size: float | None = None,
    workers: int = 1,
    progress: bool = True,
) -> Outcome:
    """Prepare every T1W 3T/7T pair of a FieldBridge-MRI download into ``out``.

    Subjects already prepared from the same files with the same settings are skipped
    (an interrupted run resumes). ``participants.tsv`` lists the subjects written
    (now or before), so ``fit`` never meets a listed subject without files.

    Args:
        root: the download (``None``: ``--sources``/``--voxel-size`` without ``--fieldbridge``).
        out: the dataset folder to write.
        sources: ``source_dataset`` values to keep (a list, or comma-separated text).
        voxel_size: isotropic voxel size to resample to, in mm (``None``: keep 0.5 mm).
        workers: subjects prepared in parallel processes.
        progress: a progress bar over subjects.

    Returns:
        The :class:`Outcome`: its ``problems`` (bad rows, missing or unreadable
        files, grid mismatches) are one line each; the command exits non-zero if any.

    Raises:
        UserError: a bad ``--jobs`` or ``--voxel-size``, no table, an output folder
            that is not ours.
    """
    from t7synth.data.bids import write_description
    from t7synth.data.prepare import check_output

    if root is None:
        raise UserError("--sources and --voxel-size apply to --fieldbridge")
    if isinstance(sources, str):
        sources = [name for name in sources.split(",") if name.strip()]
    if workers < 1:
        raise UserError(f"--jobs {workers}: must be at least 1")
    if voxel_size is not None and not (voxel_size > 0 and np.isfinite(voxel_size)):
        raise UserError(f"--voxel-size {voxel_size}: must be a positive number of millimetres")
    plan = read_plan(root, sources)
    out = Path(out).expanduser()
    if out.exists() and out.resolve() == Path(root).expanduser().resolve():
        raise UserError(f"--out {out} is the FieldBridge folder; choose another")
    check_output(out, [])
    check_writable(out)
    for folder in (out, out / RECORD_DIR):
        remove_stale_temporaries(folder)
    jobs = [Job(p, out, voxel_size, made_from(p, voxel_size)) for p in plan.pairs]
    pending = [job for job in jobs if not is_prepared(job)]
    (out / RECORD_DIR).mkdir(parents=True, exist_ok=True)
    failed = _run(pending, workers, progress)
    written = [p for p in plan.pairs if p.subject not in failed and _read_record(out, p.subject) is not None]
    if written:
        write_participants(out, written)
        write_summary(out, written)
        write_description(
            out,
            f"t7synth paired 3T/7T T1w from FieldBridge-MRI: {out.name}",
            "prepare --fieldbridge: pairs on one grid cropped to the brain's box"
            + (f", resampled to {voxel_size} mm" if voxel_size else ""),
            Path(root).expanduser(),
        )
    sites = Counter(p.site for p in written)
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(plan.skipped.items()))
    summary = (
        f"{len(written)} subjects in {naming.PARTICIPANTS} ("
        + ", ".join(f"{site} {n}" for site, n in sorted(sites.items()))
        + f"): {len(pending) - len(failed)} prepared, {len(jobs) - len(pending)} already complete"
        + (f", {len(failed)} failed" if failed else "")
        + f"; skipped rows: {skipped or 'none'}"
    )
    return Outcome(summary, plan.problems + [failed[s] for s in sorted(failed)])
