"""Cross-validation folds by subject and by site (t7synth.data.folds)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from t7synth.data.folds import assign_folds, fold_splits, read_split_table, write_split_table
from t7synth.data.layout import SubjectRecord
from t7synth.errors import UserError


def records(sites: dict[str, int], test: int = 0) -> list[SubjectRecord]:
    found, index = [], 0
    for site, count in sites.items():
        for _ in range(count):
            index += 1
            split = "test" if index <= test else None
            found.append(SubjectRecord(f"sub-{index:03d}", Path("s"), Path("t"), None, split=split, site=site))
    return found


SITES = {"unc": 10, "figshare": 20, "penn": 30, "osf": 10, "lausanne": 10}


def test_leave_one_site_out_holds_out_exactly_one_site():
    subjects = records(SITES)
    for fold, site in enumerate(sorted(SITES)):
        splits = fold_splits(subjects, 0, fold, "site", 0.15, seed=3)
        assert {r.site for r in splits["test"]} == {site}
        assert len(splits["test"]) == SITES[site]
        assert site not in {r.site for r in splits["train"] + splits["val"]}
        assert len(splits["train"]) + len(splits["val"]) + len(splits["test"]) == len(subjects)
        assert len(splits["val"]) == round(0.15 * (len(subjects) - SITES[site]))


def test_sites_grouped_into_fewer_folds_keep_sites_whole():
    assigned = assign_folds(records(SITES), 2, "site", seed=0)
    by_site = {}
    for record in records(SITES):
        by_site.setdefault(record.site, set()).add(assigned[record.subject])
    assert all(len(folds) == 1 for folds in by_site.values())
    assert set(assigned.values()) == {0, 1}


def test_by_subject_is_balanced_over_sites_and_deterministic():
    subjects = records(SITES)
    assigned = assign_folds(subjects, 5, "subject", seed=7)
    assert assigned == assign_folds(list(reversed(subjects)), 5, "subject", seed=7)
    assert assigned != assign_folds(subjects, 5, "subject", seed=8)
    sizes = Counter(assigned.values())
    assert max(sizes.values()) - min(sizes.values()) <= 1
    for site in SITES:
        per_fold = Counter(assigned[r.subject] for r in subjects if r.site == site)
        assert max(per_fold.values()) - min(per_fold.get(f, 0) for f in range(5)) <= 1, site
    # every subject is held out exactly once over the folds
    held = Counter(r.subject for f in range(5) for r in fold_splits(subjects, 5, f, "subject", 0.2, 7)["test"])
    assert set(held.values()) == {1} and len(held) == len(subjects)


def test_split_test_subjects_stay_out_of_every_fold():
    subjects = records({"a": 4, "b": 4}, test=2)
    for fold in range(3):
        splits = fold_splits(subjects, 3, fold, "subject", 0.2, 0)
        used = {r.subject for part in splits.values() for r in part}
        assert not used & {"sub-001", "sub-002"}
        assert len(used) == 6


@pytest.mark.parametrize(
    ("folds", "fold", "fold_by", "message"),
    [
        (0, 0, "subject", "data.folds 0"),
        (4, 0, "site", "has 3 site"),
        (3, 3, "site", "data.fold 3"),
        (9, 0, "subject", "2..8"),
    ],
)
def test_impossible_folds_are_one_line(folds, fold, fold_by, message):
    with pytest.raises(UserError, match=message):
        fold_splits(records({"a": 3, "b": 3, "c": 2}), folds, fold, fold_by, 0.2, 0)


def test_by_site_needs_every_site():
    subjects = records({"a": 3, "b": 3})
    subjects[0] = SubjectRecord("sub-001", Path("s"), Path("t"), None)
    with pytest.raises(UserError, match="sub-001 has no site"):
        fold_splits(subjects, 0, 0, "site", 0.2, 0)


def test_split_table_round_trip(tmp_path):
    splits = fold_splits(records({"a": 3, "b": 3}), 0, 1, "site", 0.2, 0)
    table = read_split_table(write_split_table(tmp_path, splits))
    assert {s for s, (site, split) in table.items() if split == "test"} == {r.subject for r in splits["test"]}
    assert {site for site, split in table.values() if split == "test"} == {"b"}


def test_by_subject_folds_stay_even_when_sites_do_not_divide():
    """Dealing continues across sites: three sites of 3 in 2 folds give 5 and 4, not 6 and 3."""
    sizes = Counter(assign_folds(records({"a": 3, "b": 3, "c": 3}), 2, "subject", seed=0).values())
    assert sorted(sizes.values()) == [4, 5]
