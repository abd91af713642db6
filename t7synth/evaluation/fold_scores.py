"""``compare runs/<name>`` on a cross-validation: a row per fold, the pooled held-out
subjects, and a row per site.

A cross-validation folder is an experiment folder with ``fold_<I>`` subfolders
(:mod:`t7synth.training.cross_validation`); in each, the newest run that reached its
test is read (``test_scores.csv`` and ``split.tsv``). Each fold's identity and
intensity-LUT references are that fold's own: the LUT was fitted on the fold's training
subjects when the fold ran (:mod:`t7synth.data.intensity_lut`), and ``test_scores.csv``
holds its rows beside the model's. The table shows, for the model and both references:

* one row per fold (mean ± SD over that fold's held-out subjects, n of them);
* ``pooled``: every held-out subject of every fold once (mean ± SD, n = the subjects of
  the cross-validation), the number a cross-validation is reported by;
* one row per site (from ``split.tsv``): the pooled subjects of that site. With
  leave-one-site-out, a site's row is its fold's; by subject, it shows how the model
  does on each site's scans when trained on all others' and some of its own. A dataset
  without sites (every subject ``n/a``, as the demo's) gets none: its one site row would
  repeat the pooled one.

The files (``comparison.md``, ``.csv``, ``.png``, ``curves.png``) and the W&B summary
run are those of :func:`t7synth.evaluation.compare.compare`, whose writers are reused; the
folds' own W&B runs are grouped under the experiment's name when they ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from t7synth.charts import save_curves
from t7synth.data.folds import FOLD_PREFIX, NO_SITE, read_split_table
from t7synth.errors import UserError
from t7synth.evaluation.compare import (
    COMPARED,
    OPTIONAL,
    Entry,
    Run,
    bar_chart,
    config_differences,
    differences_markdown,
    log_to_wandb,
    read_run,
    write_csv,
)
from t7synth.files import atomic_paths, check_writable, remove_stale_temporaries
from t7synth.run_files import SPLIT_FILE, TEST_SCORES_FILE
from t7synth.scores import COLUMNS, LABELS, MODEL, ROW_KINDS, format_cell, is_number, mean_sd
from t7synth.training.cross_validation import finished_runs
from t7synth.training.loggers import check_wandb_mode

#: The label of the pooled rows.
POOLED = "pooled"


def fold_folders(path: Path) -> list[Path]:
    """The ``fold_<I>`` subfolders of ``path``, in fold order (none: not a cross-validation)."""
    found = [p for p in Path(path).glob(f"{FOLD_PREFIX}*") if p.is_dir() and p.name[len(FOLD_PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(FOLD_PREFIX) :]))


def is_cross_validation(path: str | Path) -> bool:
    """Whether ``path`` is an experiment folder of a cross-validation."""
    path = Path(path).expanduser()
    return path.is_dir() and bool(fold_folders(path))


def read_folds(path: Path) -> list[tuple[Run, dict[str, str]]]:
    """Each fold's newest tested run and ``{subject: site}`` of its ``split.tsv``.

    Raises:
        UserError: a fold without a tested run (naming it), or a subject held out twice.
    """
    folds = []
    seen: dict[str, str] = {}
    for folder in fold_folders(path):
        tested = finished_runs(folder)
        if not tested:
            raise UserError(
                f"{folder} has no run that reached its test ({TEST_SCORES_FILE}); finish it with fit --fold "
                f"{folder.name[len(FOLD_PREFIX) :]} (or --fold all)"
            )
        run = read_run(tested[-1])
        run.label = folder.name
        sites = {subject: site for subject, (site, _) in read_split_table(tested[-1] / SPLIT_FILE).items()}
        for subject in {r["subject"] for r in run.rows if r["model"] == MODEL}:
            if subject in seen:
                raise UserError(f"{subject} is held out by both {seen[subject]} and {folder.name} in {path}")
            seen[subject] = folder.name
        folds.append((run, sites))
    return folds


def _entry(label: str, model: str, kind: str, rows: list[dict[str, str]], run: Run | None) -> Entry:
    """One row: mean ± SD over ``rows`` of every compared score (and of the optional
    structure scores when every row has them)."""
    optional = [name for name in OPTIONAL if all(is_number(r.get(name)) for r in rows)]
    names = [*COMPARED, *optional]
    scores = {name: mean_sd([float(r[name]) for r in rows]) for name in names}
    return Entry(label, model, kind, len(rows), scores, str(run.path) if run else "", run.wandb_run if run else "")


def cross_validation_entries(folds: Sequence[tuple[Run, dict[str, str]]]) -> list[Entry]:
    """The rows of the table: per fold, pooled, per site; each for the model and the references."""
    model = folds[0][0].model

    def group(label: str, rows: list[dict[str, str]], run: Run | None = None) -> list[Entry]:
        entries = []
        for kind in ROW_KINDS:
            selected = [r for r in rows if r["model"] == kind]
            if selected:
                name = label if kind == MODEL else f"{label} {LABELS[kind]}"
                entries.append(
                    _entry(name, model if kind == MODEL else "", "run" if kind == MODEL else "reference", selected, run)
                )
        return entries

    entries: list[Entry] = []
    pooled: list[dict[str, str]] = []
    site_of: dict[str, str] = {}
    for run, sites in folds:
        entries += group(run.label, run.rows, run)
        pooled += run.rows
        site_of.update(sites)
    entries += group(POOLED, pooled)
    sites = sorted({site_of.get(r["subject"], NO_SITE) for r in pooled})
    if sites == [NO_SITE]:
        return entries
    for site in sites:
        entries += group(f"site {site}", [r for r in pooled if site_of.get(r["subject"], NO_SITE) == site])
    return entries


def plain_table(entries: Sequence[Entry]) -> str:
    """The Markdown table of the intensity scores (no bold: the best of folds and sites
    is not a choice to make); ``comparison.csv`` also has the structure scores."""
    columns = list(COMPARED)
    header = ["rows", "model", "n", *(COLUMNS[name].heading for name in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * len(columns)) + "|"]
    for entry in entries:
        cells = [format_cell(name, *entry.scores[name]) for name in columns]
        lines.append("| " + " | ".join([entry.label, entry.model or "—", str(entry.n), *cells]) + " |")
    return "\n".join(lines)


def compare_folds(path: str | Path, out: str | Path = "comparison", wandb_mode: str = "disabled") -> str:
    """Compare the folds of the cross-validation in ``path``; write the files into ``out``.

    Returns:
        The table, the config differences between the folds and where the files are.

    Raises:
        UserError: see :func:`read_folds`; a W&B mode that cannot run.
    """
    path = Path(path).expanduser()
    check_wandb_mode(wandb_mode)
    folds = read_folds(path)
    runs = [run for run, _ in folds]
    entries = cross_validation_entries(folds)
    differences = {key: values for key, values in config_differences(runs).items() if key != "data.fold"}
    pooled = next(e for e in entries if e.label == POOLED)
    table = f"## Cross-validation {path.name}: {len(runs)} folds, {pooled.n} held-out subjects\n\n" + plain_table(
        entries
    )
    section = differences_markdown(runs, differences)
    out = Path(out).expanduser()
    check_writable(out)
    remove_stale_temporaries(out)
    finals = [out / name for name in ("comparison.md", "comparison.csv", "comparison.png", "curves.png")]
    with atomic_paths(*finals) as (md_tmp, csv_tmp, chart_tmp, curves_tmp):
        md_tmp.write_text(table + "\n\n" + section + "\n", encoding="utf-8")
        write_csv(entries, csv_tmp)
        # The chart: each fold, pooled and each site for the model; the pooled references as lines.
        charted = [e for e in entries if e.kind == "run"] + [
            e for e in entries if e.kind == "reference" and e.label.startswith(POOLED)
        ]
        bar_chart(charted, chart_tmp)
        if save_curves([(run.label, run.metrics) for run in runs if run.metrics], curves_tmp) is None:
            curves_tmp.unlink()
    images = {"chart": finals[2]}
    if finals[3].is_file():
        images["curves"] = finals[3]
    if wandb_mode != "disabled":
        log_to_wandb(entries, runs, differences, images, wandb_mode, out)
    return f"{table}\n\n{section}\n\nTable: {finals[0]}, {finals[1]}\nChart: {finals[2]}"
