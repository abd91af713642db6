"""Raw BIDS folders as they come (``prepare --raw``) and the BIDS names t7synth writes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import make_pair, write_nifti

from t7synth import prepare
from t7synth.cli import run_main
from t7synth.data import bids, naming
from t7synth.errors import UserError

AFFINE = np.diag([1.5, 1.5, 1.5, 1.0])
SHAPE = (12, 14, 10)


def scan(
    root: Path,
    subject: str,
    session: str | None,
    extra: str = "",
    field: float | None = None,
    seed: int = 0,
    kind: str = "T1w",
    seven: bool | None = None,
) -> Path:
    """Write one raw scan (the 7T volume when ``seven``, by default when its labels or
    sidecar say 7T, else the 3T one; or the brain mask) and its sidecar."""
    folder = root / subject / (f"ses-{session}" if session else "") / "anat"
    name = "_".join(part for part in (subject, f"ses-{session}" if session else "", extra, kind) if part)
    source, target, mask = make_pair(SHAPE, seed)
    if seven is None:
        seven = "7T" in f"{session}{extra}" or (field or 0) > 5
    array = mask if kind == "mask" else target if seven else source
    path = write_nifti(folder / f"{name}.nii.gz", array, AFFINE)
    if field is not None:
        path.with_name(f"{name}.json").write_text(
            json.dumps({naming.FIELD_STRENGTH_KEY: field, "Manufacturer": "Siemens"})
        )
    return path


def write_bids(root: Path) -> dict[str, tuple[Path, Path, Path | None]]:
    """Three subjects, three ways of saying the field strength; returns their files."""
    files = {
        # Session labels that name the field.
        "sub-01": (
            scan(root, "sub-01", "3T", seed=1),
            scan(root, "sub-01", "7T", seed=1),
            scan(root, "sub-01", "7T", "desc-brain", seed=1, kind="mask"),
        ),
        # Neutral sessions; the sidecars say 2.89 T (a Siemens 3T) and 6.98 T.
        "sub-02": (
            scan(root, "sub-02", "01", field=2.89, seed=2),
            scan(root, "sub-02", "02", field=6.98, seed=2),
            None,
        ),
        # No sessions: t7synth's own acq- layout.
        "sub-03": (scan(root, "sub-03", None, "acq-3T", seed=3), scan(root, "sub-03", None, "acq-7T", seed=3), None),
    }
    (root / naming.PARTICIPANTS).write_text("participant_id\tage\tsex\nsub-01\t61\tF\nsub-02\t70\tM\nsub-03\t55\tF\n")
    (root / naming.DATASET_DESCRIPTION).write_text(json.dumps({"Name": "raw", "BIDSVersion": "1.9.0"}))
    return files


def run(capsys, *args) -> tuple[int, str]:
    status = run_main(prepare.main, [*map(str, args), "--no-progress"])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


@pytest.fixture(autouse=True)
def _one_itk_thread():
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def test_session_bids_makes_the_same_dataset_as_a_pairs_table(tmp_path, capsys):
    raw = tmp_path / "raw"
    files = write_bids(raw)
    table = tmp_path / "pairs.tsv"
    lines = ["subject\tsource\ttarget\tmask\tage\tsex"]
    ages = {"sub-01": ("61", "F"), "sub-02": ("70", "M"), "sub-03": ("55", "F")}
    for subject, (source, target, mask) in files.items():
        lines.append("\t".join([subject, str(source), str(target), str(mask or ""), *ages[subject]]))
    table.write_text("\n".join(lines) + "\n")

    status, output = run(capsys, "--raw", raw, "--out", tmp_path / "from_raw", "--no-register")
    assert status == 0, output
    status, output = run(capsys, "--pairs", table, "--out", tmp_path / "from_pairs", "--no-register")
    assert status == 0, output

    a, b = tmp_path / "from_raw", tmp_path / "from_pairs"
    assert (a / naming.PARTICIPANTS).read_text() == (b / naming.PARTICIPANTS).read_text()
    for subject, (source, target, mask) in files.items():
        for name_of in (naming.source_path, naming.target_path, naming.mask_path):
            assert (
                name_of(a, subject).is_file()
                == name_of(b, subject).is_file()
                == (name_of is not naming.mask_path or mask is not None)
            )
            if name_of(a, subject).is_file():
                x, y = nib.load(name_of(a, subject)), nib.load(name_of(b, subject))
                np.testing.assert_array_equal(np.asarray(x.dataobj), np.asarray(y.dataobj))
                np.testing.assert_array_equal(x.affine, y.affine)
        # The right scan in the right role (same grid, so resampling changes nothing).
        for name_of, path in ((naming.source_path, source), (naming.target_path, target)):
            np.testing.assert_allclose(
                np.asarray(nib.load(name_of(a, subject)).dataobj), np.asarray(nib.load(path).dataobj), atol=1e-5
            )

    description = json.loads((a / naming.DATASET_DESCRIPTION).read_text())
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"] == naming.BIDS_VERSION
    assert (
        description["GeneratedBy"][0]["Name"] == "t7synth"
        and "scanner coordinates" in description["GeneratedBy"][0]["Description"]
    )
    assert description["SourceDatasets"] == [{"URL": raw.resolve().as_uri()}]
    assert "SourceDatasets" not in json.loads((b / naming.DATASET_DESCRIPTION).read_text())


def test_field_strength_sources_in_order(tmp_path):
    raw = tmp_path / "raw"
    # A label wins over a sidecar that disagrees; a mapping wins over both.
    labelled = scan(raw, "sub-01", "7T", field=3.0)
    assert bids.field_strength(labelled, {}).field == "7T"
    assert bids.field_strength(labelled, {("ses", "7T"): "3T"}).field == "3T"
    assert bids.field_strength(scan(raw, "sub-01", "a", field=1.5), {}).field is None  # 1.5 T: neither
    assert bids.field_strength(scan(raw, "sub-01", "b"), {}).reason == "field strength unknown"
    assert bids.field_strength(scan(raw, "sub-01", None, "acq-highres17T"), {}).field is None  # not 7T
    assert bids.entities("sub-01_ses-pre_acq-mp2rage_run-2_T1w.nii.gz") == {
        "sub": "01",
        "ses": "pre",
        "acq": "mp2rage",
        "run": "2",
    }


def test_one_mask_per_session_takes_the_7t_one(tmp_path):
    raw = tmp_path / "raw"
    source, target = scan(raw, "sub-01", "3T"), scan(raw, "sub-01", "7T")
    scan(raw, "sub-01", "3T", "desc-brain", kind="mask")
    mask = scan(raw, "sub-01", "7T", "desc-brain", kind="mask")
    assert bids.find_scans(raw, "sub-01") == (source, target, mask)


def test_mapping_option_names_the_sessions(tmp_path, capsys):
    raw = tmp_path / "raw"
    source, target = scan(raw, "sub-01", "pre", seed=1), scan(raw, "sub-01", "post", extra="acq-x7", seed=1, seven=True)
    status, output = run(capsys, "--raw", raw, "--out", tmp_path / "no_map", "--no-register")
    assert status == 2 and len(output.strip().splitlines()) == 1
    assert "missing 3T scan of sub-01" in output and "--field-strength" in output and "--pairs" in output
    assert not (tmp_path / "no_map").exists()

    status, output = run(
        capsys,
        "--raw",
        raw,
        "--out",
        tmp_path / "mapped",
        "--no-register",
        "--field-strength",
        "ses-pre=3T,ses-post=7T",
    )
    assert status == 0, output
    assert bids.find_scans(raw, "sub-01", bids.parse_field_map("ses-pre=3T,ses-post=7T"))[:2] == (source, target)


@pytest.mark.parametrize(
    ("layout", "needle"),
    [
        ("flat", "--pairs"),  # scans straight in the subject folder: not BIDS
        ("two runs", "several 7T T1w scans of sub-01"),
        ("both extensions", "keep one"),
    ],
)
def test_unrecognised_layouts_are_one_line(tmp_path, capsys, layout, needle):
    raw = tmp_path / "raw"
    if layout == "flat":
        write_nifti(raw / "sub-01" / "sub-01_3T.nii.gz", make_pair(SHAPE)[0], AFFINE)
    else:
        scan(raw, "sub-01", "3T")
        scan(raw, "sub-01", "7T", "run-1")
        if layout == "two runs":
            scan(raw, "sub-01", "7T", "run-2")
        else:
            path = raw / "sub-01" / "ses-7T" / "anat" / "sub-01_ses-7T_run-1_T1w.nii"
            nib.save(nib.Nifti1Image(make_pair(SHAPE)[1], AFFINE), str(path))
    status, output = run(capsys, "--raw", raw, "--out", tmp_path / "out", "--no-register")
    assert status == 2 and len(output.strip().splitlines()) == 1 and needle in output, output


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("ses-pre:3T", "ENTITY-LABEL=3T|7T"),
        ("ses-pre=3T", "both 3T and 7T"),
        ("ses-a=3T,ses-a=7T", "given twice"),
        ("pre=3T,post=7T", "'pre=3T'"),
    ],
)
def test_bad_mapping_is_one_line(text, needle):
    with pytest.raises(UserError, match=None) as error:
        bids.parse_field_map(text)
    assert needle in str(error.value) and "\n" not in str(error.value)


def test_mapping_needs_raw(tmp_path, capsys):
    table = tmp_path / "pairs.tsv"
    table.write_text("subject\tsource\ttarget\n")
    status, output = run(capsys, "--pairs", table, "--out", tmp_path / "out", "--field-strength", "ses-a=3T,ses-b=7T")
    assert status == 2 and "--field-strength applies to --raw" in output
