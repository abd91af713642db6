"""``predict --bids BIDS_DIR --output DERIV_DIR``: every T1w of a raw BIDS dataset in, a
BIDS derivative dataset out (the BIDS-Apps convention: Gorgolewski et al., PLoS Comput
Biol 2017; participant and session labels select what runs).

Inputs: ``sub-<l>/anat/*_T1w.nii[.gz]`` and ``sub-<l>/ses-<s>/anat/*_T1w.nii[.gz]``;
``derivatives/``, ``sourcedata/``, ``code/`` and hidden folders are never read. Each
T1w gives, under ``DERIV_DIR/sub-<l>[/ses-<s>]/anat/`` (the source's entities kept,
:func:`~t7synth.data.naming.derivative_path`):

* ``..._desc-synth7T_T1w.nii.gz``: the prediction, on the scan's grid;
* ``..._desc-synth7T_T1w.json``: its sidecar (``Sources``, ``SkullStripped``, the models'
  names and SHA-256, t7synth's version), written last;
* ``..._desc-brain_mask.nii.gz``: the brain mask the prediction used;
* ``..._desc-synth7Tsd_T1w.nii.gz``: the SD across models, when several are fused;

and ``DERIV_DIR/dataset_description.json`` (``DatasetType: derivative``, ``GeneratedBy``,
``DatasetLinks.raw``), ``DERIV_DIR/qc.tsv`` and ``DERIV_DIR/.bidsignore`` (listing
``qc.tsv``, which is no BIDS file, so validators pass). A rerun skips a scan whose files are all
there (each is written atomically and the sidecar last, so they are complete).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from t7synth.data import naming
from t7synth.errors import UserError

#: ``DatasetLinks`` name of the raw dataset in the derivative's ``Sources`` URIs.
RAW_LINK = "raw"


def _label(value: str, entity: str) -> str:
    """``01`` from ``01`` or ``sub-01`` (BIDS-Apps accept both)."""
    value = str(value)
    return value[len(entity) + 1 :] if value.startswith(f"{entity}-") else value


def find_t1w(root: Path, participants=None, sessions=None) -> list[Path]:
    """Every raw T1w of ``root`` (sorted), optionally of some participants and sessions.

    Raises:
        UserError: ``root`` is not a folder, a requested participant is absent, or no
            T1w scan matches.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"--bids {root}: not a folder")
    subjects = sorted(p for p in root.glob("sub-*") if p.is_dir())
    if participants:
        wanted = {f"sub-{_label(p, 'sub')}" for p in participants}
        missing = sorted(wanted - {p.name for p in subjects})
        if missing:
            raise UserError(f"--participant-label: no {', '.join(missing)} in {root}")
        subjects = [p for p in subjects if p.name in wanted]
    wanted_sessions = {f"ses-{_label(s, 'ses')}" for s in sessions} if sessions else None
    found = []
    for subject in subjects:
        folders = naming.raw_anat_dirs(root, subject.name)
        for folder in folders:
            session = folder.parent.name if folder.parent.name.startswith("ses-") else None
            if wanted_sessions is not None and session not in wanted_sessions:
                continue
            found += [
                path
                for path in sorted(folder.iterdir())
                if path.is_file()
                and not path.name.startswith(".")
                and naming.is_nifti(path)
                and naming.nifti_stem(path).endswith(naming.T1W_SUFFIX)
                and path.name.startswith(f"{subject.name}_")
            ]
    if not found:
        selection = ""
        if participants:
            selection += f" of participants {', '.join(str(p) for p in participants)}"
        if sessions:
            selection += f" in sessions {', '.join(str(s) for s in sessions)}"
        raise UserError(
            f"no T1w scan{selection} in {root} (expected sub-<label>[/ses-<label>]/anat/sub-<label>*_T1w.nii[.gz])"
        )
    return found


def bids_targets(root, output, participants=None, sessions=None, fused: bool = False) -> list[dict]:
    """The files of each T1w of ``predict --bids``, as the keyword arguments of a
    :class:`~t7synth.inference.jobs.Job` (which drives this module, so it is not imported here).

    Raises:
        UserError: see :func:`find_t1w`; also an output folder that is the raw dataset
            or a file.
    """
    root, output = Path(root).expanduser(), Path(output).expanduser()
    if output.resolve() == root.resolve():
        raise UserError(f"--output {output} is the BIDS dataset itself; write derivatives to another folder")
    if output.is_file():
        raise UserError(f"--output is a file, not a folder: {output}")
    targets = []
    for source in find_t1w(root, participants, sessions):
        prediction = naming.derivative_path(output, source.relative_to(root))
        targets.append(
            {
                "source": source,
                "output": prediction,
                "uncertainty": naming.uncertainty_path(prediction) if fused else None,
                "brain_mask_output": naming.brain_mask_output(prediction),
                "sidecar": naming.sidecar_path(prediction),
                "sources": (f"bids:{RAW_LINK}:{source.relative_to(root).as_posix()}",),
            }
        )
    return targets


def write_bidsignore(root: Path) -> Path:
    """``ROOT/.bidsignore`` listing ``qc.tsv`` (no BIDS file: validators would reject it),
    keeping any lines already there; atomically."""
    from t7synth.files import atomic_path

    path = Path(root) / naming.BIDSIGNORE
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    if naming.QC_TABLE not in lines:
        with atomic_path(path) as tmp:
            tmp.write_text("\n".join([*lines, naming.QC_TABLE]) + "\n", encoding="utf-8")
    return path


def complete(job) -> bool:
    """Whether every file of ``job`` is on disk (the sidecar is written last)."""
    files = [job.output, job.sidecar, job.brain_mask_output, job.uncertainty]
    return all(Path(f).is_file() for f in files if f is not None)


def sha256(path: str | Path) -> str:
    """The SHA-256 of a model file (hashlib, 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_entries(paths, names) -> list[dict]:
    """The sidecar's ``Models``: name, file name and SHA-256 of each model file."""
    return [{"Name": name, "File": Path(path).name, "SHA256": sha256(path)} for path, name in zip(paths, names)]
