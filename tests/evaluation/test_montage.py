"""``montage``'s engine (t7synth.evaluation.montage): several models' predictions of one
subject, drawn on the grid and scale evaluate scores them on."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_dataset, write_nifti

from t7synth.data import naming
from t7synth.data.layout import discover
from t7synth.data.preprocess import Preprocessing, preprocess_record
from t7synth.errors import UserError
from t7synth.evaluation.montage import zoom_montage


def _perfect_predictions(root, folder, subject):
    """The subject's preprocessed 7T as its prediction (make_dataset's grids need no crop)."""
    folder.mkdir(parents=True, exist_ok=True)
    record = next(r for r in discover(root) if r.subject == subject)
    data = preprocess_record(record, Preprocessing())
    write_nifti(
        folder / naming.synthetic_name(subject), data["target"][0].numpy(), np.diag([1.5, 1.5, 1.5, 1.0])
    )  # make_dataset's grid


def test_zoom_montage_of_several_models(tmp_path):
    root = make_dataset(tmp_path / "data", n_subjects=3)
    first, second = tmp_path / "a", tmp_path / "b"
    _perfect_predictions(root, first, "sub-003")
    _perfect_predictions(root, second, "sub-003")
    path = zoom_montage(root, "sub-003", [("A", first), ("B", second)], tmp_path / "zoom.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UserError, match="no prediction of sub-002 in"):
        zoom_montage(root, "sub-002", [("A", first)], tmp_path / "other.png")
    with pytest.raises(UserError, match="sub-099 is not a subject of"):
        zoom_montage(root, "sub-099", [("A", first)], tmp_path / "other.png")
    assert not (tmp_path / "other.png").exists()
