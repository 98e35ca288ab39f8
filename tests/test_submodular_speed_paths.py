"""The fast paths of the objectives and the lazy greedy give exactly the naive greedy's picks."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import delift_core.greedy as greedy
from delift_core.greedy import greedy_maximize
from delift_core.objectives import (FacilityLocation, FacilityLocationConditionalGain,
                                    FacilityLocationMutualInformation,
                                    FacilityLocationQueryMutualInformation)


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


@pytest.mark.parametrize("start,cap", [(1, 1), (2, 8), (64, 256)])
def test_lazy_batch_width_does_not_change_the_order(monkeypatch, start, cap):
    rng = np.random.default_rng(5)
    k = (np.round(rng.random((80, 80)) * 8) / 8).astype(np.float32)
    ref = greedy_maximize(FacilityLocation(k), 40, method="naive").order
    monkeypatch.setattr(greedy, "LAZY_BATCH_START", start)
    monkeypatch.setattr(greedy, "LAZY_BATCH_MAX", cap)
    assert (greedy_maximize(FacilityLocation(k), 40).order == ref).all()


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
