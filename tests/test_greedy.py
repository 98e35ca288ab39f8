"""Greedy maximisation: each pick is the best single addition, lazy == naive, budgets are prefixes,
stochastic greedy is seeded and close to lazy, pins start the order and bans never appear."""

from __future__ import annotations

import numpy as np
import pytest

from delift_core.selection.greedy import greedy_maximize, random_order
from delift_core.selection.objectives.facility_location import FacilityLocation
from delift_core.selection.objectives.flcg import FacilityLocationConditionalGain
from delift_core.selection.objectives.flmi import FacilityLocationMutualInformation
from delift_core.selection.objectives.flqmi import FacilityLocationQueryMutualInformation

from test_objectives import cases


def objectives(seed: int, n: int = 30, m: int = 8, p: int = 6):
    rng = np.random.default_rng(seed)
    S = rng.random((n, n)).astype(np.float32)
    np.fill_diagonal(S, 1.0)
    T = rng.random((m, n)).astype(np.float32)
    E = rng.random((n, p)).astype(np.float32)
    return {"fl": FacilityLocation(S),
            "flmi": FacilityLocationMutualInformation(S, T, eta=0.8),
            "flqmi": FacilityLocationQueryMutualInformation(T, eta=1.0),
            "flcg": FacilityLocationConditionalGain(S, E, nu=0.9)}


@pytest.mark.parametrize("method", ["lazy", "naive"])
@pytest.mark.parametrize("seed", [0, 1])
def test_each_pick_is_the_best_single_addition(method, seed):
    """Brute force: at every step, no other candidate raises f more than the greedy pick."""
    for name, obj, brute in cases(seed):
        res = greedy_maximize(obj, None, method=method)
        n = obj.n_candidates
        assert sorted(res.order.tolist()) == list(range(n))
        chosen: list[int] = []
        for step, j in enumerate(res.order.tolist()):
            base = brute(chosen)
            best = max(brute(chosen + [c]) for c in range(n) if c not in chosen)
            assert brute(chosen + [j]) == pytest.approx(best, abs=1e-5), (name, step)
            assert res.gains[step] == pytest.approx(best - base, abs=1e-5), (name, step)
            chosen.append(j)
            assert res.values[step] == pytest.approx(brute(chosen), abs=1e-4), (name, step)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_lazy_order_equals_naive_order(seed):
    for name, obj in objectives(seed).items():
        lazy = greedy_maximize(obj, None, method="lazy")
        naive = greedy_maximize(obj, None, method="naive")
        assert lazy.order.tolist() == naive.order.tolist(), name
        np.testing.assert_allclose(lazy.gains, naive.gains, atol=1e-6)
        assert lazy.evaluations <= naive.evaluations


@pytest.mark.parametrize("method", ["lazy", "naive"])
def test_budgets_are_prefixes(method):
    for name, obj in objectives(7).items():
        full = greedy_maximize(obj, None, method=method).order.tolist()
        assert len(full) == obj.n_candidates
        for k in (0, 1, 5, 17, obj.n_candidates):
            assert greedy_maximize(obj, k, method=method).order.tolist() == full[:k], (name, k)


def test_greedy_values_are_nondecreasing_with_diminishing_gains():
    for name, obj in objectives(2).items():
        res = greedy_maximize(obj, None)
        assert (np.diff(res.values) >= -1e-9).all(), name
        assert (np.diff(res.gains) <= 1e-6).all(), name  # submodular: greedy gains shrink
        assert res.values[-1] == pytest.approx(obj.evaluate(res.order), abs=1e-4)


def test_stochastic_is_seeded_and_close_to_lazy():
    for name, obj in objectives(3, n=60).items():
        budget = 10
        a = greedy_maximize(obj, budget, method="stochastic", seed=11)
        b = greedy_maximize(obj, budget, method="stochastic", seed=11)
        assert a.order.tolist() == b.order.tolist(), name
        assert len(set(a.order.tolist())) == budget
        lazy = greedy_maximize(obj, budget, method="lazy")
        v_stoch, v_lazy = obj.evaluate(a.order), obj.evaluate(lazy.order)
        assert v_stoch >= 0.9 * v_lazy, (name, v_stoch, v_lazy)
        assert v_stoch <= v_lazy * 1.05 + 1e-6, (name, v_stoch, v_lazy)
    obj = objectives(3, n=60)["fl"]
    orders = {tuple(greedy_maximize(obj, 10, method="stochastic", seed=s).order) for s in range(5)}
    assert len(orders) > 1, "different seeds should be able to give different samples"


@pytest.mark.parametrize("method", ["lazy", "naive", "stochastic"])
def test_pins_start_the_order_and_bans_never_appear(method):
    for name, obj in objectives(4).items():
        pinned, banned = [17, 3, 25], [0, 1, 2, 9]
        res = greedy_maximize(obj, 12, method=method, pinned=pinned, banned=banned)
        order = res.order.tolist()
        assert order[:3] == pinned, name
        assert len(order) == 12 and len(set(order)) == 12
        assert not set(order) & set(banned), name
        assert res.n_pinned == 3
        full = greedy_maximize(obj, None, method=method, pinned=pinned, banned=banned)
        assert len(full.order) == obj.n_candidates - len(banned)
        assert not set(full.order.tolist()) & set(banned)
        # the pins' gains are their real marginal gains in that order
        assert res.values[2] == pytest.approx(obj.evaluate(pinned), abs=1e-4)


def test_pins_and_bans_are_checked():
    obj = objectives(0)["fl"]
    with pytest.raises(ValueError, match="pinned and banned"):
        greedy_maximize(obj, 5, pinned=[1], banned=[1])
    with pytest.raises(ValueError, match="out of range"):
        greedy_maximize(obj, 5, pinned=[99])
    with pytest.raises(ValueError, match=r"method \(--method\): unknown value"):
        greedy_maximize(obj, 5, method="magic")
    res = greedy_maximize(obj, 2, pinned=[4, 5, 6])
    assert res.order.tolist() == [4, 5, 6] and res.notes


def test_random_order_is_seeded_with_pins_first_and_no_bans():
    a = random_order(50, 20, seed=3, pinned=[7, 8], banned=[1, 2, 3])
    assert a.tolist() == random_order(50, 20, seed=3, pinned=[7, 8], banned=[1, 2, 3]).tolist()
    assert a[:2].tolist() == [7, 8] and len(a) == 20 and len(set(a.tolist())) == 20
    assert not {1, 2, 3} & set(a.tolist())
    full = random_order(50, None, seed=3)
    assert sorted(full.tolist()) == list(range(50))
    assert random_order(50, 10, seed=3).tolist() == full[:10].tolist()
    assert random_order(50, None, seed=4).tolist() != full.tolist()
