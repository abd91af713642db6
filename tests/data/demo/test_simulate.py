"""The simulated demo dataset: determinism, layout, forward model, caching and CLI.

Datasets here are 3 subjects at 3 mm (64x72x72 voxels, well under a second each) so
the whole file runs in a few seconds on a shared 2-core machine.
"""

from __future__ import annotations

import csv
import itertools
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from t7synth import demo
from t7synth.cli import run_main
from t7synth.data import naming
from t7synth.data.demo import cache
from t7synth.data.demo import simulate as sim
from t7synth.errors import UserError

VOXEL = 3.0
N = 3


def _generate(folder: Path, seed: int = 0, n: int = N) -> Path:
    return sim.simulate_dataset(folder, n_subjects=n, seed=seed, voxel_size=VOXEL, progress=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return _generate(tmp_path_factory.mktemp("demo") / "ds")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def _load(root: Path, label: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    source = np.asarray(nib.load(naming.source_path(root, label)).dataobj, dtype=np.float64)
    target = np.asarray(nib.load(naming.target_path(root, label)).dataobj, dtype=np.float64)
    mask = np.asarray(nib.load(naming.mask_path(root, label)).dataobj) > 0
    return source, target, mask


# --- determinism -----------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files(dataset, tmp_path):
    again = _files(_generate(tmp_path / "again"))
    assert again.keys() == _files(dataset).keys()
    for name, content in _files(dataset).items():
        assert again[name] == content, name


def test_other_seed_gives_other_images(dataset, tmp_path):
    other = _generate(tmp_path / "other", seed=1)
    for label in sim.subject_labels(N):
        assert naming.source_path(other, label).read_bytes() != naming.source_path(dataset, label).read_bytes()
        assert naming.target_path(other, label).read_bytes() != naming.target_path(dataset, label).read_bytes()


def test_a_subject_does_not_depend_on_how_many_are_generated(dataset, tmp_path):
    larger = _generate(tmp_path / "larger", n=4)
    for label in sim.subject_labels(N):
        assert naming.source_path(larger, label).read_bytes() == naming.source_path(dataset, label).read_bytes()


# --- layout ----------------------------------------------------------------------------


def test_every_subject_has_three_aligned_files(dataset):
    shape = sim.grid_shape(VOXEL)
    for label in sim.subject_labels(N):
        images = [nib.load(path(dataset, label)) for path in (naming.source_path, naming.target_path, naming.mask_path)]
        for image in images:
            assert image.shape == shape
            np.testing.assert_array_equal(image.affine, images[0].affine)
            assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
            np.testing.assert_allclose(image.header.get_zooms(), (VOXEL,) * 3)
        assert [image.get_data_dtype() for image in images] == [np.float32, np.float32, np.uint8]


def test_participants_table(dataset):
    rows = _read_tsv(dataset / naming.PARTICIPANTS)
    assert list(rows[0]) == ["participant_id", "age", "sex", "group", "split"]
    assert [row["participant_id"] for row in rows] == ["sub-001", "sub-002", "sub-003"]
    assert [row["split"] for row in rows] == ["train", "val", "test"]
    for row in rows:
        assert 55 <= int(row["age"]) <= 80
        assert row["sex"] in {"M", "F"} and row["group"] == "CU"


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (3, ["train", "val", "test"]),
        (5, ["train"] * 3 + ["val", "test"]),
        (6, ["train"] * 2 + ["val"] * 2 + ["test"] * 2),
        (10, ["train"] * 6 + ["val"] * 2 + ["test"] * 2),
    ],
)
def test_split_rule(n, expected):
    assert [sim.split_of(i, n) for i in range(n)] == expected


