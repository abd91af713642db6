"""The demo dataset on disk: generated once per settings, cached, shared by every command.

Every command falls back to this dataset when no ``--data`` is given, so a newcomer can
run the whole loop on a laptop. The dataset is generated deterministically from its
settings by :mod:`t7synth.data.demo.simulate` and cached under
``cache_root()/demo/demo-n<N>-s<SEED>-v<MM>-<FORMAT_VERSION>`` (``$T7SYNTH_CACHE``
moves the cache root); later calls return the cached folder without touching it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from t7synth.data import naming
from t7synth.data.demo.simulate import (
    DESCRIPTION_JSON,
    FORMAT_VERSION,
    SIMULATION_TSV,
    check_parameters,
    read_description,
    simulate_dataset,
    subject_labels,
)
from t7synth.errors import UserError
from t7synth.files import cache_root, exclusive_lock, remove_stale_temporaries
from t7synth.textfiles import read_table


def default_demo_dir(n_subjects: int = 20, seed: int = 0, voxel_size: float = 1.5) -> Path:
    """The cache folder of the demo dataset with these settings.

    The name carries every setting and the format version, so different settings
    never share a folder and a changed forward model never reuses a stale one.
    """
    return cache_root() / "demo" / f"demo-n{n_subjects}-s{seed}-v{voxel_size:g}-{FORMAT_VERSION}"


def ensure_demo_dataset(
    n_subjects: int = 20,
    seed: int = 0,
    out: Path | None = None,
    voxel_size: float = 1.5,
    progress: bool = True,
) -> Path:
    """Return the demo dataset folder, generating it first if it is not there yet.

    A folder counts as present when its ``dataset_description.json`` records these
    exact settings and every subject's files exist; then nothing is read or written
    beyond that check. Otherwise the folder is (re)generated atomically under a file
    lock, so that processes started together (DDP ranks, parallel sweep trials) make
    it once and never see half of it.

    Args:
        n_subjects: how many subjects, at least 3.
        seed: non-negative integer; same seed, byte-identical dataset.
        out: where to put it; default :func:`default_demo_dir`. An existing folder is
            reused if it holds this dataset, replaced if it holds a demo dataset with
            other settings, and refused if it holds anything else.
        voxel_size: isotropic spacing in mm, 1 to 6.
        progress: show a progress bar while generating.

    Returns:
        The dataset folder.

    Raises:
        UserError: for a bad setting, an ``out`` that is a file or a non-empty folder
            of something else, or a folder that cannot be written.
    """
    check_parameters(n_subjects, seed, voxel_size)
    folder = Path(out).expanduser() if out is not None else default_demo_dir(n_subjects, seed, voxel_size)
    settings = {
        "format_version": FORMAT_VERSION,
        "n_subjects": n_subjects,
        "seed": seed,
        "voxel_size": float(voxel_size),
    }
    if demo_is_complete(folder, settings):
        return folder
    _check_replaceable(folder)
    try:
        with exclusive_lock(folder):
            # A killed generation leaves its hidden temporary folder beside this one.
            remove_stale_temporaries(folder.parent, folder.name)
            # Another process may have finished it while we waited for the lock.
            if not demo_is_complete(folder, settings):
                simulate_dataset(folder, n_subjects=n_subjects, seed=seed, voxel_size=voxel_size, progress=progress)
    except OSError as error:
        raise UserError(f"cannot write the demo dataset to {folder}: {error.strerror or error}") from error
    return folder


def demo_is_complete(folder: Path, settings: dict) -> bool:
    """Whether ``folder`` holds the demo dataset made with ``settings``, all files present."""
    recorded = read_description(folder)
    if recorded is None or any(recorded.get(key) != value for key, value in settings.items()):
        return False
    if not (folder / naming.PARTICIPANTS).is_file() or not (folder / naming.DSEG_TABLE).is_file():
        return False
    for label in subject_labels(settings["n_subjects"]):
        for path in (naming.source_path, naming.target_path, naming.mask_path, naming.dseg_path):
            if not path(folder, label).is_file():
                return False
    return True


def _check_replaceable(folder: Path) -> None:
    """Refuse to generate over anything that is not ours: generating replaces the folder."""
    for parent in [folder, *folder.parents]:
        if parent.exists():
            if not parent.is_dir():
                what = "output path" if parent == folder else "a parent of the output path"
                raise UserError(f"{what} {parent} exists and is not a folder")
            break
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    recorded = read_description(folder)
    if recorded is None:
        raise UserError(
            f"{folder} exists and is not a t7synth demo dataset (no {DESCRIPTION_JSON}); choose a new or empty folder"
        )
    foreign = _foreign_files(folder, recorded)
    if foreign:
        shown = ", ".join(str(p.relative_to(folder)) for p in foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        raise UserError(
            f"{folder} holds a demo dataset with other settings and files the demo did not write ({shown}); "
            "regenerating replaces the folder: move them away or choose another --out"
        )


def _foreign_files(folder: Path, recorded: dict) -> list[Path]:
    """Files and folders under ``folder`` that a demo generation with ``recorded``
    settings did not write, so that regenerating would delete them: anything but the
    demo's tables and, in each of its subjects' ``anat`` folders, files named after
    the subject."""
    n_subjects = recorded.get("n_subjects")
    labels = subject_labels(n_subjects) if isinstance(n_subjects, int) and n_subjects > 0 else []
    tables = {naming.PARTICIPANTS, DESCRIPTION_JSON, SIMULATION_TSV, naming.DSEG_TABLE}
    ours = {folder / name for name in tables if (folder / name).is_file()}
    for label in labels:
        anat = naming.anat_dir(folder, label)
        ours |= {anat.parent, anat} | {p for p in anat.glob(f"{label}_*") if p.is_file()}
    return sorted(p for p in folder.rglob("*") if p not in ours)


def describe_demo(folder: Path) -> str:
    """One line: subjects per split, volume shape, spacing and seed of a demo dataset."""
    settings = read_description(folder) or {}
    splits = Counter(row.get("split", "?") for row in read_table(folder / naming.PARTICIPANTS, delimiter="\t").rows)
    n = sum(splits.values())
    split_text = ", ".join(f"{name} {splits[name]}" for name in naming.SPLITS if splits[name])
    shape = "x".join(str(size) for size in settings.get("shape", [])) or "?"
    return (
        f"{n} subjects ({split_text}), shape {shape}, spacing {settings.get('voxel_size', 0):g} mm, "
        f"seed {settings.get('seed', '?')}"
    )
