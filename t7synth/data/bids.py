"""Raw BIDS folders as they come: which T1w scan of a subject is its 3T, which its 7T.

``prepare --raw`` reads a subject's T1-weighted scans from ``sub-XXX/anat`` and from
``sub-XXX/ses-*/anat`` (BIDS with or without sessions). Each scan's field strength
is taken, first match wins, from:

1. ``--field-strength``: the user's mapping of entity labels, e.g.
   ``ses-pre=3T,ses-post=7T`` or ``acq-lowres=3T,acq-mp2rage=7T`` (any entity of the
   file name: ``ses``, ``acq``, ``run``, ``rec``, ...);
2. a ``ses-`` or ``acq-`` label that ends in ``3T`` or ``7T`` (``ses-3T``, ``acq-7T``,
   ``ses-visit7T``; case-insensitive), t7synth's own layout included;
3. the scan's JSON sidecar (same name, ``.json``): ``MagneticFieldStrength`` in tesla,
   rounded (Siemens 3T scanners report 2.89).

A subject needs exactly one 3T and one 7T T1w scan; others (of unknown strength) are
ignored. Several of one strength (runs, acquisitions) are an error that suggests a
mapping or a ``--pairs`` table, which names every file explicitly. A brain mask
(``*_desc-brain_mask.nii[.gz]``) in any of the subject's ``anat`` folders is used; with
one per session, the 7T session's.

:func:`write_description` writes the ``dataset_description.json`` that makes
``prepare``'s and ``predict``'s outputs BIDS derivative datasets.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from t7synth.data import naming
from t7synth.errors import UserError
from t7synth.textfiles import read_json

FIELDS = ("3T", "7T")
#: A ``ses-``/``acq-`` label naming a field strength: ends in 3T or 7T, not after a digit.
FIELD_LABEL = re.compile(r"(?i)(?<![0-9])([37])t$")
#: Entities whose labels are read for a field strength without a mapping.
LABELLED_ENTITIES = ("ses", "acq")
#: ``key-label`` pairs of a BIDS file name (the suffix and extension excluded).
ENTITY = re.compile(r"^([a-zA-Z]+)-([a-zA-Z0-9]+)$")


@dataclass(frozen=True)
class Scan:
    """A raw T1w scan, its field strength (``3T``, ``7T`` or ``None``) and how it is known."""

    path: Path
    field: str | None
    reason: str


def parse_field_map(text: str | None) -> dict[tuple[str, str], str]:
    """``ses-pre=3T,ses-post=7T`` as ``{("ses", "pre"): "3T", ("ses", "post"): "7T"}``.

    Raises:
        UserError: an item that is not ``<entity>-<label>=3T|7T``, or a label given twice.
    """
    mapping: dict[tuple[str, str], str] = {}
    if not text:
        return mapping
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        match = ENTITY.match(key.strip())
        value = value.strip().upper()
        if not sep or not match or value not in FIELDS:
            raise UserError(
                f"--field-strength {text!r}: expected ENTITY-LABEL=3T|7T items separated by commas, e.g. "
                f"ses-pre=3T,ses-post=7T; got {item.strip()!r}"
            )
        entity = (match.group(1).lower(), match.group(2))
        if entity in mapping:
            raise UserError(f"--field-strength {text!r}: {key.strip()} is given twice")
        mapping[entity] = value
    if set(mapping.values()) != set(FIELDS):
        raise UserError(f"--field-strength {text!r}: map labels to both 3T and 7T")
    return mapping


def entities(name: str) -> dict[str, str]:
    """The ``key: label`` entities of a BIDS file name (``sub-01_ses-3T_T1w.nii.gz`` ->
    ``{"sub": "01", "ses": "3T"}``)."""
    parts = naming.nifti_stem(Path(name)).split("_")
    found = {}
    for part in parts[:-1]:  # the last part is the suffix (T1w)
        match = ENTITY.match(part)
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def field_strength(path: Path, mapping: dict[tuple[str, str], str]) -> Scan:
    """The field strength of one scan (see the module docstring for the order)."""
    labels = entities(path.name)
    for key, label in labels.items():
        if (key, label) in mapping:
            return Scan(path, mapping[(key, label)], f"--field-strength {key}-{label}")
    for key in LABELLED_ENTITIES:
        match = FIELD_LABEL.search(labels.get(key, ""))
        if match:
            return Scan(path, f"{match.group(1)}T", f"{key}-{labels[key]}")
    sidecar = path.with_name(naming.nifti_stem(path) + ".json")
    if sidecar.is_file():
        content = read_json(sidecar)  # size, encoding, nesting: one line naming it
        if not isinstance(content, dict):
            raise UserError(f"{sidecar} is not a JSON object (a BIDS sidecar)")
        value = content.get(naming.FIELD_STRENGTH_KEY)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            tesla = round(float(value))
            if f"{tesla}T" in FIELDS:
                return Scan(path, f"{tesla}T", f"{sidecar.name}: {naming.FIELD_STRENGTH_KEY} {value:g}")
            return Scan(path, None, f"{naming.FIELD_STRENGTH_KEY} {value:g} in {sidecar.name}")
    return Scan(path, None, "field strength unknown")


def _nifti_files(folders: list[Path], subject: str, suffix: str) -> list[Path]:
    """``<subject>_*<suffix>.nii[.gz]`` files in ``folders``; both extensions of one
    name are an error."""
    found = []
    for folder in folders:
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or not path.is_file() or not naming.is_nifti(path):
                continue
            stem = naming.nifti_stem(path)
            if stem.startswith(f"{subject}_") and stem.endswith(suffix):
                found.append(path)
    stems: dict[Path, Path] = {}
    for path in found:
        key = path.with_name(naming.nifti_stem(path))
        if key in stems:
            raise UserError(f"both {stems[key]} and {path} exist; keep one")
        stems[key] = path
    return found


def find_scans(
    raw: Path, subject: str, mapping: dict[tuple[str, str], str] | None = None
) -> tuple[Path, Path, Path | None]:
    """``(3T scan, 7T scan, brain mask or None)`` of ``subject`` in the raw folder ``raw``.

    Raises:
        UserError: no T1w scan, no 3T or no 7T scan, or several of one strength (each
            message says how to resolve it: a ``--field-strength`` mapping or ``--pairs``).
    """
    folders = naming.raw_anat_dirs(raw, subject)
    scans = [field_strength(path, mapping or {}) for path in _nifti_files(folders, subject, naming.T1W_SUFFIX)]
    if not scans:
        raise UserError(
            f"no T1w scan of {subject} in {raw / subject}: expected {naming.source_path(raw, subject)} and its 7T "
            f"partner, or sessions {subject}/ses-*/anat/{subject}_ses-*_T1w.nii.gz; for another layout, list the "
            "pairs in a table (--pairs)"
        )
    found = {field: [s for s in scans if s.field == field] for field in FIELDS}
    listing = "; ".join(f"{s.path.relative_to(raw)} ({s.field or '?'}: {s.reason})" for s in scans)
    for field, expected in (("3T", naming.source_path(raw, subject)), ("7T", naming.target_path(raw, subject))):
        if not found[field]:
            raise UserError(
                f"missing {field} scan of {subject}: expected {expected}, or a T1w scan whose ses-/acq- label ends "
                f"in {field} or whose JSON sidecar has {naming.FIELD_STRENGTH_KEY} {field[0]} (found: {listing}); "
                f"map labels with --field-strength (e.g. ses-LABEL={field}) or list the pairs with --pairs"
            )
        if len(found[field]) > 1:
            raise UserError(
                f"several {field} T1w scans of {subject} ({listing}); keep one, tell them apart with --field-strength, "
                "or list the pairs with --pairs"
            )
    source, target = found["3T"][0].path, found["7T"][0].path
    masks = _nifti_files(folders, subject, naming.MASK_SUFFIX)
    if len(masks) > 1:
        # One mask per session: the 7T's grid is the one the dataset is written on.
        preferred = [m for m in masks if m.parent == target.parent] or [m for m in masks if m.parent == source.parent]
        if len(preferred) != 1:
            raise UserError(
                f"several brain masks of {subject}: {', '.join(str(m.relative_to(raw)) for m in masks)}; keep one, "
                "or use --pairs"
            )
        masks = preferred
    return source, target, masks[0] if masks else None


def write_description(
    folder: Path, name: str, description: str, source: Path | None = None, link: str | None = None
) -> Path:
    """``folder/dataset_description.json`` of a BIDS derivative dataset, atomically.

    Args:
        folder: the dataset folder.
        name: the dataset's ``Name``.
        description: what t7synth did, in ``GeneratedBy[0].Description``.
        source: the dataset it was made from (``SourceDatasets``, as a file URI).
        link: also name ``source`` in ``DatasetLinks`` under this key, so sidecars can
            point into it with BIDS URIs (``bids:<link>:sub-01/anat/...``).
    """
    import t7synth
    from t7synth.files import atomic_path

    data = {
        "Name": name,
        "BIDSVersion": naming.BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "t7synth", "Version": t7synth.__version__, "Description": description}],
    }
    if source is not None:
        data["SourceDatasets"] = [{"URL": Path(source).expanduser().resolve().as_uri()}]
        if link is not None:
            data["DatasetLinks"] = {link: Path(source).expanduser().resolve().as_uri()}
    path = Path(folder) / naming.DATASET_DESCRIPTION
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path
