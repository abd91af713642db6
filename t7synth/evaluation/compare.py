"""The test scores of several runs side by side: what ``python -m t7synth.compare`` runs.

Examples::

    python -m t7synth.compare runs/demo_unet/version_0 runs/demo_vnet/version_0
    python -m t7synth.compare runs/demo_unet/version_0 synth/evaluation runs/demo_unet_lr
    python -m t7synth.compare runs/*/version_0 --out comparison/ --wandb offline

Any *scored folder* can be compared, all read in the one per-subject format of
:func:`t7synth.scores.write_rows` (``model, subject, <scores>``, a row per
subject for the model and each reference):

* a ``fit`` run folder: ``test_scores.csv``, ``config.yaml``, ``metrics.csv``;
* an ``evaluate`` output folder: ``scores.csv`` and the ``config.yaml`` it used;
* a sweep study folder (``runs/<study>``, with ``trials.csv``): its ``--trials`` best
  complete trials (``rank`` 1, 2, … in ``trials.csv``), each a ``fit`` run folder.

It writes into ``--out`` (default ``comparison/``):

* ``comparison.md``: one Markdown table, a row per run (mean ± SD over its test
  subjects) plus the identity and intensity-LUT references once, the best value of
  each column in bold; each run's in-brain PSNR against the first run's, paired by
  subject (mean difference, 95 % bootstrap interval, Wilcoxon p, n:
  :mod:`~t7synth.statistics`); then the config keys whose values differ
  between the runs (all printed too);
* ``comparison.csv``: the same numbers, with a ``best`` column naming the columns in
  which the row is best, and each run's folder and W&B run id;
* ``comparison.png``: in-brain PSNR and SSIM per run with SD error bars, the
  references as horizontal lines;
* ``curves.png``: the validation curves of the runs that have them (``fit`` runs and
  trials; an ``evaluate`` output has none), from their ``metrics.csv``.

With ``--wandb online|offline`` the table (``wandb.Table``, with a link to each run's
own W&B run), the config differences and both pictures go to a W&B run of job type
``compare``. Runs scored on different test subjects are compared anyway, with a
warning: their references then differ, and the first run's are shown.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import wandb

from t7synth.charts import save_curves
from t7synth.config import flatten
from t7synth.errors import UserError
from t7synth.files import atomic_path, atomic_paths, check_writable, remove_stale_temporaries
from t7synth.plotting import pyplot, save_figure
from t7synth.run_files import (
    CONFIG_FILE,
    EVALUATE_SCORES_FILE,
    METRICS_FILE,
    STUDY_TABLE_FILE,
    TEST_SCORES_FILE,
    WANDB_ID_FILE,
    checkpoint_dir,
    read_config,
    read_metrics,
    read_trial_record,
)
from t7synth.scores import (
    COLUMNS,
    DISPLAY_ORDER,
    HEADLINE,
    LABELS,
    MODEL,
    REFERENCES,
    SECTION_COLUMNS,
    format_cell,
    mean_sd,
    read_rows,
)
from t7synth.statistics import CONFIDENCE, paired_by_subject, paired_difference
from t7synth.textfiles import parse_int, read_table, read_text
from t7synth.training.loggers import check_wandb_mode, run_link

#: The columns a comparison shows, in order (every per-subject score file has them).
COMPARED = DISPLAY_ORDER
#: Shown too when every row of every compared folder has them (test-time structure
#: scores: score files written before they existed lack them).
OPTIONAL = SECTION_COLUMNS
#: Config keys left out of the differences: where a run's files went and how it was
#: labelled, not what ran (``data.root`` stays: another dataset is another experiment).
IGNORED_KEYS = ("name", "runs_dir", "wandb.")
#: How a config difference shows a key that a run's config lacks (an older t7synth wrote it).
NOT_SET = "(not set)"


@dataclass
class Entry:
    """One row of the comparison: a run's model, or a reference."""

    label: str
    model: str
    kind: str  # "run" or "reference"
    n: int
    scores: dict[str, tuple[float, float]] = field(default_factory=dict)
    path: str = ""
    wandb_run: str = ""


