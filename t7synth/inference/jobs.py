"""The volumes a ``predict`` command asks for (files, folders, dataset splits), and
running a :class:`~t7synth.inference.synthesiser.Synthesiser` over them with a progress bar."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm.auto import tqdm

from t7synth.data import naming
from t7synth.data.bids import write_description
from t7synth.data.layout import assign_splits, discover
from t7synth.data.naming import (
    PLAIN_SUFFIX,
    QC_TABLE,
    is_nifti,
    nifti_stem,
    subject_label,
    synthetic_path,
    uncertainty_path,
)
from t7synth.errors import UserError
from t7synth.files import check_writable, remove_stale_temporaries
from t7synth.inference import conditioning
from t7synth.inference.bids_app import RAW_LINK, bids_targets, complete, model_entries, write_bidsignore
from t7synth.inference.package import load_package
from t7synth.inference.preprocess_raw import PREPROCESS_MODES, RawPipeline
from t7synth.inference.qc import write_table
from t7synth.inference.synthesiser import Fusion, Synthesiser, device_for
from t7synth.inference.trained import load_trained, refuse_package


@dataclass(frozen=True)
class Job:
    """One volume to synthesise.

    ``age`` (years) and ``sex`` (1 female, 0 male, 0.5 unknown) feed the conditioning
    tokens of models that use them. :func:`plan_jobs` leaves them ``None`` where the
    command line did not give them; :func:`t7synth.inference.conditioning.resolve`
    finds them (or refuses) before anything runs.
    ``uncertainty`` is where a prediction fused from several models writes its SD map.
    ``brain_mask_output`` is where the brain mask used is written (extracted brains,
    BIDS derivatives); ``sidecar`` the JSON sidecar of a BIDS derivative
    (:mod:`t7synth.inference.preprocess_raw`).
    """

    source: Path
    output: Path
    mask: Path | None = None
    age: float | None = 0.0
    sex: float | None = 0.5
    uncertainty: Path | None = None
    brain_mask_output: Path | None = None
    sidecar: Path | None = None
    sources: tuple[str, ...] = ()


def is_dataset(folder: Path) -> bool:
    """A t7synth dataset folder: ``participants.tsv`` or ``sub-*/anat`` folders."""

    return (folder / naming.PARTICIPANTS).is_file() or any(p.is_dir() for p in folder.glob("sub-*/anat"))


def plan_jobs(
    input: str | Path,
    output: str | Path,
    mask: str | Path | None = None,
    split: str | None = None,
    config=None,
    age: float | None = None,
    sex: float | None = None,
    uncertainty: bool = False,
) -> list[Job]:
    """The volumes a ``predict`` command line asks for, checked before anything runs.

    Args:
        input: a NIfTI file, a folder of NIfTI files, or a dataset folder (every
            subject's 3T input, with its mask, age and sex).
        output: a file for a file input (a folder otherwise, or when it does not end
            in ``.nii``/``.nii.gz``).
        mask: a mask file for a file input; for folders a folder holding a mask with
            the same file name or the same ``sub-XXX`` label as each input.
        split: ``train``/``val``/``test``: only that split of a dataset folder, split
            as the model's training did (``participants.tsv`` or the config's seed).
        config: the model's :class:`~t7synth.config.Config` (for ``split``).
        age, sex: conditioning values of a file input (years; 1 female, 0 male);
            ``None`` where not given (folders of files too), for
            :func:`t7synth.inference.conditioning.resolve`; a dataset folder's come
            from its ``participants.tsv``.
        uncertainty: give each job an SD map beside its output
            (:func:`~t7synth.data.naming.uncertainty_path`; several models fused).

    Raises:
        UserError: missing paths, a folder with no NIfTI files, a missing mask, an
            output that would overwrite an input, ``split`` on a plain folder, or
            ``age``/``sex`` with a folder.
    """
    input, output = Path(input).expanduser(), Path(output).expanduser()
    mask = Path(mask).expanduser() if mask is not None else None
    if mask is not None and not mask.exists():
        raise UserError(f"mask not found: {mask}")
    if input.is_file():
        if split:
            raise UserError("--split needs a dataset folder as --input")
        if mask is not None and not mask.is_file():
            raise UserError(f"--mask must be a file when --input is a file: {mask}")
        target = output if is_nifti(output) and not output.is_dir() else output / f"{nifti_stem(input)}{PLAIN_SUFFIX}"
        jobs = [
            Job(
                source=input,
                output=target,
                mask=mask,
                age=None if age is None else float(age),
                sex=None if sex is None else float(sex),
            )
        ]
    elif input.is_dir():
        if age is not None or sex is not None:
            raise UserError("--age and --sex apply to a single file; a dataset folder takes them from participants.tsv")
        if is_nifti(output) and not output.is_dir():
            raise UserError(f"--output must be a folder when --input is a folder: {output}")
        if output.is_file():
            raise UserError(f"--output is a file, not a folder: {output}")
        if mask is not None and not mask.is_dir():
            raise UserError(f"--mask must be a folder when --input is a folder: {mask}")
        jobs = (
            _dataset_jobs(input, output, mask, split, config)
            if is_dataset(input)
            else _folder_jobs(input, output, mask, split)
        )
    else:
        raise UserError(f"input not found: {input}")
    if uncertainty:
        jobs = [replace(job, uncertainty=uncertainty_path(job.output)) for job in jobs]
    sources = {job.source.resolve() for job in jobs}
    outputs: dict[Path, Path] = {}
    for job in jobs:
        for written in (job.output, job.uncertainty):
            if written is None:
                continue
            resolved = written.resolve()
            if resolved in sources:
                raise UserError(f"output {written} would overwrite an input; choose another --output")
            if resolved in outputs:
                raise UserError(f"{job.source} and {outputs[resolved]} would both be written to {written}")
            outputs[resolved] = job.source
    return jobs


def _dataset_jobs(root: Path, output: Path, mask_dir: Path | None, split: str | None, config) -> list[Job]:
    if output.resolve() == root.resolve():
        # The outputs would land among the subjects' own files, as a derivative dataset
        # description over the dataset's.
        raise UserError(f"--output {output} is the dataset folder itself; write the predictions to another folder")
    records = discover(root)
    if split:
        if config is None:
            raise UserError("--split needs the model's config to split the dataset as training did")
        data = config.data
        records = assign_splits(records, data.val_fraction, data.test_fraction, data.split_seed, require_train=False)[
            split
        ]
        if not records:
            raise UserError(f"the {split} split of {root} has no subjects")
    jobs = []
    for record in records:
        mask = _match_mask(record.source, mask_dir) if mask_dir is not None else record.mask
        # A BIDS derivative dataset: OUT/sub-XXX/anat/sub-XXX_desc-synth7T_T1w.nii.gz.
        jobs.append(
            Job(
                source=record.source,
                output=synthetic_path(output, record.subject),
                mask=mask,
                age=record.age,
                sex=record.sex,
            )
        )
    return jobs


def _folder_jobs(folder: Path, output: Path, mask_dir: Path | None, split: str | None) -> list[Job]:
    if split:
        raise UserError(f"--split needs a dataset folder (participants.tsv or sub-*/anat), not {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p) and not p.name.startswith("."))
    if not files:
        raise UserError(f"no NIfTI files (.nii, .nii.gz) in {folder}")
    return [
        Job(
            source=path,
            output=output / f"{nifti_stem(path)}{PLAIN_SUFFIX}",
            mask=_match_mask(path, mask_dir) if mask_dir else None,
            age=None,
            sex=None,
        )
        for path in files
    ]


def _match_mask(source: Path, mask_dir: Path) -> Path:
    """The mask of ``source`` in ``mask_dir``: the same file name, else the one file
    with the same ``sub-XXX`` label."""

    same = mask_dir / source.name
    if same.is_file():
        return same
    label = subject_label(source.name)
    if label:
        candidates = [
            p for p in sorted(mask_dir.iterdir()) if p.is_file() and is_nifti(p) and subject_label(p.name) == label
        ]
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            raise UserError(f"several masks for {label} in {mask_dir}: {', '.join(p.name for p in candidates)}")
    raise UserError(f"no mask for {source.name} in {mask_dir} (same file name or same sub-XXX label)")


def run_jobs(
    synthesiser, jobs: Sequence[Job], report: Callable[[str], None] | None = None, progress: bool = True
) -> list[str]:
    """Synthesise every job, carrying on past volumes that fail.

    Args:
        report: called with the message of each failure as it happens (default: one
            ``error: ...`` line on stderr, printed above the progress bar).
        progress: show a tqdm bar over volumes (only on a terminal).

    Returns:
        The failure messages (each names its file); empty when all succeeded.
    """

    failures: list[str] = []
    bar = tqdm(jobs, desc="predict", unit="volume", disable=None if progress else True)
    for job in bar:
        try:
            synthesiser.write(job)
        except UserError as error:
            message = str(error)
            failures.append(message)
            if report is not None:
                report(message)
            else:
                tqdm.write(f"error: {message}", file=sys.stderr)
    return failures


@dataclass
class PredictOutcome:
    """What ``predict`` did: the line to print and the failures (one message each)."""

    summary: str
    total: int
    failures: list[str]


def predict(
    ckpt: str | Path | Sequence[str | Path] | None,
    input: str | Path | None,
    output: str | Path,
    mask: str | Path | None = None,
    split: str | None = None,
    age: float | None = None,
    sex: float | None = None,
    gpus: int = 0,
    batch_size: int | None = None,
    progress: bool = True,
    model: str | Path | Sequence[str | Path] | None = None,
    unconditioned: bool = False,
    notify: Callable[[str], None] | None = None,
    skull_strip: bool = False,
    n4: bool = False,
    preprocess: str = "auto",
    bids: str | Path | None = None,
    participant_labels: Sequence[str] | None = None,
    session_labels: Sequence[str] | None = None,
    quality=None,
) -> PredictOutcome:
    """Synthesise what a ``predict`` command line asks for (see :func:`plan_jobs`).

    The model comes from the checkpoint ``ckpt`` or, instead, from the package
    ``model`` (:mod:`t7synth.inference.package`); both give the same predictions.
    Several checkpoints (or packages) are fused: each output is their voxel-wise mean,
    with the SD across them written beside it (:class:`~t7synth.inference.synthesiser.Fusion`).

    Every scan goes through :class:`~t7synth.inference.preprocess_raw.RawPipeline`:
    brain extraction (``skull_strip``) and N4 (``n4``) on the scan's grid, what the
    model's training inputs had with ``preprocess="auto"``, and a row of ``qc.tsv``
    beside the outputs. ``bids`` (instead of ``input``) reads a raw BIDS dataset and
    writes a BIDS derivative dataset to ``output`` (:mod:`t7synth.inference.bids_app`).
    ``quality`` adds a no-reference quality measure's columns to ``qc.tsv`` (see
    :class:`~t7synth.inference.preprocess_raw.RawPipeline`).

    A single file's error is the command's error (one line, exit 2); a folder keeps
    going past volumes that fail, and their messages come back in ``failures``.
    A conditioned model's scans get their age and sex from the command line, a JSON
    sidecar or their dataset's ``participants.tsv``, else are refused, unless
    ``unconditioned`` (:mod:`t7synth.inference.conditioning`); ``notify`` gets the
    note that says so (default: stderr).
    """

    if age is not None and not (0.0 <= age <= 150.0):
        raise UserError(f"--age {age}: expected years between 0 and 150")
    if preprocess not in PREPROCESS_MODES:
        raise UserError(f"--preprocess {preprocess}: expected one of {', '.join(PREPROCESS_MODES)}")
    if (input is None) == (bids is None):
        raise UserError("predict needs exactly one of --input and --bids")
    if bids is None and (participant_labels or session_labels):
        raise UserError("--participant-label and --session-label need --bids")
    if bids is not None and (mask is not None or split or age is not None or sex is not None):
        raise UserError("--bids takes no --mask, --split, --age or --sex (each scan's brain is extracted)")
    device = device_for(gpus)
    sources = _as_list(model if model is not None else ckpt)
    synthesisers = []
    for source in sources:
        if model is not None:
            synthesisers.append(Synthesiser(load_package(source), device=device, batch_size=batch_size))
        else:
            refuse_package(source, f"--ckpt {source} is a model package; pass it as --model {source}")
            synthesisers.append(Synthesiser(load_trained(source)[0], device=device, batch_size=batch_size))
    if not synthesisers:
        raise UserError("predict needs a model: --ckpt or --model")
    fused = len(synthesisers) > 1
    if fused:
        if (
            split
            and len(
                {
                    (c.data.val_fraction, c.data.test_fraction, c.data.split_seed)
                    for c in (s.config for s in synthesisers)
                }
            )
            > 1
        ):
            raise UserError(
                f"--split {split}: the models split the dataset differently (data.val_fraction, test_fraction, "
                "split_seed)"
            )
        synthesiser = Fusion(synthesisers)
    else:
        synthesiser = synthesisers[0]
    names = [s.config.model.name for s in synthesisers]
    skipped: list[Job] = []
    if bids is not None:
        planned = [Job(**target) for target in bids_targets(bids, output, participant_labels, session_labels, fused)]
        jobs, skipped = [j for j in planned if not complete(j)], [j for j in planned if complete(j)]
        # The mask and N4 choices of --preprocess auto apply; a BIDS T1w is raw, so
        # extraction is what a model trained on brains needs.
        pipeline = RawPipeline(
            synthesiser,
            skull_strip,
            n4,
            preprocess,
            device=device,
            models=model_entries(sources, names),
            quality=quality,
        )
    else:
        jobs = plan_jobs(input, output, mask, split, synthesiser.config, age=age, sex=sex, uncertainty=fused)
        pipeline = RawPipeline(synthesiser, skull_strip, n4, preprocess, device=device, quality=quality)
    models = [s.model for s in synthesisers]
    jobs, note = conditioning.resolve(
        jobs,
        conditioned=any(m.uses_context() for m in models),
        unconditioned=unconditioned,
        median_age=float(models[0].train_age),
    )
    if note:
        (notify or (lambda text: print(text, file=sys.stderr)))(note)

    output_root = Path(output).expanduser()
    for folder in sorted({job.output.parent for job in jobs} | ({output_root} if bids is not None else set())):
        check_writable(folder)  # a read-only --output is one line now, not one per volume
        remove_stale_temporaries(folder)  # what a killed predict left
    # Said once everything was checked: a refused command prints its error line alone.
    for line in dict.fromkeys(s.precision.describe() for s in synthesisers):
        print(line, file=sys.stderr)

    if bids is not None:
        write_description(
            output_root,
            f"t7synth synthetic 7T: {output_root.name}",
            f"predict --bids: 7T-like T1w synthesised from each T1w ({', '.join(sorted(set(names)))})",
            Path(bids),
            link=RAW_LINK,
        )
        write_bidsignore(output_root)
    elif Path(input).expanduser().is_dir() and is_dataset(Path(input).expanduser()):
        write_description(
            output_root,
            f"t7synth synthetic 7T: {Path(output).name}",
            f"predict: 7T-like T1w synthesised from each subject's 3T ({', '.join(sorted(set(names)))})",
            Path(input),
        )
    fusion = f" (each the mean of {len(synthesisers)} models, its SD map beside it)" if fused else ""
    if bids is None and Path(input).expanduser().is_file():
        written = pipeline.write(jobs[0])
        qc_file = pipeline_table(pipeline, written.parent / QC_TABLE)
        return PredictOutcome(
            f"{written}"
            + (f" (mean of {len(synthesisers)} models; SD: {jobs[0].uncertainty})" if fused else "")
            + f"; quality: {qc_file}",
            1,
            [],
        )
    failures = run_jobs(pipeline, jobs, progress=progress) if jobs else []
    qc_file = pipeline_table(pipeline, output_root / QC_TABLE)
    done = f"; {len(skipped)} already complete, skipped" if skipped else ""
    return PredictOutcome(
        f"{len(jobs) - len(failures)} of {len(jobs)} volumes written to {output}{fusion}{done}; quality: {qc_file}",
        len(jobs),
        failures,
    )


def pipeline_table(pipeline, path: Path) -> Path:
    """Write the pipeline's quality rows to ``path`` (kept rows of earlier runs included)."""

    return write_table(path, pipeline.rows)


def _as_list(value) -> list:
    """One path or several, as a list."""
    if value is None:
        return []
    return [value] if isinstance(value, (str, Path)) else list(value)
