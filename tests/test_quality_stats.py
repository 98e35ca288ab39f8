"""Paired statistics (delift_core.evaluation.stats) on numbers checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from delift_core.evaluation.stats import (bootstrap_interval, compare_paired, median_intervals,
                                         verdict)


def test_two_item_bootstrap_is_the_enumerated_distribution():
    # diffs [0, 1]: resampled means are 0 (1/4), 0.5 (1/2), 1 (1/4) -> the 95 % interval is [0, 1]
    lo, hi = bootstrap_interval(np.array([0.0, 1.0]), n_boot=4000, seed=1)
    assert (lo, hi) == (0.0, 1.0)
    lo, hi = bootstrap_interval(np.array([0.0, 1.0]), level=0.4, n_boot=4000, seed=1)
    assert (lo, hi) == (0.5, 0.5)  # the central 40 % of that distribution is all 0.5


def test_median_intervals_are_paired_and_enumerable():
    # three items: a resampled median is one of the items' values, so the interval's ends are too
    iv = median_intervals([0.0, 1.0, 2.0], [0.0, 1.0, 2.0], n_boot=4000, seed=1)
    assert iv["a"] == (0.0, 2.0) and iv["b"] == (0.0, 2.0)
    assert iv["diff"] == (0.0, 0.0)  # the same rows drawn for both: the difference never moves
    shifted = median_intervals([1.0, 2.0, 3.0, 4.0], [0.5, 1.5, 2.5, 3.5], n_boot=500)
    assert shifted["diff"] == pytest.approx((0.5, 0.5)) and "b" in shifted
    assert set(median_intervals([1.0, 2.0])) == {"a"}
    with pytest.raises(ValueError, match="paired items"):
        median_intervals([1.0, 2.0], [1.0])


def test_constant_difference_has_a_point_interval():
    c = compare_paired([1.0, 2.0, 3.0], [1.5, 2.5, 3.5], n_boot=500)
    assert c.mean_diff == pytest.approx(-0.5) and c.low == pytest.approx(-0.5)
    assert c.high == pytest.approx(-0.5) and c.verdict == "wins" and c.n_seeds == 1


def test_seeds_beaten_and_per_seed_differences():
    method = [2.0, 2.0, 2.0, 2.0]
    rnd = [[2.5, 2.5, 2.5, 2.5],   # method better by 0.5
           [1.5, 1.5, 1.5, 1.5],   # worse by 0.5
           [3.0, 3.0, 3.0, 3.0]]   # better by 1.0
    c = compare_paired(method, rnd, n_boot=2000)
    assert c.per_seed_diff == pytest.approx((-0.5, 0.5, -1.0))
    assert c.seeds_beaten == 2 and c.n_seeds == 3 and c.n_items == 4
    assert c.mean_diff == pytest.approx(-1.0 / 3)
    # resampling seeds: a replicate of three draws of seed 1 gives +0.5, of seed 2 gives -1.0
    assert c.low == pytest.approx(-1.0) and c.high == pytest.approx(0.5)
    assert c.verdict == "ties"
    assert "beats 2 of 3 random seeds: ties" in c.text()


def test_higher_is_better_and_verdicts():
    c = compare_paired([0.9, 0.8], [0.5, 0.4], lower_is_better=False, n_boot=500)
    assert c.verdict == "wins" and c.seeds_beaten == 1
    assert verdict(-0.2, -0.1) == "wins" and verdict(0.1, 0.3) == "loses"
    assert verdict(-0.1, 0.1) == "ties" and verdict(0.1, 0.3, lower_is_better=False) == "wins"


def test_unpaired_shapes_are_refused():
    with pytest.raises(ValueError, match="not paired"):
        compare_paired([1.0, 2.0], [[1.0, 2.0, 3.0]])
