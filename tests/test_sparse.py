"""Sparse kernels: neighbour pairs, the engine on chosen pairs, objectives on CSR, the pipeline."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from delift_core.selection.cover import best_cover
from delift_core.selection.greedy import greedy_maximize
from delift_core.selection.objectives.facility_location import FacilityLocation
from delift_core.selection.objectives.flcg import FacilityLocationConditionalGain
from delift_core.selection.objectives.flmi import FacilityLocationMutualInformation
from delift_core.selection.objectives.flqmi import FacilityLocationQueryMutualInformation
from delift_core.kernels.sparse import fidelity, neighbour_pairs, topk_sparse
from delift_core.kernels.matrices import minmax_scale
from delift_core.kernels.utility_settings import Texts, UtilitySettings
from delift_core.kernels.utility import UtilityKernel

sys.path.insert(0, str(Path(__file__).parent))
from test_engine_equivalence import (EXAMPLES_P, EXAMPLES_R, TARGETS_P,  # noqa: E402
                                     TARGETS_R, tiny_lm)

T, E = Texts(TARGETS_P, TARGETS_R), Texts(EXAMPLES_P, EXAMPLES_R)


class HashEmbedder:
    """A deterministic offline 'sentence embedder': hashed character trigrams, unit-normalised."""

    delift_name = "hash-trigram-test"

    def encode(self, texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True,
               show_progress_bar=False):
        out = np.zeros((len(texts), 64), np.float32)
        for i, t in enumerate(texts):
            for a in range(max(1, len(t) - 2)):
                h = int(hashlib.md5(t[a: a + 3].encode()).hexdigest()[:8], 16)
                out[i, h % 64] += 1.0
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)
        return out


def _unit(rng, n, d=8):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_neighbour_pairs_are_the_top_k_plus_random():
    rng = np.random.default_rng(0)
    t, e = _unit(rng, 30), _unit(rng, 50)
    r, c = neighbour_pairs(t, e, 5, n_random=0, chunk=7)
    sim = t @ e.T
    for i in range(30):
        got = set(c[r == i].tolist())
        want = set(np.argsort(-sim[i], kind="stable")[:5].tolist())
        assert got == want
    r2, c2 = neighbour_pairs(t, e, 5, n_random=3, seed=1)
    pairs = set(zip(r2.tolist(), c2.tolist()))
    assert set(zip(r.tolist(), c.tolist())) <= pairs
    assert len(pairs) == len(r2)  # unique
    assert all(5 <= (r2 == i).sum() <= 8 for i in range(30))
    r3, c3 = neighbour_pairs(t, e, 5, n_random=3, seed=1)
    assert (r3 == r2).all() and (c3 == c2).all()  # seeded


def test_neighbour_search_holds_a_bounded_block_whatever_the_column_count():
    """The search over many columns holds a few MiB per chunk: before, a 2,048-row chunk of a
    20,000-column search held 160 MiB of similarities and 320 MiB of partition indices (at
    100,000 columns, 4.4 GB: most of the 100,000-row embedding select's 6.2 GiB peak)."""
    import tracemalloc

    from delift_core.kernels import sparse

    rng = np.random.default_rng(0)
    e = _unit(rng, 20_000)
    t = e[:2048]
    tracemalloc.start()
    r, c = neighbour_pairs(t, e, 4, n_random=0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 80 * 2 ** 20, f"neighbour search peaked at {peak / 2 ** 20:.0f} MiB"
    assert len(r) == 2048 * 4
    sim = t[:50] @ e.T  # the bounded chunks change nothing: the same top 4 as a full sort
    for i in range(50):
        assert set(c[r == i].tolist()) == set(np.argsort(-sim[i], kind="stable")[:4].tolist())
    # a block of one row at a time gives the same pairs as the default blocks
    small = np.random.default_rng(1)
    t2, e2 = _unit(small, 30), _unit(small, 50)
    want = neighbour_pairs(t2, e2, 5, n_random=2, seed=3)
    old, sparse.BLOCK_CELLS = sparse.BLOCK_CELLS, 50
    try:
        got = neighbour_pairs(t2, e2, 5, n_random=2, seed=3)
    finally:
        sparse.BLOCK_CELLS = old
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_compute_pairs_equals_dense_entries():
    lm = tiny_lm("gemma3")
    eng = UtilityKernel(lm, UtilitySettings(batch_size=2, block_size=2), use_cache=False)
    full = eng.compute(T, E).values
    rows, cols = [0, 1, 1, 3, 2, 0], [3, 0, 2, 2, 1, 0]
    res = eng.compute(T, E, pairs=(rows, cols))
    assert sp.isspmatrix_csr(res.values) and res.values.dtype == np.float32
    assert res.values.nnz == len(rows)
    d = res.values.toarray()
    for a, b in zip(rows, cols):
        assert abs(d[a, b] - full[a, b]) < 1e-6
    assert res.meta["pairs_computed"] == len(rows) + len(TARGETS_P)


def test_compute_pairs_cache_resume(tmp_path):
    lm = tiny_lm("llama")
    s = UtilitySettings(batch_size=2, block_size=1)
    rows, cols = [0, 1, 2, 3], [0, 1, 1, 3]
    a = UtilityKernel(lm, s, cache_root=str(tmp_path)).compute(
        T, E, pairs=(rows, cols))
    eng = UtilityKernel(lm, s, cache_root=str(tmp_path))
    b = eng.compute(T, E, pairs=(rows, cols))
    assert b.meta["pairs_computed"] == 0 and b.meta["blocks_reused"] == 3
    assert np.allclose(a.values.toarray(), b.values.toarray())


def test_sparse_minmax_scales_stored_entries_only():
    m = sp.csr_matrix(np.array([[0, -1.0, 3.0], [1.0, 0, 0]], np.float32))
    s = minmax_scale(m)
    assert sp.issparse(s) and s.nnz == 3
    assert np.allclose(sorted(s.data), [0.0, 0.5, 1.0])


@pytest.mark.parametrize("density", [0.2, 0.6])
def test_sparse_objectives_match_dense_with_zeros(density):
    rng = np.random.default_rng(3)
    n, m = 40, 40
    dense = rng.random((n, m)).astype(np.float32)
    dense[rng.random((n, m)) > density] = 0
    dense[:, 5] = dense[:, 9]  # a tie
    csr = sp.csr_matrix(dense)
    ex = rng.random((n, 6)).astype(np.float32) * 0.6
    tgt = rng.random((7, n)).astype(np.float32)
    pairs = [(FacilityLocation(dense), FacilityLocation(csr)),
             (FacilityLocationConditionalGain(dense, ex),
              FacilityLocationConditionalGain(csr, sp.csr_matrix(ex))),
             (FacilityLocationMutualInformation(dense, tgt),
              FacilityLocationMutualInformation(csr, tgt)),
             (FacilityLocationQueryMutualInformation(dense), FacilityLocationQueryMutualInformation(csr))]
    for d_obj, s_obj in pairs:
        a = greedy_maximize(d_obj, 25)
        b = greedy_maximize(s_obj, 25)
        c = greedy_maximize(s_obj, 25, method="naive")
        assert (b.order == c.order).all()
        assert np.allclose(a.gains, b.gains, atol=1e-5)
        assert abs(d_obj.evaluate(b.order) - s_obj.evaluate(b.order)) < 1e-4
    da, dv = best_cover(dense, a.order[:6])
    sa, sv = best_cover(csr, a.order[:6])
    assert np.array_equal(da, sa) and np.allclose(dv, sv)


def test_topk_sparse_and_fidelity():
    rng = np.random.default_rng(0)
    k = rng.random((30, 30)).astype(np.float32)
    s = topk_sparse(lambda a, b: k[a:b], 30, 30, 5, chunk=7)
    assert s.nnz == 150
    assert np.allclose(np.sort(s.toarray(), axis=1)[:, -5:], np.sort(k, axis=1)[:, -5:])
    full = FacilityLocation(k)
    f = fidelity(full, greedy_maximize(FacilityLocation(s), 8).order,
                 greedy_maximize(full, 8).order, 8)
    assert 0 < f["value_ratio"] <= 1 + 1e-9 and 0 <= f["overlap"] <= 1


def test_compute_kernels_and_select_with_neighbours(tmp_path):
    from delift_core.data.dataset import load_dataset
    from delift_core.kernels.builder import compute_kernels
    from delift_core.selection.select import select

    pool = load_dataset("demo:pool").subset(range(12))
    lm = tiny_lm("llama")
    k = compute_kernels(pool, kind="utility", lm=lm, embedder=HashEmbedder(), use_cache=False,
                        neighbours=3, neighbour_random=1)
    assert sp.issparse(k.pool) and k.pool.shape == (12, 12)
    assert 3 * 12 <= k.pool.nnz <= 4 * 12
    sel = select(pool, "fl", k, 4)
    assert len(sel.selected_indices) == 4
    ann = sel.annotate()
    assert ann["selected"].sum() == 4
    e = compute_kernels(pool, kind="embedding", embedder=HashEmbedder(), use_cache=False,
                        neighbours=3, neighbour_random=0)
    assert sp.issparse(e.pool) and e.pool.nnz == 36
    assert len(select(pool, "fl", e, 3).selected_indices) == 3
