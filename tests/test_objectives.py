"""Each DELIFT objective against a brute-force evaluation written here from the formulas."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from delift_core.selection.cover import best_cover
from delift_core.kernels.builder import Kernels
from delift_core.selection.objectives.registry import OBJECTIVES
from delift_core.selection.objectives.facility_location import FacilityLocation
from delift_core.selection.objectives.flcg import FacilityLocationConditionalGain
from delift_core.selection.objectives.flmi import FacilityLocationMutualInformation
from delift_core.selection.objectives.flqmi import FacilityLocationQueryMutualInformation

N, M, P = 7, 4, 3  # pool rows, target rows, existing rows


def _max_over(values) -> float:
    values = list(values)
    return max(values) if values else 0.0


def fl_brute(S, A):
    """f(A) = sum_i max_{j in A} s_ij."""
    return sum(_max_over(S[i, j] for j in A) for i in range(S.shape[0]))


def flmi_brute(S, T, eta, A):
    """f(A) = sum_{i in pool} min(max_{j in A} s_ij, eta * max_q s_iq), s_iq = T[q, i]."""
    return sum(min(_max_over(S[i, j] for j in A), eta * max(T[q, i] for q in range(T.shape[0])))
               for i in range(S.shape[0]))


def flqmi_brute(T, eta, A):
    """f(A) = sum_q max_{j in A} s_qj + eta * sum_{j in A} max_q s_qj."""
    return (sum(_max_over(T[q, j] for j in A) for q in range(T.shape[0]))
            + eta * sum(max(T[q, j] for q in range(T.shape[0])) for j in set(A)))


def flcg_brute(S, E, nu, A):
    """f(A | P) = sum_i max(max_{j in A} s_ij - nu * max_p s_ip, 0)."""
    return sum(max(_max_over(S[i, j] for j in A) - nu * max(E[i, p] for p in range(E.shape[1])),
                   0.0) for i in range(S.shape[0]))


BRUTE_FORCE = {
    "fl": lambda S, T, E, p, A: fl_brute(S, A),
    # Superfiltering.D: FL among the rows its IFD filter keeps (the filter: test_row_scores.py)
    "ifd-fl": lambda S, T, E, p, A: fl_brute(S, A),
    "flmi": lambda S, T, E, p, A: flmi_brute(S, T, p["eta"], A),
    "flqmi": lambda S, T, E, p, A: flqmi_brute(T, p["eta"], A),
    "flcg": lambda S, T, E, p, A: flcg_brute(S, E, p["nu"], A),
    "gc": lambda S, T, E, p, A: gc_brute(S, p["lam"], A),
}
"""Each registered objective's formula written out by hand: name -> f(S, T, E, params, A)."""


def gc_brute(S, lam, A):
    """f(A) = sum_{i in V} sum_{j in A} s_ij - lam * sum_{i in A} sum_{j in A} s_ij."""
    A = sorted(set(A))
    return sum(S[i, j] for i in range(S.shape[0]) for j in A) - lam * sum(S[i, j] for i in A
                                                                          for j in A)


def kernels(seed: int):
    rng = np.random.default_rng(seed)
    S = rng.random((N, N)).astype(np.float32)
    np.fill_diagonal(S, 1.0)
    T = rng.random((M, N)).astype(np.float32)
    E = rng.random((N, P)).astype(np.float32)
    return S.astype(np.float64), T.astype(np.float64), E.astype(np.float64)


def cases(seed: int):
    """(name, objective, brute-force f) for every objective and a few eta / nu."""
    S, T, E = kernels(seed)
    out = [("fl", FacilityLocation(S), lambda A: fl_brute(S, A))]
    for eta in (0.5, 1.0, 2.0):
        out.append((f"flmi-eta{eta}", FacilityLocationMutualInformation(S, T, eta=eta),
                    lambda A, eta=eta: flmi_brute(S, T, eta, A)))
        out.append((f"flqmi-eta{eta}", FacilityLocationQueryMutualInformation(T, eta=eta),
                    lambda A, eta=eta: flqmi_brute(T, eta, A)))
    for nu in (0.5, 1.0):
        out.append((f"flcg-nu{nu}", FacilityLocationConditionalGain(S, E, nu=nu),
                    lambda A, nu=nu: flcg_brute(S, E, nu, A)))
    return out


def all_subsets(n: int):
    for k in range(n + 1):
        yield from itertools.combinations(range(n), k)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_equals_brute_force_on_every_subset(seed):
    for name, obj, brute in cases(seed):
        for A in all_subsets(obj.n_candidates):
            assert obj.evaluate(A) == pytest.approx(brute(A), abs=1e-5), (name, A)


@pytest.mark.parametrize("seed", [0, 3])
def test_gains_and_state_updates_equal_differences_of_f(seed):
    rng = np.random.default_rng(seed)
    for name, obj, brute in cases(seed):
        n = obj.n_candidates
        for _ in range(10):
            A = sorted(rng.choice(n, size=int(rng.integers(0, n)), replace=False).tolist())
            state = obj.initial_state()
            for j in A:
                state = obj.update(state, j)
            rest = np.array([j for j in range(n) if j not in A], dtype=np.int64)
            g_all = obj.gains(state)
            g_rest = obj.gains(state, rest)
            for k, j in enumerate(rest):
                want = brute(A + [int(j)]) - brute(A)
                assert g_rest[k] == pytest.approx(want, abs=1e-5), (name, A, j)
                assert g_all[j] == pytest.approx(want, abs=1e-5), (name, A, j)
            assert (g_all >= -1e-9).all()


