"""delift_core.outputs.maps and delift_core.outputs.views: projections, clusters, heatmap ordering, comparisons,
explanations and work estimates."""

from __future__ import annotations

import numpy as np
import pytest

from delift_core.kernels.builder import Kernels
from delift_core.data.dataset import load_dataset
from delift_core.selection.select import select
from delift_core.outputs.maps import cluster_labels, pca_2d, project_2d
from delift_core.kernels.estimates import estimate_work, format_seconds
from delift_core.outputs.views import (compare_selections, cluster_order, explain, gain_curve,
                                       heatmap_view, hover_safe, rank_order)


def blobs(n_per: int = 12, k: int = 3, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:k] * 5
    x = np.vstack([c + rng.normal(0, 0.1, (n_per, dim)) for c in centres])
    return x.astype(np.float32), np.repeat(np.arange(k), n_per)


def small_selection(budget: int = 3):
    pool = load_dataset("demo:pool").subset(range(10))
    rng = np.random.default_rng(1)
    k = rng.uniform(0, 1, (10, 10)).astype(np.float32)
    np.fill_diagonal(k, 1.0)
    return select(pool, "fl", Kernels("embedding", pool=k), budget), k


# ----------------------------------------------------------------------------------------------
# maps


def test_pca_separates_blobs_and_is_deterministic() -> None:
    x, y = blobs()
    a, b = pca_2d(x), pca_2d(x)
    assert a.shape == (36, 2) and np.array_equal(a, b)
    centres = np.array([a[y == c].mean(axis=0) for c in range(3)])
    spread = max(np.linalg.norm(a[y == c] - centres[c], axis=1).max() for c in range(3))
    gap = min(np.linalg.norm(centres[i] - centres[j]) for i in range(3) for j in range(i))
    assert gap > 5 * spread


def test_umap_is_seeded_and_keeps_clusters_apart() -> None:
    x, y = blobs()
    a = project_2d(x, method="umap", seed=3)
    b = project_2d(x, method="umap", seed=3)
    assert a.shape == (36, 2) and np.allclose(a, b)
    centres = np.array([a[y == c].mean(axis=0) for c in range(3)])
    within = np.mean([np.linalg.norm(a[y == c] - centres[c], axis=1).mean() for c in range(3)])
    gap = min(np.linalg.norm(centres[i] - centres[j]) for i in range(3) for j in range(i))
    assert gap > 2 * within


def test_tiny_inputs_fall_back_to_pca_and_bad_method_is_refused() -> None:
    x, _ = blobs(n_per=1, k=3)
    assert np.array_equal(project_2d(x, method="umap"), pca_2d(x))
    with pytest.raises(ValueError, match="unknown projection"):
        project_2d(x, method="tsne")


def test_cluster_labels_recover_blobs_largest_first() -> None:
    x, y = blobs()
    x = np.vstack([x, x[:5] + 0.01])  # cluster 0 is now the largest
    y = np.concatenate([y, y[:5]])
    labels = cluster_labels(x, 3, seed=0)
    assert set(labels) == {0, 1, 2}
    for c in range(3):  # each true blob maps onto one label
        assert len(set(labels[y == c])) == 1
    assert labels[0] == 0 and np.bincount(labels)[0] == 17


# ----------------------------------------------------------------------------------------------
# views


def test_hover_safe_escapes_html_and_shortens() -> None:
    out = hover_safe('<a href="x">click</a> <script>alert(1)</script>' + "z" * 300, 100)
    assert "<a" not in out and "<script" not in out and "&lt;script&gt;" in out
    assert out.replace("<br>", "").endswith("…")


def test_gain_curve_matches_selection() -> None:
    sel, _ = small_selection()
    curve = gain_curve(sel)
    assert list(curve["budget"]) == list(range(1, 11))
    assert np.allclose(curve["value"], sel.values) and curve["id"][0] == sel.selected_ids[0]
    assert np.all(np.diff(curve["value"]) >= -1e-9)  # monotone


def test_rank_order_puts_selected_first_and_groups_rejected_by_cover() -> None:
    sel, _ = small_selection(3)
    order = rank_order(sel)
    assert sorted(order) == list(range(10))
    assert list(order[:3]) == list(sel.selected_indices)
    table = sel.annotate()
    covers = [table["covered_by"].iat[k] for k in order[3:]]
    ranks = [sel.selected_ids.index(c) for c in covers]
    assert ranks == sorted(ranks)


def test_cluster_order_is_stable_within_clusters() -> None:
    assert list(cluster_order([1, 0, 1, 0], [3, 2, 1, 0])) == [3, 1, 2, 0]


def test_heatmap_full_sample_and_aggregate() -> None:
    k = np.arange(100, dtype=np.float32).reshape(10, 10)
    order = np.arange(10)[::-1]
    full = heatmap_view(k, order, max_size=10)
    assert full.mode == "full" and full.notice is None
    assert np.array_equal(full.values, k[::-1, ::-1])
    sample = heatmap_view(k, order, max_size=4, mode="sample")
    assert sample.values.shape == (4, 4) and "Showing 4 of 10" in sample.notice
    assert sample.rows[0] == [9] and sample.rows[-1] == [0]  # the order's ends are kept
    agg = heatmap_view(k, np.arange(10), max_size=5, mode="aggregate")
    assert agg.values.shape == (5, 5) and "mean" in agg.notice
    assert agg.values[0, 0] == pytest.approx(k[:2, :2].mean())
    assert sum(len(g) for g in agg.rows) == 10