@dataclass
class Run:
    """A scored folder: its per-subject ``rows`` and what describes the run.

    Attributes:
        source: ``fit``, ``trial`` (a sweep's ``fit`` run) or ``evaluate``.
        config: the folder's ``config.yaml`` (empty when it has none).
        metrics: its ``metrics.csv`` of training curves, if any.
        wandb_run: the W&B run id of a ``fit`` run (``wandb_id.txt``), else empty.
    """

    path: Path
    label: str
    model: str
    rows: list[dict[str, str]]
    source: str = "fit"
    config: dict[str, Any] = field(default_factory=dict)
    metrics: Path | None = None
    wandb_run: str = ""
    wandb_project: str = "t7synth"
    wandb_entity: str | None = None


def read_runs(path: str | Path, trials: int = 3) -> list[Run]:
    """The runs of one scored folder: one, or a sweep study's ``trials`` best.

    Raises:
        UserError: no such folder, or no score file it could be compared by.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(f"run folder not found: {path}")
    if (path / TEST_SCORES_FILE).is_file() or (path / EVALUATE_SCORES_FILE).is_file():
        return [read_run(path)]
    if (path / STUDY_TABLE_FILE).is_file():
        return read_study(path, trials)
    if (path / CONFIG_FILE).is_file() or checkpoint_dir(path).is_dir():
        raise UserError(
            f"{path} has no {TEST_SCORES_FILE} (the run did not reach its test, or its dataset has no test split; "
            "pick another run, finish it, or score its predictions with evaluate)"
        )
    raise UserError(
        f"{path} holds no scores: expected {TEST_SCORES_FILE} (a fit run), {EVALUATE_SCORES_FILE} (an evaluate output) "
        f"or {STUDY_TABLE_FILE} (a sweep study)"
    )


def read_run(path: str | Path) -> Run:
    """Read a ``fit`` run folder or an ``evaluate`` output folder (see the module docstring).

    Raises:
        UserError: no such folder, no (or an empty, or a malformed) score file.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(f"run folder not found: {path}")
    scores = path / TEST_SCORES_FILE if (path / TEST_SCORES_FILE).is_file() else path / EVALUATE_SCORES_FILE
    if not scores.is_file():
        raise UserError(
            f"{path} has no {TEST_SCORES_FILE} (the run did not reach its test; pick another run or finish it)"
        )
    rows = read_rows(scores)
    config: dict[str, Any] = read_config(path) or {}
    # Older config formats wrote plain values where sections are now: take what reads.
    wandb_config = config.get("wandb") if isinstance(config.get("wandb"), dict) else {}
    section = config.get("model")
    model = str(section.get("name") or "?") if isinstance(section, dict) else str(section or "?")
    if scores.name == EVALUATE_SCORES_FILE:
        # evaluate without --ckpt/--config records the built-in defaults (name: null),
        # which say nothing about the model that made the predictions.
        source, model = "evaluate", model if config.get("name") else "?"
        label = f"{path.resolve().parent.name}/{path.name}"
    else:
        trial = read_trial_record(path)
        # The folder names stand in for a missing config; resolve so "." and "run" have a parent.
        experiment = config.get("name") or path.resolve().parent.name
        source = "trial" if trial else "fit"
        label = (
            f"{trial.get('study') or wandb_config.get('group')}/{experiment}" if trial else f"{experiment}/{path.name}"
        )
    id_file = path / WANDB_ID_FILE
    return Run(
        path,
        label,
        model,
        rows,
        source,
        config,
        metrics=path / METRICS_FILE if source != "evaluate" and (path / METRICS_FILE).is_file() else None,
        wandb_run=read_text(id_file).strip() if id_file.is_file() else "",
        wandb_project=wandb_config.get("project") or "t7synth",
        wandb_entity=wandb_config.get("entity"),
    )