def test_flqmi_is_the_target_coverage_plus_modular_relevance():
    _, T, _ = kernels(5)
    obj = FacilityLocationQueryMutualInformation(T, eta=1.0)
    assert obj.n_candidates == N
    assert obj.evaluate([]) == 0
    j = 2
    assert obj.evaluate([j]) == pytest.approx(T[:, j].sum() + T[:, j].max(), abs=1e-5)


def test_flcg_gives_nothing_for_rows_the_existing_data_covers():
    S = np.array([[1.0, 0.2], [0.3, 1.0]])
    E = np.array([[1.0], [0.0]])  # row 0 already fully covered by the existing data
    obj = FacilityLocationConditionalGain(S, E, nu=1.0)
    assert obj.evaluate([0]) == pytest.approx(0.3)  # only row 1 gains, by s_10
    assert obj.evaluate([1]) == pytest.approx(1.0)
    assert obj.evaluate([0, 1]) == pytest.approx(1.0)


def test_flmi_caps_coverage_by_target_relevance():
    S = np.array([[1.0, 0.9], [0.8, 1.0]])
    T = np.array([[0.4, 0.1]])  # pool row 0 relevant to the target (0.4), row 1 barely (0.1)
    obj = FacilityLocationMutualInformation(S, T, eta=1.0)
    assert obj.evaluate([0, 1]) == pytest.approx(0.4 + 0.1)
    assert obj.evaluate([0]) == pytest.approx(min(1.0, 0.4) + min(0.8, 0.1))


def test_shapes_and_values_are_checked():
    S, T, E = kernels(0)
    with pytest.raises(ValueError, match="columns"):
        FacilityLocationMutualInformation(S, T[:, :-1])
    with pytest.raises(ValueError, match="rows"):
        FacilityLocationConditionalGain(S, E[:-1])
    with pytest.raises(ValueError, match="2-D"):
        FacilityLocation(S[0])
    bad = S.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        FacilityLocation(bad)


@pytest.mark.parametrize("name", [n for n, s in OBJECTIVES.items() if s.build is not None])
def test_every_registered_objective_built_from_kernels_equals_its_brute_force(name):
    """The registry's build (scaled kernels, default parameters) gives the formula's values; a
    registered objective without a brute-force formula here fails this test."""
    spec = OBJECTIVES[name]
    assert name in BRUTE_FORCE, f"objective '{name}' has no brute-force check"
    S, T, E = kernels(6)
    k = Kernels("embedding", pool=S, target=T, existing=E)  # embedding kernels are used as given
    params = spec.defaults()
    obj = spec.build(k, **params)
    for A in all_subsets(obj.n_candidates):
        assert obj.evaluate(A) == pytest.approx(BRUTE_FORCE[name](S, T, E, params, A), abs=1e-5)
    for p in spec.params:
        assert p.low <= p.default <= p.high


def test_registry_specs_are_complete():
    assert {"fl", "flmi", "flqmi", "flcg", "random"} <= set(OBJECTIVES)
    for spec in OBJECTIVES.values():
        assert spec.label and spec.help
        assert spec.needs in (None, "target", "existing")
        if spec.build is None:  # a baseline order, or a ranking by per-row scores
            assert spec.baseline or spec.scores is not None
        assert not (spec.baseline and spec.build is not None)
        assert spec.needs_kernel or spec.scores is not None
        assert spec.stage is None or spec.stage in ("instruction", "task", "continual")


@pytest.mark.parametrize("sparse", [False, True])
def test_best_cover_names_the_closest_selected_candidate(sparse):
    import scipy.sparse as sp

    S, _, _ = kernels(4)
    S[2, 1] = S[2, 4] = 0.0  # row 2: no selected candidate covers it
    K = sp.csr_matrix(S.astype(np.float32)) if sparse else S
    who, val = best_cover(K, [1, 4])
    for i in range(N):
        k = 1 if S[i, 1] >= S[i, 4] else 4
        if i == 2:
            assert who[i] == -1 and val[i] == 0
            continue
        assert who[i] == k
        assert val[i] == pytest.approx(S[i, k], abs=1e-6)
    who, val = best_cover(K, [])
    assert (who == -1).all() and (val == 0).all()


def test_scaled_kernels_are_made_once_and_selection_leaves_them_untouched():
    from delift_core.kernels.builder import Kernels
    from delift_core.data.dataset import load_dataset
    from delift_core.selection.select import select

    pool = load_dataset("demo:pool").subset(range(12))
    raw = np.random.default_rng(4).normal(size=(12, 12)).astype(np.float32)
    k = Kernels("utility", pool=raw)
    first = k.scaled("pool")
    before = first.copy()
    assert first.min() == 0 and first.max() == pytest.approx(1)
    sel = select(pool, "fl", k, 4)
    sel.annotate()
    assert k.scaled("pool") is first and np.array_equal(first, before)
    k.pool = raw * 2  # a new raw kernel is scaled afresh
    assert k.scaled("pool") is not first
