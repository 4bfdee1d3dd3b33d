"""Selection strategies on a hand-made similarity matrix, subset sizes and their errors."""

from __future__ import annotations

import numpy as np
import pytest

from proxy_bundle.errors import InputError
from proxy_bundle.selection.strategies import (
    choose,
    coverage,
    distance_from_similarity,
    diverse,
    random_subset,
    representative,
    subset_size,
)


@pytest.fixture
def sim() -> np.ndarray:
    """Cluster A = {0, 1, 2} (0.9 within), cluster B = {3, 4} (0.8 within), 0.3 across, case 5 an outlier (0.1)."""
    s = np.full((6, 6), 0.3)
    s[np.ix_([0, 1, 2], [0, 1, 2])] = 0.9
    s[np.ix_([3, 4], [3, 4])] = 0.8
    s[5, :] = s[:, 5] = 0.1
    s[0, 1] = s[1, 0] = 0.95  # 0 and 1 are the most typical of A
    np.fill_diagonal(s, 1.0)
    return s


def test_representative_and_diverse(sim):
    assert representative(sim, 2).tolist() == [0, 1]
    assert representative(sim, 3).tolist() == [0, 1, 2]
    assert diverse(sim, 1).tolist() == [5]
    assert diverse(sim, 3).tolist() == [5, 3, 4]


def test_coverage_picks_one_case_per_cluster(sim):
    two = coverage(sim, 2)
    assert len(two) == 2 and sum(i in (0, 1, 2) for i in two) == 1 and sum(i in (3, 4) for i in two) == 1
    three = coverage(sim, 3)
    assert 5 in three and len(set(three.tolist())) == 3
    assert sorted(coverage(sim, 6).tolist()) == list(range(6))


def test_distance_from_similarity_is_variation_of_information_for_mi():
    # MI matrix with entropies on the diagonal: d = (H_i + H_j)/2 - I_ij
    mi = np.array([[2.0, 0.5], [0.5, 1.0]])
    d = distance_from_similarity(mi)
    assert d[0, 1] == pytest.approx(1.0) and d[0, 0] == 0.0


def test_random_is_seeded(sim):
    a = random_subset(100, 10, seed=7)
    assert a.tolist() == random_subset(100, 10, seed=7).tolist()
    assert a.tolist() != random_subset(100, 10, seed=8).tolist()
    assert len(set(a.tolist())) == 10 and a.tolist() == sorted(a.tolist())
    assert choose(sim, "random", 3, seed=1).tolist() == choose(sim, "random", 3, seed=1).tolist()


def test_subset_size():
    assert subset_size(6, fraction=0.25) == 2  # round(1.5) rounds half up
    assert subset_size(6, fraction=0.01) == 1
    assert subset_size(6, fraction=1.0) == 6
    assert subset_size(6, count=4) == 4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"fraction": 0.0}, r"\(0, 1\]"),
        ({"fraction": 1.5}, r"\(0, 1\]"),
        ({"fraction": -0.2}, r"\(0, 1\]"),
        ({"fraction": float("nan")}, "fraction"),
        ({"count": 7}, "larger than the candidate pool"),
        ({"count": 0}, "at least 1"),
        ({}, "exactly one"),
        ({"fraction": 0.5, "count": 2}, "exactly one"),
    ],
)
def test_subset_size_errors(kwargs, match):
    with pytest.raises(InputError, match=match):
        subset_size(6, **kwargs)


def test_unknown_strategy(sim):
    with pytest.raises(InputError, match="unknown strategy"):
        choose(sim, "best", 2)


def test_selected_folds_stay_contiguous():
    from proxy_bundle.selection.subset import _contiguous_folds

    def folds(entries):
        return [e["fold"] for e in entries]

    keep = [{"image": "a", "fold": 1}, {"image": "b", "fold": 2}]
    assert folds(_contiguous_folds(0, keep)) == [1, 2]  # already contiguous with fold 0: untouched
    assert folds(_contiguous_folds(0, [{"image": "a", "fold": 3}, {"image": "b", "fold": 3}])) == [1, 1]
    assert folds(_contiguous_folds(2, [{"image": "a", "fold": 4}, {"image": "b", "fold": 1}])) == [1, 0]
    assert folds(_contiguous_folds(3, [{"image": "a", "fold": 4}, {"image": "b", "fold": 4},
                                       {"image": "c", "fold": 4}])) == [0, 1, 2]
    with pytest.raises(InputError, match="cannot fill folds"):
        _contiguous_folds(3, [{"image": "a", "fold": 4}])
    assert _contiguous_folds(0, [{"image": "a"}]) == [{"image": "a"}]  # no folds: nothing to renumber
