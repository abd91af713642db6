"""``montage``'s engine: several models' synthetic 7T of one subject beside its 3T and
7T, one cortical region enlarged.

It reads every volume through :class:`~t7synth.evaluation.evaluator.Evaluator`, so what
is drawn is what ``evaluate`` scores (the same grid and intensity scale); the drawing
itself is :func:`t7synth.plotting.save_zoom`.
"""

from __future__ import annotations

from pathlib import Path

from t7synth.errors import UserError
from t7synth.evaluation.evaluator import Evaluator, find_predictions, settings_config
from t7synth.plotting import save_zoom


def zoom_montage(
    data: str | Path,
    subject: str,
    predictions: list[tuple[str, str | Path]],
    out: str | Path,
    ckpt: str | None = None,
    config_file: str | None = None,
    size: int | None = None,
) -> Path:
    """Several models' synthetic 7T of one subject beside its 3T and 7T, one cortical region enlarged.

    Every volume is brought onto the subject's preprocessed grid and intensity scale
    exactly as ``evaluate`` scores it, then drawn by :func:`t7synth.plotting.save_zoom`
    (columns: 3T, each prediction in the order given, 7T).

    Args:
        data: the dataset folder.
        subject: ``sub-XXX``.
        predictions: ``(label, folder)`` per model; each folder holds the subject's
            prediction (``sub-XXX`` in its name, as ``predict`` writes it).
        out: the PNG to write.
        ckpt, config_file: where the preprocessing settings come from (as ``evaluate``).
        size: side of the enlarged square in voxels (default: about a third of the brain).

    Raises:
        UserError: an unknown subject, a folder without its prediction, or a
            prediction on another grid.
    """
    evaluator = Evaluator(data, settings_config(config_file, ckpt))
    record = next((r for r in evaluator.records if r.subject == subject), None)
    if record is None:
        raise UserError(f"{subject} is not a subject of {evaluator.root}")
    volumes = evaluator.preprocessed(record)
    columns = [("3T input", volumes["source"])]
    for label, folder in predictions:
        found = find_predictions(folder)
        if subject not in found:
            raise UserError(f"no prediction of {subject} in {folder}")
        columns.append((label, evaluator.prediction_on_grid(record, found[subject], volumes)))
    columns.append(("7T target", volumes["target"]))
    # Clamped to [0, 1] as every score sees them (authors' normalisation extends beyond).
    columns = [(label, volume.clamp(0, 1)) for label, volume in columns]
    return save_zoom(
        out, columns, volumes["mask"], title=f"{subject}: {', '.join(label for label, _ in predictions)}", size=size
    )
