"""Age and sex for a conditioned model's scans: found, given, or refused; never guessed.

A conditioned net (the U-Nets with ``model.conditioning``) takes the subject's age and
sex as tokens. Fed a default (age 0, sex unknown) it still writes a plausible-looking
volume, only a different one: on the demo U-Net that silently moved the output by
0.115 on the [0, 1] scale and cost 2.15 dB against fit's own test of the same subject.
So every scan without ``--age``/``--sex`` is looked up, in this order:

1. the scan's JSON sidecar (``scan.json`` beside ``scan.nii.gz``), keys ``age``/``Age``/
   ``PatientAge`` and ``sex``/``Sex``/``PatientSex`` (as BIDS and dcm2niix write them);
2. the ``participants.tsv`` of the BIDS dataset the scan sits in (the nearest one
   above it), the row of the scan's ``sub-<label>``.

A scan still without them is refused in one line naming ``--age``/``--sex``, before
anything runs, unless ``--unconditioned`` asks for the training set's median age (the
model's ``train_age`` buffer) and sex 0.5 (unknown), which is printed. Models without
conditioning get the unknown values, which they ignore.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from t7synth.data import naming
from t7synth.data.layout import parse_participant, read_participants
from t7synth.errors import UserError
from t7synth.textfiles import read_json

#: How many folders above a scan are searched for a dataset's ``participants.tsv``
#: (``<root>/sub-X/ses-Y/anat/scan.nii.gz`` is three).
SEARCH_LEVELS = 4
#: Sidecar keys for age and sex (BIDS' participants columns, dcm2niix's DICOM names).
AGE_KEYS = ("age", "Age", "PatientAge")
SEX_KEYS = ("sex", "Sex", "PatientSex")
#: The value of sex when it is not known (female 1, male 0: the paper's token).
UNKNOWN_SEX = 0.5
_UNKNOWN = ("", "n/a", "na", "nan", "u", "o", "other", "unknown")


@dataclass(frozen=True)
class Found:
    """What the sidecar or the dataset says of one scan (``None``: not said) and where."""

    age: float | None = None
    sex: float | None = None
    where: str = ""


def add_arguments(parser) -> None:
    """``predict``'s ``--age``, ``--sex`` and ``--unconditioned``, with the help that says which
    models need them (here, beside the rules they follow, so the command stays thin)."""
    parser.add_argument(
        "--age",
        type=float,
        help="file input: age in years. Conditioned models (unet, gan_unet with model.conditioning; the model card "
        "says) need age and sex: from --age/--sex, the scan's JSON sidecar or the participants.tsv of the BIDS "
        "dataset it sits in; otherwise predict refuses",
    )
    parser.add_argument("--sex", choices=["F", "M"], help="file input: sex, for conditioned models (see --age)")
    parser.add_argument(
        "--unconditioned",
        action="store_true",
        help="conditioned models: give scans without age/sex the training set's median age and sex 0.5 (unknown), "
        "instead of refusing",
    )


def lookup(source: Path) -> Found:
    """Age and sex of ``source`` from its JSON sidecar, else its dataset's ``participants.tsv``.

    Raises:
        UserError: a sidecar or table that holds a value that is not an age or a sex.
    """
    age = sex = None
    where = []
    sidecar = source.with_name(naming.nifti_stem(source) + ".json")
    if sidecar.is_file():
        age, sex = _from_sidecar(sidecar)
        if age is not None or sex is not None:
            where.append(str(sidecar))
    label = naming.subject_label(source.name)
    if label and (age is None or sex is None):
        table = _participants_above(source)
        if table is not None:
            row = next((r for r in read_participants(table) if r["participant_id"] == label), None)
            if row is not None:
                table_age = _known(row.get("age"))
                table_sex = _known(row.get("sex"))
                parsed_age, parsed_sex, _ = parse_participant({"age": table_age, "sex": table_sex}, table, label)
                if age is None and table_age is not None:
                    age = parsed_age
                    where.append(f"{table} ({label})")
                if sex is None and table_sex is not None:
                    sex = parsed_sex
                    if f"{table} ({label})" not in where:
                        where.append(f"{table} ({label})")
    return Found(age, sex, ", ".join(where))


def resolve(jobs: Sequence, conditioned: bool, unconditioned: bool, median_age: float) -> tuple[list, str | None]:
    """Jobs with every ``age``/``sex`` filled, and the note to print (or ``None``).

    Args:
        jobs: :class:`~t7synth.inference.jobs.Job` s; ``None`` marks a value not given.
        conditioned: whether any of the models takes age/sex tokens.
        unconditioned: ``--unconditioned``: the median training age and sex 0.5 where
            a scan has none.
        median_age: the model's ``train_age`` (0 when unknown).

    Raises:
        UserError: a conditioned model and a scan with no age or sex found, naming
            the scan and ``--age``/``--sex``.
    """
    resolved, defaulted = [], []
    for job in jobs:
        age, sex = job.age, job.sex
        if conditioned and (age is None or sex is None):
            found = lookup(Path(job.source))
            age = found.age if age is None else age
            sex = found.sex if sex is None else sex
        if conditioned and (age is None or sex is None):
            if not unconditioned:
                missing = " and ".join(n for n, v in (("age", age), ("sex", sex)) if v is None)
                options = " and ".join(f"--{n}" for n, v in (("age", age), ("sex", sex)) if v is None)
                raise UserError(
                    f"{job.source}: the model is conditioned on age and sex, and this scan's {missing} "
                    f"{'are' if ' and ' in missing else 'is'} not known "
                    f"(no JSON sidecar or participants.tsv row gives it): give {options}, or --unconditioned to use "
                    f"the training set's median age and sex 0.5"
                )
            defaulted.append(job.source)
            age = median_age if age is None else age
            sex = UNKNOWN_SEX if sex is None else sex
        resolved.append(replace(job, age=0.0 if age is None else float(age), sex=UNKNOWN_SEX if sex is None else sex))
    note = None
    if defaulted:
        known = f"the training set's median age {median_age:g}" if median_age > 0 else "age 0 (this model does not "
        known += "" if median_age > 0 else "record its training set's ages)"
        note = f"note: --unconditioned: {len(defaulted)} scan(s) without age or sex get {known} and sex 0.5 (unknown)"
    return resolved, note


def _participants_above(source: Path) -> Path | None:
    folder = source.resolve().parent
    for _ in range(SEARCH_LEVELS):
        table = folder / naming.PARTICIPANTS
        if table.is_file():
            return table
        if folder.parent == folder:
            break
        folder = folder.parent
    return None


def _known(value) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return None if text.lower() in _UNKNOWN else text


def _from_sidecar(sidecar: Path) -> tuple[float | None, float | None]:
    # The guarded reader: size-limited, decoded, nesting checked (t7synth.textfiles).
    data = read_json(sidecar, f"JSON sidecar {sidecar}")
    if not isinstance(data, dict):
        raise UserError(f"{sidecar}: not a JSON object")
    raw_age = next((data[k] for k in AGE_KEYS if k in data), None)
    raw_sex = next((data[k] for k in SEX_KEYS if k in data), None)
    age = sex = None
    if raw_age is not None and _known(raw_age) is not None:
        # DICOM's PatientAge is "063Y"; months/weeks/days ("M"/"W"/"D") are converted.
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([YMWD]?)\s*", str(raw_age), re.IGNORECASE)
        if not match:
            raise UserError(f"{sidecar}: age {raw_age!r} is not a number of years")
        age = float(match.group(1)) / {"": 1, "Y": 1, "M": 12, "W": 52.1775, "D": 365.25}[match.group(2).upper()]
        if not math.isfinite(age):
            raise UserError(f"{sidecar}: age {raw_age!r} is not a number of years")
    if raw_sex is not None and _known(raw_sex) is not None:
        _, sex, _ = parse_participant({"sex": str(raw_sex)}, sidecar, "the scan")
    return age, sex
