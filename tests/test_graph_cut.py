"""Graph cut (gc): brute-force values, gains as differences, the generic lazy greedy equal to the
naive one, sparse equal to dense, submodlib's values and greedy order, and the CLI end to end."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import scipy.sparse as sp

from delift_core.selection.greedy import greedy_maximize
from delift_core.selection.objectives.graph_cut import GraphCut


def gc_brute(S, lam, A):
    """f(A) = sum_{i in V} sum_{j in A} s_ij - lam * sum_{i in A} sum_{j in A} s_ij."""
    A = sorted(set(A))
    return (sum(S[i, j] for i in range(S.shape[0]) for j in A)
            - lam * sum(S[i, j] for i in A for j in A))


def kernel(seed: int, n: int = 7, symmetric: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    S = rng.random((n, n))
    return ((S + S.T) / 2 if symmetric else S).astype(np.float32).astype(np.float64)


@pytest.mark.parametrize("lam", [0.0, 0.4, 0.9])
@pytest.mark.parametrize("seed", [0, 1])
def test_values_and_gains_equal_the_brute_force(seed, lam):
    S = kernel(seed)
    obj = GraphCut(S, lam=lam)
    for k in range(S.shape[0] + 1):
        for A in itertools.combinations(range(S.shape[0]), k):
            assert obj.evaluate(A) == pytest.approx(gc_brute(S, lam, A), abs=1e-4), A
    rng = np.random.default_rng(seed)
    for _ in range(10):
        A = sorted(rng.choice(7, size=int(rng.integers(0, 7)), replace=False).tolist())
        state = obj.initial_state()
        for j in A:
            state = obj.update(state, j)
        g = obj.gains(state)
        for j in set(range(7)) - set(A):
            assert g[j] == pytest.approx(gc_brute(S, lam, A + [j]) - gc_brute(S, lam, A), abs=1e-4)


@pytest.mark.parametrize("lam", [0.3, 0.8])
def test_generic_lazy_greedy_equals_naive_and_sparse_equals_dense(lam):
    S = kernel(3, n=40)
    S[S < 0.6] = 0.0  # many zero pairs: a sparse kernel holds only the rest
    S[:, 5] = S[:, 6]  # ties: equal columns, the lower index must win
    S[5, :] = S[6, :]
    dense = GraphCut(S, lam=lam)
    assert dense.compiled_args() is None  # no compiled path: the generic protocol runs
    lazy = greedy_maximize(dense, 25, method="lazy")
    naive = greedy_maximize(dense, 25, method="naive")
    np.testing.assert_array_equal(lazy.order, naive.order)
    np.testing.assert_allclose(lazy.gains, naive.gains, atol=1e-9)
    assert lazy.evaluations < naive.evaluations
    sparse = greedy_maximize(GraphCut(sp.csr_matrix(S.astype(np.float32)), lam=lam), 25)
    np.testing.assert_array_equal(sparse.order, lazy.order)
    assert lazy.values[-1] == pytest.approx(dense.evaluate(lazy.order), abs=1e-6)


def test_values_and_greedy_order_equal_submodlib():
    submodlib = pytest.importorskip("submodlib")
    S = kernel(5, n=30, symmetric=True).astype(np.float32)
    for lam in (0.2, 0.4, 0.8):
        theirs = submodlib.GraphCutFunction(n=30, mode="dense", lambdaVal=lam, ggsijs=S,
                                            separate_rep=False)
        ours = GraphCut(S, lam=lam)
        rng = np.random.default_rng(0)
        for _ in range(20):
            A = rng.choice(30, size=int(rng.integers(0, 30)), replace=False).tolist()
            assert ours.evaluate(A) == pytest.approx(theirs.evaluate(set(A)), rel=1e-5, abs=1e-4)
        picks = theirs.maximize(budget=10, optimizer="NaiveGreedy", stopIfZeroGain=False,
                                stopIfNegativeGain=False, verbose=False, show_progress=False)
        order = greedy_maximize(ours, 10).order
        assert [int(j) for j, _ in picks] == order.tolist()


def test_square_kernel_required():
    with pytest.raises(ValueError, match="square"):
        GraphCut(np.ones((3, 4)))


def test_cli_select_with_graph_cut(tmp_path):
    from delift_core.cli import main

    out = tmp_path / "gc"
    assert main(["select", "--pool", "demo:pool", "--limit", "40", "--kernel", "embedding",
                 "--objective", "gc", "--lam", "0.3", "--budget", "10", "--out", str(out)]) == 0
    sel = json.loads((out / "selection.json").read_text())
    assert sel["objective"] == "gc" and len(sel["selected_ids"]) == 10
    assert sel["params"]["lam"] == 0.3
    assert main(["select", "--pool", "demo:pool", "--limit", "40", "--kernel", "embedding",
                 "--objective", "gc", "--lam", "3", "--budget", "10",
                 "--out", str(tmp_path / "bad")]) == 2  # outside [0, 1]: a clear error
