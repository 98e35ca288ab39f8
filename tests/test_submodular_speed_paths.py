"""The fast paths of the objectives and the lazy greedy give exactly the naive greedy's picks."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import delift_core.selection.greedy as greedy
from delift_core.selection.greedy import greedy_maximize
from delift_core.selection.objectives.facility_location import FacilityLocation
from delift_core.selection.objectives.flcg import FacilityLocationConditionalGain
from delift_core.selection.objectives.flmi import FacilityLocationMutualInformation
from delift_core.selection.objectives.flqmi import FacilityLocationQueryMutualInformation


def _objectives(rng, k, n):
    t = rng.random((9, n)).astype(np.float32)
    ex = rng.random((n, 7)).astype(np.float32) * 0.7
    out = [FacilityLocation(k), FacilityLocationConditionalGain(k, ex),
           FacilityLocationQueryMutualInformation(k)]
    if k.shape[0] == k.shape[1]:
        out.append(FacilityLocationMutualInformation(k, t))
    return out


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("sparse", [False, True])
def test_lazy_equals_naive_with_ties(seed, sparse):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    m = n if seed % 2 else int(rng.integers(5, 60))
    k = rng.random((n, m)).astype(np.float32)
    if seed % 3 == 0:
        k = np.round(k * 4) / 4  # many exact ties
    k[:, m // 2] = k[:, 0]  # duplicate columns: the lower index must win
    if sparse:
        k[rng.random(k.shape) < 0.6] = 0
        k = sp.csr_matrix(k)
    for obj in _objectives(rng, k, n):
        a = greedy_maximize(obj, None, method="lazy")
        b = greedy_maximize(obj, None, method="naive")
        assert (a.order == b.order).all(), obj.name
        assert np.allclose(a.gains, b.gains)
        assert abs(a.values[-1] - obj.evaluate(a.order)) < 1e-3


@pytest.mark.parametrize("sparse", [False, True])
def test_lazy_evaluates_far_fewer_gains_than_naive_for_the_same_order(sparse):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    k = ((x @ x.T + 1) / 2).astype(np.float32)
    if sparse:
        k[k < 0.8] = 0
        k = sp.csr_matrix(k)
    naive = greedy_maximize(FacilityLocation(k), 100, method="naive")
    lazy = greedy_maximize(FacilityLocation(k), 100)
    assert (lazy.order == naive.order).all()
    assert np.array_equal(lazy.gains, naive.gains)  # same compiled gain, bit for bit
    assert naive.evaluations == sum(300 - i for i in range(100))
    assert 300 <= lazy.evaluations < naive.evaluations / 5


def test_pinned_then_lazy_matches_naive_and_banned_never_appear():
    rng = np.random.default_rng(9)
    k = rng.random((60, 60)).astype(np.float32)
    for method in ("naive", "lazy"):
        r = greedy_maximize(FacilityLocation(k), 20, method=method, pinned=[7, 3], banned=[0, 1])
        assert list(r.order[:2]) == [7, 3] and not {0, 1} & set(r.order.tolist())
    a = greedy_maximize(FacilityLocation(k), 20, pinned=[7, 3], banned=[0, 1])
    b = greedy_maximize(FacilityLocation(k), 20, method="naive", pinned=[7, 3], banned=[0, 1])
    assert (a.order == b.order).all()


def test_memmap_and_c_order_kernels_agree(tmp_path):
    rng = np.random.default_rng(1)
    k = rng.random((50, 50)).astype(np.float32)
    np.save(tmp_path / "k.npy", k)
    mm = np.load(tmp_path / "k.npy", mmap_mode="r")
    a = greedy_maximize(FacilityLocation(k), 20)
    b = greedy_maximize(FacilityLocation(mm), 20)
    c = greedy_maximize(FacilityLocation(np.asfortranarray(k)), 20)
    assert (a.order == b.order).all() and (a.order == c.order).all()
    assert np.allclose(a.values, b.values)
