"""Rules that moved out of the studio into delift_core: delift_core.selection.plan (stage objectives,
methods, the first-N cut and which sets a kernel job computes, the objectives kernels can serve),
delift_core.outputs.views.decision_status (each row's decision on the map) and Selection.subset (the
current selection as an evaluation subset)."""

from __future__ import annotations

import numpy as np
import pytest

from delift_core.kernels.builder import Kernels
from delift_core.data.dataset import load_dataset
from delift_core.selection.select import select
from delift_core.selection import plan
from delift_core.selection import objectives as registry
from delift_core.outputs.views import DECISION_STATUSES, decision_status


@pytest.fixture(scope="module")
def sets():
    return {role: load_dataset(f"demo:{role}") for role in ("pool", "target", "existing")}


# ----------------------------------------------------------------------------------------------
# Stages and methods


def test_stages_and_their_objectives_come_from_the_registry() -> None:
    assert plan.stages() == [s for s in registry.STAGES if registry.stage_objectives(s)]
    assert {"instruction", "task", "continual"} <= set(plan.stages())
    assert plan.stage_objective("instruction") == "fl"
    assert plan.stage_objective("task") == "flmi"
    assert plan.stage_objective("task", "flqmi") == "flqmi"
    assert plan.stage_objective("task", "flcg") == "flmi"  # not the stage's: its first
    assert plan.stage_objective("continual", None) == "flcg"
    with pytest.raises(KeyError):
        plan.stage_objective("no such stage")
    assert plan.stage_needs("instruction") == ()
    assert plan.stage_needs("task") == ("target",)
    assert plan.stage_needs("continual") == ("existing",)


def test_methods_map_to_engine_kernels_and_the_baseline() -> None:
    assert plan.baseline_objective() == "random"
    assert plan.method_objective("random", "flmi") == "random"
    assert plan.method_objective("embedding", "flmi") == "flmi"
    assert plan.method_objective("utility", "fl") == "fl"
    assert [plan.engine_kind(m) for m in plan.METHODS] == ["utility", "embedding", "embedding"]
    with pytest.raises(ValueError):
        plan.engine_kind("bogus")


def test_default_limit_is_24_rows_only_for_the_utility_kernel_on_cpu() -> None:
    assert plan.default_limit(240, "utility", on_cpu=True) == 24
    assert plan.default_limit(10, "utility", on_cpu=True) == 10
    assert plan.default_limit(240, "utility", on_cpu=False) == 240
    assert plan.default_limit(240, "embedding", on_cpu=True) == 240
    assert plan.default_limit(240, "random", on_cpu=True) == 240


# ----------------------------------------------------------------------------------------------
# Kernel inputs: the first-N cut and the extra sets


def test_kernel_inputs_utility_computes_only_the_sets_the_stage_needs(sets) -> None:
    pool, target, existing = sets["pool"], sets["target"], sets["existing"]
    extra = {"target": target, "existing": existing}
    got = plan.kernel_inputs(pool, "instruction", "utility", 24, **extra)
    assert got.pool.ids == pool.ids[:24] and got.target is None and got.existing is None
    got = plan.kernel_inputs(pool, "task", "utility", 24, **extra)
    assert len(got.pool) == 24 and got.target is target and got.existing is None
    got = plan.kernel_inputs(pool, "continual", "utility", 24, **extra)
    assert got.target is None and got.existing is existing
    # a needed set that is not loaded stays None (the page refuses to start)
    assert plan.kernel_inputs(pool, "task", "utility", 5).target is None


@pytest.mark.parametrize("method", ["embedding", "random"])
def test_kernel_inputs_embedding_computes_every_loaded_set(sets, method) -> None:
    pool, target, existing = sets["pool"], sets["target"], sets["existing"]
    got = plan.kernel_inputs(pool, "instruction", method, 240, target=target, existing=existing)
    assert got.pool is pool  # N >= the pool: the pool itself, not a copy
    assert got.target is target and got.existing is existing
    got = plan.kernel_inputs(pool, "continual", method, 500, existing=existing)
    assert got.pool is pool and got.target is None and got.existing is existing
    got = plan.kernel_inputs(pool, "task", method, 3, target=target)
    assert got.pool.ids == pool.ids[:3] and got.pool.prompts == pool.prompts[:3]
    with pytest.raises(ValueError):
        plan.kernel_inputs(pool, "task", method, 0)


def test_available_objectives_follow_the_computed_kernels() -> None:
    k = np.eye(4, dtype=np.float32)
    assert plan.available_objectives(None) == []
    pool_only = plan.available_objectives(Kernels("embedding", pool=k))
    assert pool_only[-1] == "random" and "fl" in pool_only
    assert not {"flmi", "flqmi", "flcg"} & set(pool_only)
    with_target = plan.available_objectives(Kernels("embedding", pool=k, target=k[:2]))
    assert {"fl", "flmi", "flqmi"} <= set(with_target) and "flcg" not in with_target
    everything = plan.available_objectives(Kernels("embedding", pool=k, target=k[:2],
                                                   existing=k[:, :3]))
    # every registered objective that needs no per-row scores, in registry order, the baseline
    # last; with IFD scores, the methods that rank or filter by them too
    assert everything == [n for n, s in registry.OBJECTIVES.items()
                          if not s.baseline and s.scores is None] + ["random"]
    from types import SimpleNamespace

    with_ifd = plan.available_objectives(Kernels("embedding", pool=k), SimpleNamespace(kind="ifd"))
    assert {"ifd", "ifd-fl"} <= set(with_ifd) and "longest" not in with_ifd


# ----------------------------------------------------------------------------------------------
# Decisions on the map, and the selection as an evaluation subset


def _selection(pinned=(), banned=(), budget=3):
    pool = load_dataset("demo:pool").subset(range(8))
    rng = np.random.default_rng(3)
    k = rng.uniform(0, 1, (8, 8)).astype(np.float32)
    np.fill_diagonal(k, 1.0)
    return select(pool, "fl", Kernels("embedding", pool=k), budget, pinned=list(pinned),
                  banned=list(banned))


def test_decision_status_of_every_pool_row() -> None:
    free = _selection()
    ids = free.pool.ids
    chosen = set(free.selected_ids)
    assert decision_status(free) == ["selected" if i in chosen else "rejected" for i in ids]
    outside = next(i for i in ids if i not in chosen)
    ban = free.selected_ids[0]
    sel = _selection(pinned=[outside], banned=[ban])
    status = dict(zip(ids, decision_status(sel)))
    assert status[outside] == "pinned" and status[ban] == "banned"
    assert [i for i in ids if status[i] in ("pinned", "selected")] == \
        [i for i in ids if i in set(sel.selected_ids)]
    assert sum(v in ("pinned", "selected") for v in status.values()) == sel.budget == 3
    assert set(status.values()) <= set(DECISION_STATUSES)


def test_selection_subset_for_evaluation() -> None:
    sel = _selection(budget=4)
    sub = sel.subset()
    assert sub.name == "selection (fl)" and sub.kind == "subset"
    assert sub.data.ids == sel.selected_ids and sub.size == 4
    assert sub.data.responses == [sel.pool.responses[k] for k in sel.selected_indices]
    assert sub.seed == 0 and sub.info == {"objective": "fl", "cost": sel.cost()}
    assert sel.at_budget(2).subset("mine").data.ids == sel.selected_ids[:2]
    assert sel.at_budget(2).subset("mine").name == "mine"