def test_simulation_table_stays_inside_documented_ranges(dataset):
    # The numbers are spelled out (not read from the module) so that a change of a
    # range in the code without docs/data.md fails here.
    bounds = {
        "rot_x_deg": (-8, 8), "rot_y_deg": (-8, 8), "rot_z_deg": (-8, 8),
        "scale_x": (0.94, 1.06), "scale_y": (0.94, 1.06), "scale_z": (0.94, 1.06),
        "shift_x_mm": (-2, 2), "shift_y_mm": (-2, 2), "shift_z_mm": (-2, 2),
        "deform_mm": (2, 4), "contrast_g": (1.2, 1.5), "grey_white_slope": (0.3, 0.45),
        "blur_sigma_vox": (0.6, 1.0),
        "blur_axis": (0, 2), "blur_axis_factor": (1.5, 2.0), "bias_amplitude": (0.2, 0.3),
        "noise_sigma": (0.02, 0.04), "target_noise": (0.01, 0.01),
    }  # fmt: skip
    rows = _read_tsv(dataset / sim.SIMULATION_TSV)
    assert [row["participant_id"] for row in rows] == sim.subject_labels(N)
    for row in rows:
        assert set(row) == {"participant_id", *bounds}
        for column, (low, high) in bounds.items():
            assert low <= float(row[column]) <= high, (row["participant_id"], column, row[column])


def test_field_of_view_holds_every_possible_brain():
    """Worst case over the whole parameter space, not just over the draws made.

    A subject point ``p`` is in the brain when ``c + R S (p - c) + shift + d`` is, so
    ``p - c`` lies in ``S^-1 R^T (B + box)`` with ``B`` the template brain around ``c``
    and ``box`` the shift + deformation bound (+ half a template voxel for the
    nearest-neighbour mask). Its extent is maximal at the smallest scaling; rotations
    are searched on a 2-degree grid.
    """
    from scipy.spatial import ConvexHull

    template = sim.load_template()
    points = np.argwhere(template.mask) @ template.affine[:3, :3].T + template.affine[:3, 3] - template.centre_mm
    hull = points[ConvexHull(points).vertices]
    slack = sim.TRANSLATION_MM + sim.DEFORM_MM[1] + 0.5
    angles = np.linspace(-sim.ROTATION_DEG, sim.ROTATION_DEG, 9)
    half_extent = np.zeros(3)
    for rotation in itertools.product(angles, angles, angles):
        inverse = sim.rotation_matrix(*rotation).T / (1 - sim.SCALING)
        extent = np.abs(hull @ inverse.T).max(axis=0) + slack * np.abs(inverse).sum(axis=1)
        half_extent = np.maximum(half_extent, extent)
    assert np.all(half_extent <= sim.BRAIN_HALF_EXTENT_MM), half_extent


@pytest.mark.parametrize("voxel", [1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0])
def test_grids_reach_the_brain_extent_in_multiples_of_eight(voxel):
    shape = np.array(sim.grid_shape(voxel))
    assert np.all(shape % 8 == 0)
    assert np.all((shape - 1) * voxel / 2 >= sim.BRAIN_HALF_EXTENT_MM)
    assert np.all((shape - 9) * voxel / 2 < sim.BRAIN_HALF_EXTENT_MM)  # and no larger than needed


def test_volume_shapes():
    assert sim.grid_shape(1.5) == (120, 144, 128)
    assert sim.grid_shape(1.0) == (184, 216, 192)
    assert sim.grid_shape(3.0) == (64, 72, 72)


# --- forward model ---------------------------------------------------------------------