def read_study(path: Path, trials: int) -> list[Run]:
    """The ``trials`` best complete trials of a sweep study folder (``rank`` in ``trials.csv``).

    A trial's ``run_dir`` is read from the table, or, when the study folder was moved
    since (or the sweep ran with a relative ``runs_dir`` from another folder), found
    inside the study folder by its last two parts (``trial-NNNN/version_0``).
    """
    table = path / STUDY_TABLE_FILE
    study = read_table(table)
    if not {"rank", "run_dir"} <= set(study.fieldnames):
        raise UserError(
            f"{table} has no rank and run_dir columns (an older sweep wrote it): run the sweep command again "
            "to rewrite it"
        )
    ranks = {
        id(row): parse_int(row["rank"], f"{table}, line {line}: rank", minimum=1)
        for line, row in zip(study.lines, study.rows)
        if row["rank"].strip()
    }
    ranked = sorted((row for row in study.rows if id(row) in ranks), key=lambda row: ranks[id(row)])
    if not ranked:
        raise UserError(f"{path}: no trial of the study is complete ({table}), so none was tested")
    runs = []
    for row in ranked[:trials]:
        run_dir = Path(row["run_dir"])
        if not run_dir.is_dir():
            run_dir = path / run_dir.parent.name / run_dir.name
        runs.append(read_run(run_dir))
    return runs


def _entry(label: str, model: str, kind: str, rows: list[dict[str, str]], run: Run | None = None) -> Entry:
    optional = [name for name in OPTIONAL if all(_is_score(r.get(name)) for r in rows)]
    scores = {name: mean_sd([float(r[name]) for r in rows]) for name in (*COMPARED, *optional)}
    return Entry(label, model, kind, len(rows), scores, str(run.path) if run else "", run.wandb_run if run else "")


def build_entries(runs: Sequence[Run], warn=None) -> list[Entry]:
    """A row per run (its model's scores), then the references once (the first run's).

    ``warn`` gets a message when the runs were tested on different subjects.
    """
    entries = []
    labels: dict[str, int] = {}
    for run in runs:
        labels[run.label] = labels.get(run.label, 0) + 1
        label = run.label if labels[run.label] == 1 else f"{run.label} ({labels[run.label]})"
        entries.append(_entry(label, run.model, "run", [r for r in run.rows if r["model"] == MODEL], run))
    subject_sets = {run.label: sorted({r["subject"] for r in run.rows if r["model"] == MODEL}) for run in runs}
    if len({tuple(s) for s in subject_sets.values()}) > 1 and warn is not None:
        warn(f"the runs were tested on different subjects; the references shown are those of {runs[0].label}")
    for reference in REFERENCES:
        rows = [r for r in runs[0].rows if r["model"] == reference]
        if rows:
            entries.append(_entry(LABELS[reference], "", "reference", rows))
    return entries


def _is_score(text: str | None) -> bool:
    try:
        return text is not None and not math.isnan(float(text))
    except ValueError:
        return False


def shown_columns(entries: Sequence[Entry]) -> list[str]:
    """:data:`COMPARED`, then the :data:`OPTIONAL` columns every entry has."""
    return [*COMPARED, *(name for name in OPTIONAL if all(name in e.scores for e in entries))]


def best_rows(entries: Sequence[Entry]) -> dict[str, set[int]]:
    """``{column: indices of the best entries}`` (highest, lowest or closest to the
    column's ideal, see :meth:`~t7synth.scores.Column.best`); ties (equal
    means, e.g. two runs of the same checkpoint) are all best."""
    best = {}
    for name in shown_columns(entries):
        values = [e.scores[name][0] for e in entries]
        target = COLUMNS[name].best(values)
        best[name] = {index for index, value in enumerate(values) if value == target}
    return best