def test_heatmap_of_a_sparse_kernel_equals_the_dense_one_with_zeros() -> None:
    import scipy.sparse as sp

    rng = np.random.default_rng(3)
    k = rng.random((30, 30)).astype(np.float32)
    k[rng.random(k.shape) < 0.7] = 0  # the pairs a sparse kernel did not compute
    order = rng.permutation(30)
    for mode, size in (("full", 30), ("sample", 7), ("aggregate", 7)):
        dense = heatmap_view(k, order, max_size=size, mode="sample" if mode == "full" else mode)
        sparse = heatmap_view(sp.csr_matrix(k), order, max_size=size,
                              mode="sample" if mode == "full" else mode)
        assert dense.mode == sparse.mode == mode
        assert np.allclose(dense.values, sparse.values, atol=1e-6) and dense.rows == sparse.rows


def test_explain_on_a_sparse_kernel_matches_dense() -> None:
    import scipy.sparse as sp

    sel, k = small_selection(3)
    k = k.copy()
    k[k < 0.5] = 0
    pool = sel.pool
    dense = select(pool, "fl", Kernels("embedding", pool=k), 3)
    sparse = select(pool, "fl", Kernels("embedding", pool=sp.csr_matrix(k)), 3)
    assert dense.selected_ids == sparse.selected_ids
    for row_id in pool.ids:
        a, b = explain(dense, row_id), explain(sparse, row_id)
        assert (a.selected, a.rank, a.covered_by, a.best_cover_for) == \
               (b.selected, b.rank, b.covered_by, b.best_cover_for)
        assert [x for x, _ in a.covers] == [x for x, _ in b.covers]


def test_compare_selections_counts_and_jaccard() -> None:
    cmp = compare_selections(["a", "b", "x"], ["b", "c"], ["a", "b", "c", "d"], ("DELIFT", "SE"))
    assert cmp.status == ["only DELIFT", "both", "only SE", "neither"]
    assert cmp.counts == {"both": 1, "only DELIFT": 1, "only SE": 1, "neither": 1}
    assert cmp.jaccard == pytest.approx(1 / 3)
    assert cmp.notes and "1 rows selected by DELIFT" in cmp.notes[0]


def test_explain_selected_and_rejected() -> None:
    sel, k = small_selection(3)
    first = sel.selected_ids[0]
    ex = explain(sel, first, top=3)
    assert ex.selected and ex.rank == 1 and ex.gain == pytest.approx(sel.gains[0])
    j = sel.pool.index_of(first)
    values = [v for _, v in ex.covers]
    table = sel.annotate()
    mine = table[table["covered_by"] == first]  # the rejected rows it is the best cover of
    assert ex.best_cover_for == len(mine) and len(ex.covers) == min(3, len(mine))
    assert values == sorted(values, reverse=True)
    assert {x for x, _ in ex.covers} <= set(mine["id"])  # never a selected row
    assert not set(x for x, _ in ex.covers) & set(sel.selected_ids)
    if len(ex.covers):
        assert values[0] == pytest.approx(max(k[sel.pool.index_of(i), j] for i in mine["id"]))
    rejected = next(i for i in sel.pool.ids if i not in sel.selected_ids)
    ex = explain(sel, rejected)
    row = table.set_index("id").loc[rejected]
    assert not ex.selected and ex.covered_by == row["covered_by"]
    assert ex.coverage == pytest.approx(row["coverage"])
    assert len(ex.alternatives) == 2 and ex.alternatives[0][1] <= ex.coverage


def test_estimate_work_counts_pairs_and_texts() -> None:
    pool = load_dataset("demo:pool").subset(range(24))
    target = load_dataset("demo:target")
    est = estimate_work(pool, target=target, kind="utility")
    assert [s[0] for s in est.stages] == ["utility pool", "utility target"]
    assert est.stages[0][1] == 24 * 24 + 24 and est.stages[1][1] == 40 * 24 + 40
    assert est.tokens > est.units * 10
    emb = estimate_work(pool, target=target, kind="embedding")
    assert emb.units == 64 and emb.stages[0][0] == "embedding pool"
    assert est.seconds(None) is None and est.seconds(est.tokens / 10) == pytest.approx(10)
    assert format_seconds(42) == "42 s" and format_seconds(185) == "3 min 5 s"
    assert format_seconds(None) == "unknown"
    sparse = estimate_work(pool, target=target, kind="utility", neighbours=5, neighbour_random=2)
    assert sparse.stages[0][1] == 24 * 7 + 24 and sparse.stages[1][1] == 40 * 7 + 40
    assert sparse.tokens < est.tokens / 2
    from delift_core.kernels.estimates import utility_time_guess

    demo = estimate_work(load_dataset("demo:pool"), kind="utility", neighbours=16)
    assert demo.units == 240 * 20 + 240
    # the benchmark's sparse demo run took 421 s (fp32) for this estimate; bfloat16's CPU speed
    # differs by CPU (2.7x faster with AVX512-BF16, 5x slower without) so it is never guessed
    assert 380 < utility_time_guess(demo, "float32") < 460
    assert utility_time_guess(demo, "bfloat16") is None
    assert utility_time_guess(demo, "float16") is None