def _brain_tissues(target: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inner brain, white matter (brightest 15 %) and grey matter (30th-45th percentile),
    classified on the target so that both images are compared on the same voxels."""
    inner = ndimage.binary_erosion(mask, iterations=2)
    low, mid, high = np.percentile(target[inner], [30, 45, 85])
    white = inner & (target >= high)
    grey = inner & (target >= low) & (target <= mid)
    return inner, white, grey


def test_source_is_blurrier_than_target(dataset):
    for label in sim.subject_labels(N):
        source, target, mask = _load(dataset, label)
        inner, _, _ = _brain_tissues(target, mask)

        def sharpness(image, mask=mask, inner=inner):
            # A light smoothing first: the source's stronger noise would otherwise
            # inflate its gradients and hide the blur.
            smooth = ndimage.gaussian_filter(image / np.percentile(image[mask], 99), 1.0)
            return np.sqrt(sum(g**2 for g in np.gradient(smooth)))[inner].mean()

        assert sharpness(source) < 0.9 * sharpness(target), label


def test_source_carries_its_documented_noise(dataset):
    # The 7T template's own white-matter texture is as strong as 1-2 % noise, so the
    # source is checked against the sigma recorded for it rather than against the target.
    table = {row["participant_id"]: row for row in _read_tsv(dataset / sim.SIMULATION_TSV)}
    for label in sim.subject_labels(N):
        source, target, mask = _load(dataset, label)
        _, white, _ = _brain_tissues(target, mask)
        flat = ndimage.binary_erosion(white)
        assert flat.sum() > 500
        highpass = (source - ndimage.uniform_filter(source, 3))[flat].std() / np.sqrt(26 / 27)
        sigma = float(table[label]["noise_sigma"]) * np.percentile(source[mask], 99)
        assert highpass > 0.9 * sigma, label


def test_rician_noise_has_the_requested_sigma():
    rng = np.random.default_rng(0)
    flat = np.full((40, 40, 40), 0.8, dtype=np.float32)
    brain = np.ones_like(flat, dtype=bool)
    noisy = sim.add_rician_noise(flat, brain, 0.03, rng)
    assert noisy[brain].std() == pytest.approx(0.03, rel=0.05)
    # Rician noise lifts a zero signal to a positive mean (sigma * sqrt(pi / 2)).
    dark = sim.add_rician_noise(np.zeros_like(flat), brain, 0.03, rng)
    assert dark.mean() == pytest.approx(0.03 * np.sqrt(np.pi / 2), rel=0.05)


def test_source_has_less_grey_white_contrast(dataset):
    for label in sim.subject_labels(N):
        source, target, mask = _load(dataset, label)
        _, white, grey = _brain_tissues(target, mask)
        ratio_source = source[white].mean() / source[grey].mean()
        ratio_target = target[white].mean() / target[grey].mean()
        assert ratio_source < ratio_target - 0.03, label


def test_images_are_zero_outside_the_mask_and_positive_inside(dataset):
    for label in sim.subject_labels(N):
        source, target, mask = _load(dataset, label)
        assert mask.mean() > 0.1  # a brain is there
        assert not source[~mask].any() and not target[~mask].any()
        assert source[mask].min() >= 0 and target[mask].min() >= 0
        assert np.median(source[mask]) > 0 and np.median(target[mask]) > 0


def test_contrast_remap_is_monotone_and_compresses_ratios():
    x = np.linspace(0.0, 1.0, 101, dtype=np.float32)
    y = sim.compress_contrast(x, np.ones_like(x, dtype=bool), 1.35)
    assert np.all(np.diff(y) > 0)
    assert y[85] / y[60] < x[85] / x[60]
    knee = sim.compress_contrast(x, np.ones_like(x, dtype=bool), 1.35, 0.6)
    assert np.all(np.diff(knee) > 0)
    # The knee squeezes grey-to-white (0.6 to 0.85) further, even after min-max scaling.
    stretch = lambda v: (v - v[20]) / (v[95] - v[20])  # noqa: E731
    assert stretch(knee)[85] - stretch(knee)[60] < stretch(y)[85] - stretch(y)[60]


def test_bias_field_stays_within_its_amplitude():
    brain = np.zeros((16, 20, 12), dtype=bool)
    brain[3:13, 4:16, 2:10] = True
    coefficients = sim.draw_bias_coefficients(np.random.default_rng(0))
    field = sim.bias_field(brain.shape, brain, coefficients, 0.25)
    assert field[brain].min() >= 0.75 - 1e-6 and field[brain].max() <= 1.25 + 1e-6
    assert max(field[brain].max() - 1, 1 - field[brain].min()) == pytest.approx(0.25, abs=1e-6)


# --- tissue truth ----------------------------------------------------------------------


def _tissues(root: Path, label: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    dseg = np.asarray(nib.load(naming.dseg_path(root, label)).dataobj)
    probabilities = {t: nib.load(naming.probseg_path(root, label, t)).get_fdata() for t in naming.TISSUE_LABELS}
    return dseg, probabilities


def test_tissue_files_share_the_grid_and_sum_to_one_in_the_brain(dataset):
    assert _read_tsv(dataset / naming.DSEG_TABLE) == [
        {"index": "1", "name": "Cerebrospinal fluid", "abbreviation": "CSF"},
        {"index": "2", "name": "Gray matter", "abbreviation": "GM"},
        {"index": "3", "name": "White matter", "abbreviation": "WM"},
    ]
    reference = nib.load(naming.target_path(dataset, "sub-001"))
    for label in sim.subject_labels(N):
        _, _, mask = _load(dataset, label)
        dseg, probabilities = _tissues(dataset, label)
        for path in [
            naming.dseg_path(dataset, label),
            *(naming.probseg_path(dataset, label, t) for t in probabilities),
        ]:
            image = nib.load(path)
            assert image.shape == reference.shape and np.array_equal(image.affine, reference.affine)
            assert image.get_data_dtype() == np.uint8
        assert set(np.unique(dseg[mask])) == {1, 2, 3} and not dseg[~mask].any()
        total = sum(probabilities.values())
        assert np.all(np.abs(total[mask] - 1) <= 2 / 255) and not total[~mask].any()
        # Each label is its voxel's most probable tissue (up to the 1/255 storage steps).
        stacked = np.stack([probabilities[t] for t in naming.TISSUE_LABELS])
        chosen = np.take_along_axis(stacked, dseg[None].astype(np.int64) - 1, axis=0)[0]
        assert np.all(chosen[mask] >= stacked.max(axis=0)[mask] - 1 / 255)


def _uncut_tissues(index: int, label: str, template, grid) -> dict[str, np.ndarray]:
    """A subject's tissue maps before the cut to its mask, from its own draws."""
    rng = np.random.default_rng(np.random.SeedSequence(0).spawn(N)[index])
    sim.draw_participant(label, "train", rng)
    params = sim.draw_parameters(label, rng)
    controls = sim.draw_deformation_controls(params.deform_mm, template.centre_mm, rng)
    coords = sim.template_coordinates(template, grid, params, controls)
    return sim.warp_tissues(template, coords, np.ones(grid.shape, dtype=np.uint8))


def test_tissue_maps_follow_the_subjects_deformation(dataset):
    """Warped by the subject's own transform, the template's GM and WM land in the
    subject's brain mask (before any cut to it) and the WM map matches the subject's 7T;
    another subject's maps do neither as well."""
    template = sim.load_template()
    grid = sim.demo_grid(VOXEL, template.centre_mm)
    labels = sim.subject_labels(N)
    loaded = {label: _load(dataset, label) for label in labels}
    for index, label in enumerate(labels):
        uncut = _uncut_tissues(index, label, template, grid)
        tissue = uncut["GM"] + uncut["WM"]
        _, target, mask = loaded[label]
        assert tissue[mask].sum() / tissue.sum() > 0.98, label
        # The files hold exactly these maps, cut to the mask.
        _, stored = _tissues(dataset, label)
        assert np.abs(stored["GM"] - uncut["GM"] * mask).max() <= 0.5 / 255 + 1e-6
        own = np.corrcoef(stored["WM"][mask], target[mask])[0, 1]
        for other in labels:
            if other != label:
                _, other_target, other_mask = loaded[other]
                both = mask | other_mask
                assert own > np.corrcoef(stored["WM"][both], other_target[both])[0, 1] + 0.2, (label, other)
        assert own > 0.75, label
        dseg, _ = _tissues(dataset, label)
        means = [target[dseg == value].mean() for value in (1, 2, 3)]
        assert means[0] < means[1] - 0.1 and means[1] < means[2] - 0.1, label  # T1w: CSF < GM < WM


# --- ensure_demo_dataset ---------------------------------------------------------------


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_ensure_demo_dataset_generates_once_then_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("T7SYNTH_CACHE", str(tmp_path / "cache"))
    folder = cache.ensure_demo_dataset(n_subjects=N, voxel_size=VOXEL, progress=False)
    assert folder == tmp_path / "cache" / "demo" / f"demo-n3-s0-v3-{sim.FORMAT_VERSION}"
    before = _mtimes(folder)

    def must_not_run(*args, **kwargs):
        raise AssertionError("regenerated a complete dataset")

    monkeypatch.setattr(cache, "simulate_dataset", must_not_run)
    start = time.perf_counter()
    again = cache.ensure_demo_dataset(n_subjects=N, voxel_size=VOXEL, progress=False)
    assert time.perf_counter() - start < 0.5
    assert again == folder
    assert _mtimes(folder) == before


def test_interrupted_generation_leaves_no_folder(tmp_path, monkeypatch):
    real = sim.simulate_subject
    calls = []

    def fail_after_first(*args, **kwargs):
        if calls:
            raise RuntimeError("interrupted")
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sim, "simulate_subject", fail_after_first)
    out = tmp_path / "demo"
    with pytest.raises(RuntimeError, match="interrupted"):
        cache.ensure_demo_dataset(n_subjects=N, voxel_size=VOXEL, out=out, progress=False)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == [".demo.lock"]  # no temporary folder left


