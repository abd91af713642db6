"""The test scores of several runs side by side: what ``python -m t7synth.compare`` runs.

Examples::

    python -m t7synth.compare runs/demo_unet/version_0 runs/demo_vnet/version_0
    python -m t7synth.compare runs/*/version_0 --out comparison/ --wandb offline

Reads each run's ``test_scores.csv`` (written by ``fit``) and ``config.yaml``, and
writes into ``--out`` (default ``comparison/``):

* ``comparison.md``: one Markdown table, a row per run (mean ± SD over its test
  subjects) plus the identity and intensity-LUT references once, the best value of
  each column in bold (also printed);
* ``comparison.csv``: the same numbers, with a ``best`` column naming the columns in
  which the row is best;
* ``comparison.png``: in-brain PSNR and SSIM per run with SD error bars, the
  references as horizontal lines.

With ``--wandb online|offline`` the table (``wandb.Table``) and the chart go to a W&B
run of job type ``compare``. Runs scored on different test subjects are compared
anyway, with a warning: their references then differ, and the first run's are shown.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from t7synth.errors import UserError
from t7synth.evaluation.scores import COLUMNS, DISPLAY_ORDER, LABELS, MODEL, REFERENCES, format_cell, mean_sd

#: The columns a comparison shows, in order (every run's ``test_scores.csv`` has them).
COMPARED = DISPLAY_ORDER


@dataclass
class Entry:
    """One row of the comparison: a run's model, or a reference."""

    label: str
    model: str
    kind: str  # "run" or "reference"
    n: int
    scores: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass
class Run:
    """A run folder's test scores: ``rows`` as in ``test_scores.csv``."""

    path: Path
    label: str
    model: str
    rows: list[dict[str, str]]
    wandb_project: str = "t7synth"
    wandb_entity: str | None = None


