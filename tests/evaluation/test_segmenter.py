"""evaluate --segmenter: a thresholding script of the tests' own writes FreeSurfer label numbers.

The script (written into ``tmp_path``) labels the left half of the brain's bright voxels
2 (Left-Cerebral-White-Matter), the right half's 41, dimmer brain voxels 3 and 42
(cortex), and appends a line to a counter file each time it runs. ``--upsample`` writes
the labels on a grid twice as fine (another grid than the 7T's, as SynthSeg's 1 mm
output is); ``--fail`` exits 3, ``--silent`` writes nothing.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import make_dataset, write_nifti

from t7synth import evaluate
from t7synth.cli import run_main
from t7synth.config import Config
from t7synth.errors import UserError
from t7synth.evaluation import segmenter as segmenter_module
from t7synth.evaluation.evaluator import Evaluator
from t7synth.scores import STRUCTURES

SCRIPT = """
import sys
import nibabel as nib
import numpy as np

source, output, counter = sys.argv[1:4]
with open(counter, "a") as handle:
    handle.write(source + "\\n")
if "--fail" in sys.argv:
    print("segmenter: out of licences", file=sys.stderr)
    sys.exit(3)
if "--silent" in sys.argv:
    sys.exit(0)
image = nib.load(source)
x = np.asarray(image.dataobj, dtype=np.float64)
left = np.zeros(x.shape, dtype=bool)
left[: x.shape[0] // 2] = True  # RAS+: low first index is the left
labels = np.zeros(x.shape, dtype=np.int16)
labels[(x > 0.6) & left] = 2
labels[(x > 0.6) & ~left] = 41
labels[(x > 0.05) & (x <= 0.6) & left] = 3
labels[(x > 0.05) & (x <= 0.6) & ~left] = 42
affine = image.affine
if "--upsample" in sys.argv:
    labels = labels.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    half = affine.copy()
    half[:3, :3] = affine[:3, :3] / 2
    half[:3, 3] = affine[:3, 3] - affine[:3, :3].sum(1) / 4  # voxel centres a quarter voxel in
    affine = half
nib.save(nib.Nifti1Image(labels, affine), output)
"""


def _threshold(x: np.ndarray) -> np.ndarray:
    """The script's labels, computed here independently."""
    left = np.zeros(x.shape, dtype=bool)
    left[: x.shape[0] // 2] = True
    labels = np.zeros(x.shape, dtype=np.int16)
    labels[(x > 0.6) & left], labels[(x > 0.6) & ~left] = 2, 41
    labels[(x > 0.05) & (x <= 0.6) & left], labels[(x > 0.05) & (x <= 0.6) & ~left] = 3, 42
    return labels


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.sum(a & b) / (a.sum() + b.sum())


@pytest.fixture
def script(tmp_path) -> Path:
    path = tmp_path / "threshold_seg.py"
    path.write_text(SCRIPT)
    return path


def _command(script: Path, counter: Path, *flags: str) -> str:
    return f"{sys.executable} {script} {{input}} {{output}} {counter} {' '.join(flags)}".strip()


def _read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _prediction(dataset: Path, pred: Path) -> None:
    """sub-004's prediction: its 7T preprocessed as the scores see it (a perfect guess)."""
    evaluator = Evaluator(dataset, Config())
    data = evaluator.preprocessed(next(r for r in evaluator.records if r.subject == "sub-004"))
    write_nifti(pred / "sub-004_desc-synth7T_T1w.nii.gz", data["target"][0].numpy(), data["affine"].numpy())


@pytest.mark.parametrize("flags", [(), ("--upsample",)], ids=["same grid", "label maps on a finer grid"])
def test_per_structure_dice_matches_hand_computation_and_is_cached(tmp_path, script, flags, capsys):
    dataset = make_dataset(tmp_path / "data")
    pred = tmp_path / "pred"
    _prediction(dataset, pred)
    counter = tmp_path / "calls.txt"
    out = tmp_path / "eval"
    argv = ["--pred", str(pred), "--data", str(dataset), "--split", "test", "--out", str(out), "--no-progress"]
    argv += ["--segmenter", _command(script, counter, *flags)]
    assert run_main(evaluate.main, argv) == 0
    printed = capsys.readouterr().out
    # The 7T, the 3T and the LUT: three runs. The prediction is the 7T as scored, so its
    # file has the 7T's bytes and its labels come from the cache (content, not name).
    calls = counter.read_text().splitlines()
    assert len(calls) == 3

    evaluator = Evaluator(dataset, Config())
    record = next(r for r in evaluator.records if r.subject == "sub-004")
    data = evaluator.preprocessed(record)
    reference = _threshold(data["target"][0].numpy())
    source = _threshold(data["source"][0].numpy())
    rows = {r["model"]: r for r in _read(out / "scores.csv")}
    for structure, labels in (("left_white_matter", 2), ("right_white_matter", 41), ("left_cortex", 3)):
        expected = _dice(source == labels, reference == labels)
        assert float(rows["identity"][f"seg_dice_{structure}"]) == pytest.approx(expected, abs=1e-6)
        volume = 100.0 * ((source == labels).sum() - (reference == labels).sum()) / (reference == labels).sum()
        assert float(rows["identity"][f"seg_voldiff_{structure}"]) == pytest.approx(volume, abs=1e-4)
        assert float(rows["model"][f"seg_dice_{structure}"]) == pytest.approx(1.0)
    assert 0.0 < float(rows["identity"]["seg_dice_left_white_matter"]) < 1.0
    # A structure the script never labels is absent from both: Dice 1, difference 0.
    assert float(rows["identity"]["seg_dice_left_amygdala"]) == 1.0
    assert "Dice against the 7T's segmentation, per structure" in printed and "left white matter" in printed

    # A second run scores the same and never calls the script: every label map is cached.
    assert run_main(evaluate.main, argv) == 0
    assert counter.read_text().splitlines() == calls
    assert (
        _read(out / "scores.csv") == list(rows.values()) or {r["model"]: r for r in _read(out / "scores.csv")} == rows
    )


def test_manual_labels_with_a_freesurfer_table_are_scored(tmp_path, script):
    """A dataset whose dseg.tsv names FreeSurfer structures: Dice against those labels."""
    from t7synth.data import naming

    dataset = make_dataset(tmp_path / "data")
    evaluator = Evaluator(dataset, Config())
    for record in evaluator.records:
        data = evaluator.preprocessed(record)
        manual = _threshold(data["target"][0].numpy())
        write_nifti(naming.dseg_path(dataset, record.subject), manual, data["affine"].numpy())
    (dataset / naming.DSEG_TABLE).write_text(
        "index\tname\n2\tLeft-Cerebral-White-Matter\n41\tRight-Cerebral-White-Matter\n3\tLeft-Cerebral-Cortex\n"
    )
    pred = tmp_path / "pred"
    _prediction(dataset, pred)
    out = tmp_path / "eval"
    argv = ["--pred", str(pred), "--data", str(dataset), "--split", "test", "--out", str(out), "--no-progress"]
    assert run_main(evaluate.main, [*argv, "--segmenter", _command(script, tmp_path / "n.txt")]) == 0
    rows = {r["model"]: r for r in _read(out / "scores.csv")}
    record = next(r for r in evaluator.records if r.subject == "sub-004")
    data = evaluator.preprocessed(record)
    manual = _threshold(data["target"][0].numpy())
    source = _threshold(data["source"][0].numpy())
    assert float(rows["identity"]["seg_true_dice_left_white_matter"]) == pytest.approx(
        _dice(source == 2, manual == 2), abs=1e-6
    )
    assert float(rows["model"]["seg_true_dice_left_cortex"]) == pytest.approx(1.0)
    # Only the structures the table names get manual columns.
    assert "seg_true_dice_left_amygdala" not in rows["model"]


def test_failing_segmenter_is_one_line_naming_the_command(tmp_path, script, capsys):
    dataset = make_dataset(tmp_path / "data")
    pred = tmp_path / "pred"
    _prediction(dataset, pred)
    out = tmp_path / "eval"
    for flags, expected in ((("--fail",), "failed (exit 3)"), (("--silent",), "wrote no {output}")):
        command = _command(script, tmp_path / "n.txt", *flags)
        argv = ["--pred", str(pred), "--data", str(dataset), "--out", str(out), "--no-progress"]
        assert run_main(evaluate.main, [*argv, "--segmenter", command]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and command in err[0] and expected in err[0]
        assert not (out / "scores.csv").exists()
    assert "out of licences" in _failing_message(script, tmp_path)


def _failing_message(script: Path, tmp_path: Path) -> str:
    runner = segmenter_module.Segmenter(_command(script, tmp_path / "n.txt", "--fail"), tmp_path / "c")
    volume = tmp_path / "v.nii.gz"
    write_nifti(volume, np.ones((3, 3, 3), dtype=np.float32))
    with pytest.raises(UserError) as error:
        runner(volume)
    return str(error.value)


def test_structure_names_come_from_the_freesurfer_table():
    structures = segmenter_module.freesurfer_structures()
    assert set(structures) == set(STRUCTURES)
    assert structures["left_amygdala"] == {18} and structures["right_amygdala"] == {54}
    assert structures["left_hippocampus"] == {17} and structures["right_thalamus"] == {49}
    assert structures["left_cortex"] == {3} and structures["right_lateral_ventricle"] == {43}
    assert segmenter_module.structure_of("Left-Thalamus-Proper") == "left_thalamus"
    assert segmenter_module.structure_of("3rd-Ventricle") is None


def test_agreement_on_hand_made_label_maps():
    reference = np.zeros((4, 4, 4), dtype=np.int32)
    reference[:2, :2, :2] = 18  # 8 voxels of left amygdala
    labels = np.zeros_like(reference)
    labels[:2, :2, :1] = 18  # 4 of them
    labels[3, 3, 3] = 18  # and one outside
    scores = segmenter_module.agreement(labels, reference, segmenter_module.freesurfer_structures())
    assert scores["seg_dice_left_amygdala"] == pytest.approx(2 * 4 / (5 + 8))
    assert scores["seg_voldiff_left_amygdala"] == pytest.approx(100 * (5 - 8) / 8)
    assert scores["seg_dice_right_amygdala"] == 1.0 and scores["seg_voldiff_right_amygdala"] == 0.0


def test_labels_read_on_their_own_grid(tmp_path):
    """A label map on a shifted, flipped grid lands on the 7T's voxels by world position."""
    labels = np.zeros((4, 5, 6), dtype=np.int16)
    labels[1, 2, 3] = 17
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    flipped = np.diag([-2.0, 2.0, 2.0, 1.0])
    flipped[0, 3] = 6.0  # i' = 3 - i: the same world positions, the first axis reversed
    path = write_nifti(tmp_path / "l.nii.gz", labels[::-1].copy(), flipped)
    assert np.array_equal(segmenter_module.labels_on_grid(path, labels.shape, affine), labels)


def test_bad_templates_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(UserError, match=r"needs \{output\}"):
        segmenter_module.Segmenter(f"{sys.executable} x.py {{input}}")
    with pytest.raises(UserError, match="command not found: no-such-segmenter"):
        segmenter_module.Segmenter("no-such-segmenter --i {input} --o {output}")


def test_labels_are_resampled_by_nearest_neighbour(tmp_path):
    """Onto a grid shifted by 0.4 voxel: every voxel takes its nearest label, never a
    blend (linear interpolation of 2 and 41 would invent label 18, the amygdala)."""
    labels = np.zeros((6, 4, 4), dtype=np.int16)
    labels[:3], labels[3:] = 2, 41
    path = write_nifti(tmp_path / "l.nii.gz", labels, np.eye(4))
    shifted = np.eye(4)
    shifted[0, 3] = 0.4
    resampled = segmenter_module.labels_on_grid(path, labels.shape, shifted)
    assert set(np.unique(resampled)) <= {0, 2, 41}
    assert np.array_equal(resampled[:5], labels[:5])  # x + 0.4 rounds back to x