def markdown_table(entries: Sequence[Entry]) -> str:
    """The comparison as a Markdown table, best per column in bold; the structure
    scores, when every entry has them, as a second table of the same rows."""
    best = best_rows(entries)
    shown = shown_columns(entries)
    blocks = [list(COMPARED), [name for name in shown if name not in COMPARED]]
    tables = []
    for columns in (block for block in blocks if block):
        header = ["run", "model", "n", *(COLUMNS[name].heading for name in columns)]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * len(columns)) + "|"]
        for index, entry in enumerate(entries):
            cells = []
            for name in columns:
                text = format_cell(name, *entry.scores[name])
                cells.append(f"**{text}**" if index in best[name] else text)
            lines.append("| " + " | ".join([entry.label, entry.model or "—", str(entry.n), *cells]) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def paired_markdown(runs: Sequence[Run], entries: Sequence[Entry]) -> str:
    """Each run's in-brain PSNR against the first run's, paired by subject: the mean
    difference, its 95 % bootstrap interval, the Wilcoxon p and n
    (:func:`~t7synth.statistics.paired_difference`); runs scored on other
    subjects than the first are listed as not paired. Empty for a single run."""
    if len(runs) < 2:
        return ""

    def headline(run: Run) -> dict[str, float]:
        return {r["subject"]: float(r[HEADLINE]) for r in run.rows if r["model"] == MODEL}

    first = headline(runs[0])
    lines = [
        f"Paired in-brain PSNR difference against {entries[0].label} (mean per-subject difference, "
        f"{CONFIDENCE:.0%} bootstrap CI, Wilcoxon signed-rank p):",
        "",
    ]
    for run, entry in zip(runs[1:], entries[1:]):
        other = headline(run)
        if set(other) != set(first):
            lines.append(f"- {entry.label}: not paired (scored on other subjects than {entries[0].label})")
            continue
        _, mine, theirs = paired_by_subject(other, first)
        lines.append(f"- {entry.label}: {paired_difference(mine, theirs).format('dB')}")
    return "\n".join(lines)


def config_differences(runs: Sequence[Run]) -> dict[str, list[Any]]:
    """``{dotted key: [value per run]}`` for the keys whose values differ between the runs.

    Runs without a ``config.yaml`` are left out; a key a run's config lacks (written
    by an older t7synth) counts as a difference, shown as :data:`NOT_SET`. Keys in
    :data:`IGNORED_KEYS` never count.
    """

    configs = [flatten(run.config) for run in runs if run.config]
    if len(configs) < 2:
        return {}
    keys = sorted({key for config in configs for key in config})
    differences = {}
    for key in keys:
        if any(key == ignored or (ignored.endswith(".") and key.startswith(ignored)) for ignored in IGNORED_KEYS):
            continue
        present = {json.dumps(config[key], sort_keys=True, default=str) for config in configs if key in config}
        if len(present) > 1 or any(key not in config for config in configs):
            differences[key] = [config.get(key, NOT_SET) for config in configs]
    return differences


def differences_markdown(runs: Sequence[Run], differences: dict[str, list[Any]]) -> str:
    """The config differences as a Markdown section (a table, or a sentence)."""
    with_config = [run for run in runs if run.config]
    lines = ["## Config differences", ""]
    without = [run.label for run in runs if not run.config]
    if without:
        lines += [f"No {CONFIG_FILE} (left out): {', '.join(without)}.", ""]
    if len(with_config) < 2:
        return "\n".join(lines + [f"Fewer than two runs have a {CONFIG_FILE}: nothing to compare."])
    if not differences:
        return "\n".join(lines + ["The runs' configs are the same (name, runs_dir and wandb.* aside)."])
    lines.append("| key | " + " | ".join(run.label for run in with_config) + " |")
    lines.append("|" + "|".join(["---"] * (len(with_config) + 1)) + "|")
    for key, values in differences.items():
        cells = [value if value == NOT_SET else json.dumps(value, default=str).strip('"') for value in values]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_columns(entries: Sequence[Entry] = ()) -> list[str]:
    names = shown_columns(entries) if entries else COMPARED
    return [
        "run",
        "model",
        "kind",
        "n",
        *(f"{n}_{s}" for n in names for s in ("mean", "sd")),
        "best",
        "path",
        "wandb_run",
    ]


def table_rows(entries: Sequence[Entry]) -> list[list]:
    """The CSV/W&B rows: numbers, ``best`` listing the columns the row wins, where it lives."""
    best = best_rows(entries)
    rows = []
    for index, entry in enumerate(entries):
        numbers = [round(v, 6) for name in best for v in entry.scores[name]]
        wins = ";".join(name for name in best if index in best[name])
        rows.append([entry.label, entry.model, entry.kind, entry.n, *numbers, wins, entry.path, entry.wandb_run])
    return rows


def write_csv(entries: Sequence[Entry], path: Path) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(table_columns(entries))
        writer.writerows(table_rows(entries))
    return path


def bar_chart(entries: Sequence[Entry], path: Path) -> Path:
    """In-brain PSNR and SSIM per run (SD error bars), references as horizontal lines.

    The bars are the mean over the test subjects and the error bars their SD, which the
    titles say. The y-axis is zoomed on the data (bars from 0 would hide differences of
    a fraction of a dB); when it does not start at 0, break marks on the axis and a
    note below it say so.
    """
    plt = pyplot()
    runs = [e for e in entries if e.kind == "run"]
    references = [e for e in entries if e.kind == "reference"]
    styles = ["--", ":"]
    figure, axes = plt.subplots(1, 2, figsize=(max(6.0, 1.6 * len(runs) + 3.5), 4.2))
    for axis, name in zip(axes, ("psnr_brain", "ssim_brain")):
        # A perfect prediction's PSNR is infinite and its SD may be undefined: such bars
        # are drawn up to the top and marked, and the axis is scaled by the finite values.
        means = [e.scores[name][0] for e in runs]
        sds = [e.scores[name][1] if math.isfinite(e.scores[name][1]) else 0.0 for e in runs]
        finite = [math.isfinite(m) for m in means]
        lines = [r.scores[name][0] for r in references if math.isfinite(r.scores[name][0])]
        values = [m - s for m, s, ok in zip(means, sds, finite) if ok] + lines
        tops = [m + s for m, s, ok in zip(means, sds, finite) if ok] + lines
        low, high = (min(values), max(tops)) if values else (0.0, 1.0)
        margin = 0.15 * (high - low) or 0.05 * abs(high) or 1.0
        positions = range(len(runs))
        heights = [m if ok else high + margin for m, ok in zip(means, finite)]
        axis.bar(
            positions,
            heights,
            yerr=[s if ok else 0.0 for s, ok in zip(sds, finite)],
            capsize=4,
            color="tab:blue",
            alpha=0.8,
        )
        for position, mean, ok in zip(positions, means, finite):
            if not ok:
                axis.annotate(f"{mean}", (position, high + margin), ha="center", va="top", fontsize=9)
        for reference, style in zip(references, styles):
            if math.isfinite(reference.scores[name][0]):
                axis.axhline(reference.scores[name][0], color="gray", linestyle=style, label=reference.label)
        axis.set_xticks(list(positions), [e.label for e in runs], rotation=20, ha="right", fontsize=8)
        axis.set_title(f"test {COLUMNS[name].heading}\nbars: mean over subjects, error bars: ±1 SD", fontsize=10)
        axis.set_ylabel(COLUMNS[name].heading)
        # Bars from 0 would hide differences of a fraction of a dB: zoom on the data.
        axis.set_ylim(low - margin, high + margin)
        if low - margin > 0:
            _mark_cut_axis(axis, low - margin)
        if references:
            axis.legend(fontsize=8, loc="best", framealpha=0.8)
    figure.tight_layout()
    return save_figure(figure, path, dpi=100)


def _mark_cut_axis(axis, bottom: float) -> None:
    """Break marks (//) at the bottom of the y-axis and a note: the bars do not start at 0."""
    marks = {"transform": axis.transAxes, "color": "black", "clip_on": False, "linewidth": 1}
    for offset in (0.0, 0.025):
        axis.plot([-0.02, 0.02], [offset - 0.01, offset + 0.01], **marks)
    axis.annotate(
        f"y-axis cut: starts at {bottom:.3g}, not 0",
        (0.0, 0.0),
        xycoords="axes fraction",
        xytext=(0, -48),
        textcoords="offset points",
        fontsize=7,
        color="dimgray",
    )


def log_to_wandb(
    entries: Sequence[Entry],
    runs: Sequence[Run],
    differences: dict[str, list[Any]],
    images: dict[str, Path],
    mode: str,
    out_dir: Path,
) -> None:
    """Log the table, config differences and pictures to a new W&B run (job type ``compare``).

    The compared runs are linked from the run's config (their labels, folders and W&B
    ids) and from the table's ``wandb_link`` column (URL online, run path offline; see
    :func:`t7synth.training.loggers.run_link`).
    """

    first = runs[0]
    run = wandb.init(
        project=first.wandb_project,
        entity=first.wandb_entity,
        job_type="compare",
        name="compare: " + ", ".join(e.label for e in entries if e.kind == "run")[:100],
        mode=mode,
        dir=str(out_dir),
        config={
            "runs": [{"label": e.label, "path": e.path, "wandb_run": e.wandb_run} for e in entries if e.kind == "run"],
            "config_differences": {
                key: [json.dumps(v, default=str) for v in values] for key, values in differences.items()
            },
        },
    )
    try:
        rows = [[*row, run_link(run, row[-1], mode) if row[-1] else ""] for row in table_rows(entries)]
        run.log(
            {
                "comparison/table": wandb.Table(columns=[*table_columns(entries), "wandb_link"], data=rows),
                **{f"comparison/{name}": wandb.Image(str(path)) for name, path in images.items()},
            }
        )
    finally:
        run.finish()


def compare(
    run_dirs: Sequence[str | Path],
    out: str | Path = "comparison",
    wandb_mode: str = "disabled",
    warn=None,
    trials: int = 3,
) -> str:
    """Compare scored folders: write ``comparison.md``, ``.csv``, ``.png`` and ``curves.png`` into ``out``.

    Every folder is read and checked before anything is written.

    Args:
        run_dirs: ``fit`` run folders, ``evaluate`` outputs or sweep study folders.
        out: the output folder.
        wandb_mode: ``disabled``, ``online`` or ``offline``.
        warn: receives warnings (runs tested on different subjects).
        trials: how many best complete trials of each study folder to compare.

    Returns:
        The Markdown table, the config differences and where the files are, to print.
    """
    if trials < 1:
        raise UserError(f"--trials {trials}: must be at least 1")

    check_wandb_mode(wandb_mode)
    runs = [run for path in run_dirs for run in read_runs(path, trials)]
    entries = build_entries(runs, warn=warn)
    differences = config_differences(runs)
    out = Path(out).expanduser()
    table = markdown_table(entries)
    paired = paired_markdown(runs, entries)
    if paired:
        table += "\n\n" + paired
    section = differences_markdown(runs, differences)

    for run in runs:  # a damaged metrics.csv is refused now, before anything is written
        if run.metrics is not None:
            read_metrics(run.metrics)
    check_writable(out)
    remove_stale_temporaries(out)
    finals = [out / name for name in ("comparison.md", "comparison.csv", "comparison.png", "curves.png")]
    # All four or none: each is drawn into a temporary, and only then are they renamed,
    # so a failure half-way leaves the previous comparison whole.
    with atomic_paths(*finals) as (md_tmp, csv_tmp, chart_tmp, curves_tmp):
        md_tmp.write_text(table + "\n\n" + section + "\n", encoding="utf-8")
        write_csv(entries, csv_tmp)
        bar_chart(entries, chart_tmp)
        labels = {id(run): entry.label for run, entry in zip(runs, entries)}
        if save_curves([(labels[id(run)], run.metrics) for run in runs if run.metrics], curves_tmp) is None:
            curves_tmp.unlink()  # no curves: a stale curves.png (other runs') is removed
    images = {"chart": finals[2]}
    curves = finals[3] if finals[3].is_file() else None
    if curves is not None:
        images["curves"] = curves
    if wandb_mode != "disabled":
        log_to_wandb(entries, runs, differences, images, wandb_mode, out)
    pictures = f"Chart: {images['chart']}" + (
        f"\nCurves: {curves}" if curves else f"\nCurves: none (no run has a {METRICS_FILE})"
    )
    return f"{table}\n\n{section}\n\nTable: {out / 'comparison.md'}, {out / 'comparison.csv'}\n{pictures}"
