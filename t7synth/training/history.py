"""``metrics.csv``: a run's history, one row per logging call, kept across kills and resumes.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts, so after
``--resume`` the file would hold only the epochs trained since. :class:`RunCSVLogger`
instead keeps what the resumed checkpoint vouches for and drops what the resumed run
will log again, so the file of a killed-and-resumed run reads exactly as an
uninterrupted run's, epoch by epoch, with no row twice (``docs/promises.md``).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.utilities import rank_zero_only

from t7synth.run_files import METRICS_FILE
from t7synth.textfiles import TABLE_LIMIT, read_text


@dataclass(frozen=True)
class ResumePoint:
    """Where a checkpoint left a run: its last finished epoch and the batches trained.

    Attributes:
        epoch: the checkpoint's ``epoch``; the resumed run starts at ``epoch + 1``.
        steps: Lightning's ``_batches_that_stepped``, the logging step at which the
            resumed run continues.
    """

    epoch: int
    steps: int

    @classmethod
    def of(cls, checkpoint: dict) -> ResumePoint:
        """Read from a loaded checkpoint (see :func:`t7synth.training.checkpoint.read_checkpoint`)."""
        loop = ((checkpoint.get("loops") or {}).get("fit_loop") or {}).get("epoch_loop.state_dict") or {}
        steps = loop.get("_batches_that_stepped", checkpoint.get("global_step", 0))
        return cls(int(checkpoint.get("epoch", -1)), int(steps))

    def keeps(self, row: dict[str, str]) -> bool:
        """Whether a ``metrics.csv`` row of the interrupted run stays in the history.

        Rows of finished epochs stay. Rows of the epoch the resumed run repeats (logged
        after the checkpoint was written) go, and so do test scores (the resumed run
        tests again). Rows without an epoch (the learning-rate monitor's, logged at an
        epoch's start with only a step) are placed by their step: the repeated epoch
        starts at ``steps``.
        """
        if any(key.startswith("test/") and value not in ("", None) for key, value in row.items()):
            return False
        try:
            epoch = row.get("epoch")
            if epoch not in ("", None):
                return int(float(epoch)) <= self.epoch
            return int(float(row.get("step") or "")) < self.steps
        except ValueError:
            return False


class RunCSVLogger(Logger):
    """Lightning logger writing ``run_dir/metrics.csv`` (see the module docstring).

    On its first write, a new run starts the file afresh (a folder that holds rows
    but no checkpoint was killed before its first epoch ended); a resumed run keeps
    the rows :meth:`ResumePoint.keeps` and drops the rest. Rows are then appended at
    every logging call (Lightning flushes after each), so a killed run keeps its
    curve; when a new column appears the file is rewritten atomically. A last line
    cut short by a kill is dropped when the file is read back. Columns are sorted,
    as Lightning's logger writes them. Only rank 0 writes.

    Args:
        run_dir: the run folder; also the logger's ``log_dir`` and ``save_dir``
            (models put their montages under it).
        resume: where the resumed checkpoint left off, or ``None`` for a new run.
    """

    def __init__(self, run_dir: str | Path, resume: ResumePoint | None = None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.path = self.run_dir / METRICS_FILE
        self._columns: list[str] = []
        self._pending: list[dict] = []
        self._started = False

    @property
    def name(self) -> str:
        return self.run_dir.parent.name

    @property
    def version(self) -> str:
        return self.run_dir.name

    @property
    def save_dir(self) -> str:
        return str(self.run_dir)

    @property
    def log_dir(self) -> str:
        return str(self.run_dir)

    @property
    def root_dir(self) -> str:
        return str(self.run_dir.parent)

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        """Nothing: the resolved config is the run folder's ``config.yaml``."""

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        row = {key: (value.item() if hasattr(value, "item") else value) for key, value in metrics.items()}
        row["step"] = step if step is not None else len(self._pending)
        self._pending.append(row)

    @rank_zero_only
    def save(self) -> None:
        rows, self._pending = self._pending, []
        if not self._started:
            self._started = True
            kept = [row for row in self.read_rows() if self.resume.keeps(row)] if self.resume is not None else []
            self._columns = sorted({key for row in kept + rows for key in row})
            self._rewrite(kept + rows)
            return
        if not rows:
            return
        new = {key for row in rows for key in row} - set(self._columns)
        if new:
            self._columns = sorted([*self._columns, *new])
            self._rewrite(self.read_rows() + rows)
            return
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, fieldnames=self._columns).writerows(rows)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()

    def read_rows(self) -> list[dict[str, str]]:
        """The file's complete rows, empty cells left out (a last line without its
        newline was cut short by a kill and is dropped)."""
        if not self.path.is_file():
            return []
        text = read_text(self.path, max_bytes=TABLE_LIMIT)
        if not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
        reader = csv.DictReader(io.StringIO(text))
        return [{k: v for k, v in row.items() if v not in ("", None)} for row in reader if None not in row]

    def _rewrite(self, rows: list[dict]) -> None:
        from t7synth.files import atomic_path

        with atomic_path(self.path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=self._columns)
            writer.writeheader()
            writer.writerows(rows)