def read_run(path: str | Path) -> Run:
    """Read ``test_scores.csv`` and ``config.yaml`` of a run folder.

    Raises:
        UserError: no such folder, no (or an empty, or a malformed) ``test_scores.csv``.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(f"run folder not found: {path}")
    scores = path / "test_scores.csv"
    if not scores.is_file():
        raise UserError(f"{path} has no test_scores.csv (the run did not reach its test; pick another run or finish it)")
    with open(scores, newline="") as handle:
        reader = csv.DictReader(handle)
        needed = {"model", "subject", *COMPARED}
        if not reader.fieldnames or not needed <= set(reader.fieldnames):
            raise UserError(f"{scores} lacks columns {sorted(needed - set(reader.fieldnames or []))}")
        rows = list(reader)
    if not any(r["model"] == MODEL for r in rows):
        raise UserError(f"{scores} has no rows of the model")
    for row in rows:
        for name in COMPARED:
            try:
                float(row[name])
            except ValueError:
                raise UserError(f"{scores}: {name} of {row['subject']} is not a number: {row[name]!r}") from None
    config = {}
    if (path / "config.yaml").is_file():
        from t7synth.config import load_yaml

        config = load_yaml(path / "config.yaml")
    # The folder names stand in for a missing config; resolve so "." and "run" have a parent.
    experiment = config.get("name") or path.resolve().parent.name
    model = (config.get("model") or {}).get("name", "?")
    wandb = config.get("wandb") or {}
    return Run(path, f"{experiment}/{path.name}", model, rows, wandb.get("project") or "t7synth", wandb.get("entity"))


def _entry(label: str, model: str, kind: str, rows: list[dict[str, str]]) -> Entry:
    return Entry(label, model, kind, len(rows), {name: mean_sd([float(r[name]) for r in rows]) for name in COMPARED})


def build_entries(runs: Sequence[Run], warn=None) -> list[Entry]:
    """A row per run (its model's scores), then the references once (the first run's).

    ``warn`` gets a message when the runs were tested on different subjects.
    """
    entries = []
    labels: dict[str, int] = {}
    for run in runs:
        labels[run.label] = labels.get(run.label, 0) + 1
        label = run.label if labels[run.label] == 1 else f"{run.label} ({labels[run.label]})"
        entries.append(_entry(label, run.model, "run", [r for r in run.rows if r["model"] == MODEL]))
    subject_sets = {run.label: sorted({r["subject"] for r in run.rows if r["model"] == MODEL}) for run in runs}
    if len({tuple(s) for s in subject_sets.values()}) > 1 and warn is not None:
        warn(f"the runs were tested on different subjects; the references shown are those of {runs[0].label}")
    for reference in REFERENCES:
        rows = [r for r in runs[0].rows if r["model"] == reference]
        if rows:
            entries.append(_entry(LABELS[reference], "", "reference", rows))
    return entries


def best_rows(entries: Sequence[Entry]) -> dict[str, set[int]]:
    """``{column: indices of the best entries}`` (highest, or lowest for MAE); ties
    (equal means, e.g. two runs of the same checkpoint) are all best."""
    best = {}
    for name in COMPARED:
        higher = COLUMNS[name].higher_is_better
        values = [e.scores[name][0] for e in entries]
        target = max(values) if higher else min(values)
        best[name] = {index for index, value in enumerate(values) if value == target}
    return best


def markdown_table(entries: Sequence[Entry]) -> str:
    """The comparison as a Markdown table, best per column in bold."""
    best = best_rows(entries)
    header = ["run", "model", "n", *(COLUMNS[name].heading for name in COMPARED)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * len(COMPARED)) + "|"]
    for index, entry in enumerate(entries):
        cells = []
        for name in COMPARED:
            text = format_cell(name, *entry.scores[name])
            cells.append(f"**{text}**" if index in best[name] else text)
        lines.append("| " + " | ".join([entry.label, entry.model or "—", str(entry.n), *cells]) + " |")
    return "\n".join(lines)


def table_columns() -> list[str]:
    return ["run", "model", "kind", "n", *(f"{n}_{s}" for n in COMPARED for s in ("mean", "sd")), "best"]


def table_rows(entries: Sequence[Entry]) -> list[list]:
    """The CSV/W&B rows: numbers, and ``best`` listing the columns the row wins."""
    best = best_rows(entries)
    rows = []
    for index, entry in enumerate(entries):
        numbers = [round(v, 6) for name in COMPARED for v in entry.scores[name]]
        wins = ";".join(name for name in COMPARED if index in best[name])
        rows.append([entry.label, entry.model, entry.kind, entry.n, *numbers, wins])
    return rows


def write_csv(entries: Sequence[Entry], path: Path) -> Path:
    from t7synth.files import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(table_columns())
        writer.writerows(table_rows(entries))
    return path


def bar_chart(entries: Sequence[Entry], path: Path) -> Path:
    """In-brain PSNR and SSIM per run (SD error bars), references as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from t7synth.files import atomic_path

    runs = [e for e in entries if e.kind == "run"]
    references = [e for e in entries if e.kind == "reference"]
    styles = ["--", ":"]
    figure, axes = plt.subplots(1, 2, figsize=(max(6.0, 1.6 * len(runs) + 3.5), 4.2))
    for axis, name in zip(axes, ("psnr_brain", "ssim_brain")):
        means = [e.scores[name][0] for e in runs]
        sds = [e.scores[name][1] for e in runs]
        positions = range(len(runs))
        axis.bar(positions, means, yerr=sds, capsize=4, color="tab:blue", alpha=0.8)
        for reference, style in zip(references, styles):
            axis.axhline(reference.scores[name][0], color="gray", linestyle=style, label=reference.label)
        axis.set_xticks(list(positions), [e.label for e in runs], rotation=20, ha="right", fontsize=8)
        axis.set_title(COLUMNS[name].heading)
        # Bars from 0 would hide differences of a fraction of a dB: zoom on the data.
        values = [m - s for m, s in zip(means, sds)] + [r.scores[name][0] for r in references]
        tops = [m + s for m, s in zip(means, sds)] + [r.scores[name][0] for r in references]
        low, high = min(values), max(tops)
        margin = 0.15 * (high - low) or 0.05 * abs(high) or 1.0
        axis.set_ylim(low - margin, high + margin)
        if references:
            axis.legend(fontsize=8, loc="best", framealpha=0.8)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100)
    plt.close(figure)
    return path


def log_to_wandb(entries: Sequence[Entry], chart: Path, mode: str, project: str, entity: str | None, out_dir: Path) -> None:
    """Log the table and the chart to a new W&B run (job type ``compare``)."""
    import wandb

    run = wandb.init(
        project=project,
        entity=entity,
        job_type="compare",
        name="compare: " + ", ".join(e.label for e in entries if e.kind == "run")[:100],
        mode=mode,
        dir=str(out_dir),
        config={"runs": [e.label for e in entries if e.kind == "run"]},
    )
    try:
        run.log({"comparison/table": wandb.Table(columns=table_columns(), data=table_rows(entries)), "comparison/chart": wandb.Image(str(chart))})
    finally:
        run.finish()


def compare(run_dirs: Sequence[str | Path], out: str | Path = "comparison", wandb_mode: str = "disabled", warn=None) -> str:
    """Compare runs: write ``comparison.md``, ``.csv`` and ``.png`` into ``out``.

    Every run is read and checked before anything is written.

    Returns:
        The Markdown table and where the files are, to print.
    """
    runs = [read_run(path) for path in run_dirs]
    entries = build_entries(runs, warn=warn)
    out = Path(out).expanduser()
    table = markdown_table(entries)
    from t7synth.files import atomic_path

    with atomic_path(out / "comparison.md") as tmp:
        tmp.write_text(table + "\n")
    write_csv(entries, out / "comparison.csv")
    chart = bar_chart(entries, out / "comparison.png")
    if wandb_mode != "disabled":
        log_to_wandb(entries, chart, wandb_mode, runs[0].wandb_project, runs[0].wandb_entity, out)
    return table + f"\n\nTable: {out / 'comparison.md'}, {out / 'comparison.csv'}\nChart: {chart}"
