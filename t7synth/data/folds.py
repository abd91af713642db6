"""Cross-validation folds by subject or by site, and the ``split.tsv`` every fit writes.

Small paired 3T/7T sets (about 80 public subjects from five sites) are judged by
K-fold cross-validation, not one random split: Cui et al. used 6 folds on 18 subjects,
nnU-Net trains 5 by default, and a model meant for other hospitals is judged on a site
it never saw. Config keys (``data.*``):

* ``folds``: K; ``null`` (the default) means no cross-validation (``assign_splits``).
* ``fold``: the held-out fold, 0..K-1: its subjects are the test split.
* ``fold_by``: ``subject`` (each site's subjects dealt round the folds after a seeded
  shuffle, so every fold holds about the same share of every site) or ``site`` (whole
  sites per fold; ``folds: 0`` = one fold per site, leave-one-site-out).

Validation subjects are drawn (``val_fraction``, seeded) from the folds that are not
held out; subjects with ``split: test`` in ``participants.tsv`` are a final hold-out and
stay out of every fold (neither trained, validated nor tested on). The assignment
depends only on the subjects, their sites and ``data.split_seed``, so every fold of one
cross-validation, on any machine, sees the same partition.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from t7synth.data.layout import SubjectRecord
from t7synth.errors import UserError
from t7synth.files import atomic_path
from t7synth.run_files import SPLIT_FILE
from t7synth.textfiles import read_table

#: A run folder of one fold: ``runs/<name>/fold_<I>/version_N``.
FOLD_PREFIX = "fold_"
#: The site of a subject whose dataset has no ``site`` column (by-subject folds only).
NO_SITE = "n/a"


def fold_name(fold: int) -> str:
    """``fold_<I>``: the folder of fold ``I`` under an experiment's run folder."""
    return f"{FOLD_PREFIX}{fold}"


def _pool(records: list[SubjectRecord]) -> list[SubjectRecord]:
    """The subjects that take part: all but the final hold-out (``split: test``)."""
    return sorted((r for r in records if r.split != "test"), key=lambda r: r.subject)


def _sites(records: list[SubjectRecord], fold_by: str) -> dict[str, list[SubjectRecord]]:
    groups: dict[str, list[SubjectRecord]] = {}
    for record in records:
        if fold_by == "site" and not record.site:
            raise UserError(
                f"data.fold_by: site, but {record.subject} has no site (add a site column to participants.tsv)"
            )
        groups.setdefault(record.site or NO_SITE, []).append(record)
    return dict(sorted(groups.items()))


def fold_count(records: list[SubjectRecord], folds: int, fold_by: str) -> int:
    """K: ``folds``, or with ``fold_by: site`` and ``folds: 0`` the number of sites.

    Raises:
        UserError: fewer subjects (by subject) or sites (by site) than folds, or a
            ``folds`` value that means nothing here.
    """
    pool = _pool(records)
    if fold_by == "site":
        sites = len(_sites(pool, "site"))
        count = sites if folds == 0 else folds
        if count < 2 or count > sites:
            raise UserError(f"data.folds {folds}: the dataset has {sites} site(s); by site, 2..{sites} folds or 0")
        return count
    if folds < 2 or folds > len(pool):
        raise UserError(f"data.folds {folds}: by subject, 2..{len(pool)} folds (the subjects not marked split: test)")
    return folds


def assign_folds(records: list[SubjectRecord], folds: int, fold_by: str, seed: int) -> dict[str, int]:
    """``{subject: fold}`` for every subject not marked ``split: test``.

    By subject: each site's subjects are shuffled (seeded by ``seed`` and the site) and
    dealt round the folds, continuing where the previous site stopped, so the folds
    differ in size by at most one and each holds its share of every site (stratified
    by site, as scikit-learn's ``StratifiedKFold`` stratifies by class). By site: with
    one fold per site, the sites in name order; else the sites, largest first (ties in
    seeded order), each into the fold with the fewest subjects so far.
    """
    pool = _pool(records)
    count = fold_count(records, folds, fold_by)
    groups = _sites(pool, fold_by)
    assigned: dict[str, int] = {}
    if fold_by == "site":
        names = list(groups)
        if count < len(names):
            random.Random(seed).shuffle(names)
            names.sort(key=lambda name: -len(groups[name]))  # stable: the shuffle breaks ties
        sizes = [0] * count
        for index, name in enumerate(names):
            fold = index if count == len(names) else min(range(count), key=lambda f: (sizes[f], f))
            sizes[fold] += len(groups[name])
            assigned.update({r.subject: fold for r in groups[name]})
        return assigned
    turn = 0
    for name, members in groups.items():
        shuffled = list(members)
        random.Random(f"{seed}:{name}").shuffle(shuffled)
        for record in shuffled:
            assigned[record.subject] = turn % count
            turn += 1
    return assigned


def fold_splits(
    records: list[SubjectRecord], folds: int, fold: int, fold_by: str, val_fraction: float, seed: int
) -> dict[str, list[SubjectRecord]]:
    """The train/val/test split of fold ``fold`` (see the module docstring).

    Raises:
        UserError: ``fold`` outside 0..K-1, or what :func:`fold_count` refuses.
    """
    count = fold_count(records, folds, fold_by)
    if not 0 <= fold < count:
        raise UserError(f"data.fold {fold}: the cross-validation has {count} folds (0..{count - 1})")
    assigned = assign_folds(records, folds, fold_by, seed)
    pool = _pool(records)
    test = [r for r in pool if assigned[r.subject] == fold]
    rest = [r for r in pool if assigned[r.subject] != fold]
    random.Random(seed).shuffle(rest)
    n_val = max(1, round(val_fraction * len(rest))) if len(rest) >= 2 and val_fraction > 0 else 0
    val, train = rest[:n_val], rest[n_val:]
    return {
        "train": sorted(train, key=lambda r: r.subject),
        "val": sorted(val, key=lambda r: r.subject),
        "test": test,
    }


def write_split_table(run_dir: Path, splits: dict[str, list[SubjectRecord]]) -> Path:
    """``split.tsv`` in ``run_dir`` (atomically): ``subject, site, split``, one row per
    subject the run uses, so a reader sees exactly who was trained on and held out."""
    path = Path(run_dir) / SPLIT_FILE
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["subject", "site", "split"])
        for split in ("train", "val", "test"):
            for record in splits.get(split, []):
                writer.writerow([record.subject, record.site or NO_SITE, split])
    return path


def read_split_table(path: Path) -> dict[str, tuple[str, str]]:
    """``{subject: (site, split)}`` of a ``split.tsv``; empty if there is none.

    Raises:
        UserError: a table without the three columns.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    table = read_table(path, delimiter="\t")
    if not {"subject", "site", "split"} <= set(table.fieldnames):
        raise UserError(f"{path} has no subject, site and split columns")
    return {row["subject"]: (row["site"], row["split"]) for row in table.rows}