def test_concurrent_first_calls_generate_once(tmp_path, monkeypatch):
    real = cache.simulate_dataset
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cache, "simulate_dataset", counting)
    out = tmp_path / "demo"
    results: list[Path] = []

    def first_call():
        results.append(cache.ensure_demo_dataset(n_subjects=N, voxel_size=VOXEL, out=out, progress=False))

    threads = [threading.Thread(target=first_call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [out, out] and len(calls) == 1


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a t7synth demo dataset"):
        cache.ensure_demo_dataset(n_subjects=N, voxel_size=VOXEL, out=foreign, progress=False)
    assert (foreign / "precious.txt").read_text() == "keep me"


# --- command line ----------------------------------------------------------------------


def test_cli_generates_and_prints_the_folder(tmp_path, capsys):
    out = tmp_path / "d"
    assert demo.main(["--out", str(out), "--subjects", "3", "--voxel-size", "3", "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(out)
    assert lines[1].startswith("3 subjects (train 1, val 1, test 1), shape 64x72x72, spacing 3 mm")
    assert lines[2].endswith(f"python -m t7synth.fit --config experiments/demo_unet.yaml --data {out}")  # fit uses it
    assert cache.demo_is_complete(out, {"n_subjects": 3, "seed": 0, "voxel_size": 3.0})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--subjects", "0"], "at least 3"),
        (["--subjects", "many"], "invalid int value"),
        (["--voxel-size", "0.2"], "voxel size"),
        (["--seed", "-1"], "seed"),
    ],
)
def test_cli_bad_arguments_give_one_line(argv, message, tmp_path, capsys):
    assert run_main(demo.main, ["--out", str(tmp_path / "d"), *argv]) != 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "d").exists()


def test_cli_out_that_is_a_file(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("")
    assert run_main(demo.main, ["--out", str(a_file), "--subjects", "3"]) != 0
    err = capsys.readouterr().err
    assert "not a folder" in err and len(err.strip().splitlines()) == 1
