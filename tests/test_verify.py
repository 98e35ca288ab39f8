"""Verifying a learned kernel's selection: its predicted covers are scored exactly, with the
engine's own values, kept in the pair store, and recorded; the refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from delift_core.cli import main
from delift_core.data.dataset import load_dataset
from delift_core.errors import KernelError, SelectionError
from delift_core.kernels.builder import compute_kernels
from delift_core.kernels.utility import UtilityKernel
from delift_core.kernels.learned import verification_line
from delift_core.kernels.utility_settings import UtilitySettings
from delift_core.outputs.export import export_selection
from delift_core.selection.cost import cost_line
from delift_core.selection.cover import best_cover
from delift_core.selection.verify import first_round, verify_selection
from conftest import learned_kernels as _learned


def _covers(kernels, role, chosen):
    """Each row's best selected helper other than itself (or its exact duplicate)."""
    from delift_core.kernels.diagonal import self_pairs

    scaled = kernels.scaled(role)
    cover, value = best_cover(scaled, chosen)
    selfs = set(zip(*(a.tolist() for a in self_pairs(role, kernels.meta, scaled.shape))))
    chosen = set(np.asarray(chosen).tolist())
    own = {}
    for a, b in selfs:
        if b in chosen:
            own[a] = max(own.get(a, -np.inf), float(scaled[a, b]))
    rows, cols = [], []
    for a in np.flatnonzero(cover >= 0).tolist():
        b = int(cover[a])
        if (a, b) not in selfs and own.get(a, -np.inf) < value[a]:
            rows.append(a)
            cols.append(b)
    return np.asarray(rows, np.int64), np.asarray(cols, np.int64)


@pytest.mark.parametrize("neighbours", [None, 8])
def test_the_selections_covers_become_exact_with_the_engines_values(pool, tiny_llama, store,
                                                                     neighbours):
    k = _learned(pool, tiny_llama, neighbours=neighbours)
    before_mask, before_values = k.exact["pool"].copy(), k.pool.copy()
    seen = []
    sel = verify_selection(pool, "fl", k, 0.1, rounds=6, lm=tiny_llama,
                           on_round=lambda r, s: seen.append(r))
    v = sel.kernels.meta.learned["pool"]["verification"]
    assert v["rounds_run"] >= 1 and seen[: v["rounds_run"]] == list(range(v["rounds_run"]))
    assert v["pairs_verified"] > 0 and v["passes_computed"] > 0
    # each round's passes, computed and read back, add up to the record's
    assert sum(b["passes_computed"] for b in v["by_round"]) == v["passes_computed"]
    assert sum(b["passes_reused"] for b in v["by_round"]) == v["passes_reused"]
    # the given kernels are not changed
    assert (k.exact["pool"] != before_mask).nnz == 0
    diff = k.pool - before_values
    assert (abs(diff).max() if hasattr(diff, "nnz") else np.abs(diff).max()) == 0
    # every pair marked exact now holds the engine's own value for it
    mask = sel.kernels.exact["pool"].tocoo()
    new = (sel.kernels.exact["pool"] - before_mask).tocoo()
    assert new.nnz == v["pairs_verified"] and set(new.data.tolist()) == {1.0}
    r, c = mask.row, mask.col
    rows = sorted(set(r.tolist()))
    local = {a: i for i, a in enumerate(rows)}
    direct = UtilityKernel(tiny_llama, use_cache=False).compute(
        pool.subset(rows), pool, pairs=(np.array([local[a] for a in r]), c)).values
    want = np.asarray(direct[[local[a] for a in r], c]).ravel()
    got = np.asarray(sel.kernels.pool[r, c]).ravel()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # what it says of the final selection's covers is true
    cr, cc = _covers(sel.kernels, "pool", sel.selected_indices)
    exact = np.asarray(sel.kernels.exact["pool"][cr, cc]).ravel() > 0
    assert v["final_covers"] == len(cr) and v["final_covers_exact"] == int(exact.sum())
    if v["rounds_run"] < 6:  # it stopped early: every cover was exact
        assert exact.all()
    assert sel.params["verify_rounds"] == 6
    # its passes are part of what the selection cost
    cost, kmeta = sel.cost(), sel.kernels.meta["pool"]
    assert cost["verification_passes"] == v["passes_computed"] + v["passes_reused"]
    assert cost["model_passes_computed"] == kmeta["pairs_computed"] + v["passes_computed"]
    assert "the selection verified with" in cost_line(cost)
    # the pairs went to the pair store: the same verification again computes none
    again = verify_selection(pool, "fl", k, 0.1, rounds=6, lm=tiny_llama)
    w = again.kernels.meta.learned["pool"]["verification"]
    assert w["passes_computed"] == 0 and w["pairs_verified"] == v["pairs_verified"]
    assert again.selected_ids == sel.selected_ids


@pytest.mark.parametrize("neighbours", [None, 8])
def test_exploring_scores_the_unselected_columns_of_highest_predicted_gain(pool, tiny_llama,
                                                                          store, neighbours):
    from delift_core.selection.select import select
    from delift_core.selection.verify import EXPLORE_DENSE_ROWS, _explored

    k = _learned(pool, tiny_llama, neighbours=neighbours)
    first = select(pool, "fl", k, 0.1).selected_indices
    share = 0.2
    er, ec, n_cols = _explored(k, "pool", first, share)
    # the share of the columns, none selected, the highest predicted gain first
    scaled = k.scaled("pool")
    dense = np.asarray(scaled.todense() if hasattr(scaled, "todense") else scaled, np.float64)
    held = np.asarray((k.pool != 0).todense() if hasattr(k.pool, "todense")
                      else np.ones(k.pool.shape), bool)
    _, value = best_cover(scaled, first)
    gain = (np.maximum(dense - value[:, None], 0) * held).sum(0)
    gain[first] = -np.inf
    want = set(np.argsort(-gain, kind="stable")[:round(share * len(pool))].tolist())
    assert n_cols == round(share * len(pool)) and set(ec.tolist()) == want
    assert not set(ec.tolist()) & set(first.tolist())
    # a sparse kernel's explored column: every row it holds; a dense one's: the rows it lifts most
    assert all(held[er, ec]) and not (er == ec).any()
    per_col = np.bincount(ec, minlength=len(pool))[list(want)]
    if neighbours is None:
        assert per_col.max() <= EXPLORE_DENSE_ROWS
    else:
        from delift_core.kernels.diagonal import self_pairs

        selfs = set(zip(*(a.tolist() for a in self_pairs("pool", k.meta, held.shape))))
        hr, hc = np.nonzero(held[:, sorted(want)])
        every = {(a, sorted(want)[b]) for a, b in zip(hr.tolist(), hc.tolist())} - selfs
        assert set(zip(er.tolist(), ec.tolist())) == every
    # verifying with exploration scores them exactly, with the engine's values, and says so
    sel = verify_selection(pool, "fl", k, 0.1, rounds=1, explore=share, lm=tiny_llama,
                           use_cache=False)
    v = sel.kernels.meta.learned["pool"]["verification"]
    b = v["by_round"][0]
    assert b["explored_columns"] == n_cols and v["explore"] == share
    # what first_round said beforehand (the Select page shows it) is what round 1 scored
    assert first_round(k, select(pool, "fl", k, 0.1), share) == {
        "covers": b["covers_scored"], "explored_columns": n_cols,
        "explored_pairs": b["explored_pairs_scored"]}
    assert v["covers_verified"] == b["covers_scored"]
    assert v["explored_pairs_verified"] == b["explored_pairs_scored"] > 0
    assert v["pairs_verified"] == v["covers_verified"] + v["explored_pairs_verified"]
    exact = sel.kernels.exact["pool"]
    pending = ~(np.asarray(k.exact["pool"][er, ec]).ravel() > 0)
    assert (np.asarray(exact[er, ec]).ravel() > 0).all()
    assert int(pending.sum()) >= v["explored_pairs_verified"]  # covers among them count once
    r, c = er[pending], ec[pending]
    rows = sorted(set(r.tolist()))
    local = {a: i for i, a in enumerate(rows)}
    direct = UtilityKernel(tiny_llama, use_cache=False).compute(
        pool.subset(rows), pool, pairs=(np.array([local[a] for a in r]), c)).values
    np.testing.assert_allclose(np.asarray(sel.kernels.pool[r, c]).ravel(),
                               np.asarray(direct[[local[a] for a in r], c]).ravel(), atol=1e-6)
    assert sel.params["verify_explore"] == share
    assert "pairs of explored columns" in verification_line(v)
    # without exploration none of those columns' pairs is scored unless it is a cover
    plain = verify_selection(pool, "fl", k, 0.1, rounds=1, lm=tiny_llama, use_cache=False)
    w = plain.kernels.meta.learned["pool"]["verification"]
    assert w["explored_pairs_verified"] == 0 and w["pairs_verified"] == w["covers_verified"]
    assert w["pairs_verified"] < v["pairs_verified"]


def test_a_selection_of_every_row_has_no_cover_to_verify(pool, tiny_llama, store):
    k = _learned(pool, tiny_llama)
    sel = verify_selection(pool, "fl", k, 1.0, rounds=3, lm=tiny_llama)
    v = sel.kernels.meta.learned["pool"]["verification"]
    assert len(sel.selected_indices) == len(pool)
    assert v["rounds_run"] == 0 and v["pairs_verified"] == 0 and v["final_covers"] == 0


def _pending(k, role, pairs):
    return {(a, b) for a, b in pairs if not k.exact[role][a, b]}


def test_a_learned_target_kernel_is_verified_where_the_objective_reads_it(pool, tiny_llama,
                                                                          store):
    """FLMI reads the target kernel only through each pool row's cap eta * max_q s_qi, so its
    verification scores each column's best target row (once the covers of target rows among the
    selected columns were scored instead, pairs FLMI never reads); FLQMI reads the target rows'
    covers and, in its modular term, each selected column's best target row."""
    target = load_dataset("demo:target")
    small = pool.subset(range(120))
    k = _learned(small, tiny_llama, target=target, exact_passes=600)
    scaled = np.asarray(k.scaled("target"))
    caps = {(int(scaled[:, i].argmax()), i) for i in range(scaled.shape[1])}
    sel = verify_selection(small, "flmi", k, 0.2, rounds=1, lm=tiny_llama, target=target)
    t = sel.kernels.meta.learned["target"]["verification"]
    r, c = (sel.kernels.exact["target"] - k.exact["target"]).nonzero()
    assert len(r) == t["pairs_verified"] > 0
    assert set(zip(r.tolist(), c.tolist())) == _pending(k, "target", caps)
    assert t["explored_pairs_verified"] == 0

    from delift_core.selection.select import select

    first = select(small, "flqmi", k, 0.2).selected_indices.tolist()
    cover_r, cover_c = _covers(k, "target", first)
    want = set(zip(cover_r.tolist(), cover_c.tolist())) | {(q, i) for q, i in caps if i in first}
    q = verify_selection(small, "flqmi", k, 0.2, rounds=1, lm=tiny_llama, target=target)
    r, c = (q.kernels.exact["target"] - k.exact["target"]).nonzero()
    assert set(zip(r.tolist(), c.tolist())) == _pending(k, "target", want)
    assert first_round(k, select(small, "flqmi", k, 0.2))["covers"] == len(
        _pending(k, "target", want))


def test_a_learned_existing_kernel_is_verified_at_each_rows_floor(pool, tiny_llama, store):
    """FLCG reads the existing kernel through each pool row's floor nu * max_p s_ip: its
    verification scores each row's best existing row with the engine's own value (the existing
    kernel was never verified, so an FLCG selection called verified stood on predicted floors)."""
    from delift_core.kernels.diagonal import self_pairs
    from delift_core.selection.select import select

    existing = load_dataset("demo:existing")
    small = pool.subset(range(120))
    k = _learned(small, tiny_llama, existing=existing, exact_passes=600)
    assert "existing" in k.meta.learned
    scaled = np.asarray(k.scaled("existing"))
    selfs = set(zip(*(a.tolist() for a in self_pairs("existing", k.meta, scaled.shape))))
    floors = {(i, int(scaled[i].argmax())) for i in range(scaled.shape[0])} - selfs
    want = _pending(k, "existing", floors)
    assert want  # most floors are predicted before
    plan = first_round(k, select(small, "flcg", k, 0.2))
    sel = verify_selection(small, "flcg", k, 0.2, rounds=1, lm=tiny_llama, existing=existing)
    e = sel.kernels.meta.learned["existing"]["verification"]
    new = (sel.kernels.exact["existing"] - k.exact["existing"]).tocoo()
    assert set(zip(new.row.tolist(), new.col.tolist())) == want
    assert e["pairs_verified"] == len(want) and e["explored_pairs_verified"] == 0
    p = sel.kernels.meta.learned["pool"]["verification"]
    assert plan["covers"] == len(want) + p["covers_verified"]
    r, c = new.row, new.col
    rows = sorted(set(r.tolist()))
    local = {a: j for j, a in enumerate(rows)}
    direct = UtilityKernel(tiny_llama, use_cache=False).compute(
        small.subset(rows), existing, pairs=(np.array([local[a] for a in r]), c)).values
    np.testing.assert_allclose(np.asarray(sel.kernels.existing[r, c]).ravel(),
                               np.asarray(direct[[local[a] for a in r], c]).ravel(),
                               rtol=0, atol=1e-6)
    with pytest.raises(SelectionError, match="needs the existing set"):
        verify_selection(small, "flcg", k, 0.2, rounds=1, lm=tiny_llama)
    # floors do not depend on the selection: they serve FLCG at any budget; the pool's covers
    # serve only the selection verified
    from delift_core.selection.verify import serves

    other = select(small, "flcg", sel.kernels, 0.3)
    assert serves(e, other, "existing") and not serves(e, other)
    assert not serves(p, other, "pool") and serves(p, sel, "pool")
    assert not serves(e, select(small, "flcg", sel.kernels.with_diagonal("rowmax"), 0.3,
                                diagonal="rowmax"), "existing")


@pytest.mark.parametrize("neighbours", [None, 8])
def test_a_graph_cut_selection_is_verified_on_every_pair_of_its_columns(pool, tiny_llama, store,
                                                                      neighbours):
    """GC's representation and redundancy terms sum every pair of the selected columns (not
    each row's best one): its verification scores them all (it scored covers only before)."""
    from delift_core.kernels.diagonal import self_pairs
    from delift_core.selection.select import select

    small = pool.subset(range(60))
    k = _learned(small, tiny_llama, neighbours=neighbours, exact_passes=300)
    first = select(small, "gc", k, 0.1).selected_indices
    scaled = k.scaled("pool")
    held = sp.csc_matrix(scaled) if neighbours else sp.csc_matrix(np.ones(scaled.shape))
    selfs = set(zip(*(a.tolist() for a in self_pairs("pool", k.meta, scaled.shape))))
    want = _pending(k, "pool", {(int(i), int(j)) for j in first
                                for i in held[:, j].nonzero()[0]} - selfs)
    assert len(want) > len(first)  # more than one pair a column: not the covers
    sel = verify_selection(small, "gc", k, 0.1, rounds=1, lm=tiny_llama)
    v = sel.kernels.meta.learned["pool"]["verification"]
    new = (sel.kernels.exact["pool"] - k.exact["pool"]).tocoo()
    assert set(zip(new.row.tolist(), new.col.tolist())) == want
    assert v["stands_on"] == ["selected_columns"] and v["pairs_verified"] == len(want)
    assert verification_line(v).startswith(f"{len(want):,} pairs the selection stands on "
                                           "scored exactly in 1 round(s)")
    # after an FL verification of the same kernel, the record names every run's pairs
    fl = verify_selection(small, "fl", k, 0.1, rounds=1, lm=tiny_llama)
    assert " covers scored exactly" in verification_line(
        fl.kernels.meta.learned["pool"]["verification"])
    both = verify_selection(small, "gc", fl.kernels, 0.1, rounds=1, lm=tiny_llama)
    w = both.kernels.meta.learned["pool"]["verification"]
    assert [b["stands_on"] for b in w["by_round"]] == [["covers"], ["selected_columns"]]
    assert "pairs the selection stands on scored exactly" in verification_line(w)
    from delift_core.selection.verify import plan_words

    assert plan_words(k, "gc") == "pairs the selection stands on"
    assert plan_words(k, "fl") == "covers" and plan_words(None, "gc") == "covers"


def test_the_refusals_name_the_problem(pool, tiny_llama, store):
    exact = compute_kernels(pool.subset(range(30)), kind="utility", lm=tiny_llama)
    with pytest.raises(SelectionError, match="only a learned kernel"):
        verify_selection(pool.subset(range(30)), "fl", exact, 0.2, lm=tiny_llama)
    from delift_core.selection.select import select

    assert first_round(exact, select(pool.subset(range(30)), "fl", exact, 0.2), 0.1) == {
        "covers": 0, "explored_columns": 0, "explored_pairs": 0}
    k = _learned(pool, tiny_llama)
    unmarked = type(k)(k.kind, pool=k.pool, meta=k.meta, diagonal=k.diagonal)
    with pytest.raises(SelectionError, match="kernel_pool_exact.npz"):
        verify_selection(pool, "fl", unmarked, 0.1, lm=tiny_llama)
    shuffled = pool.subset([1, 0, *range(2, len(pool))])  # same size, two rows swapped
    with pytest.raises(KernelError, match="2 of 240 rows differ"):
        verify_selection(shuffled, "fl", k, 0.1, lm=tiny_llama)
    with pytest.raises(KernelError, match="max_response_tokens"):
        verify_selection(pool, "fl", k, 0.1, lm=tiny_llama,
                         settings=UtilitySettings(max_response_tokens=7))
    with pytest.raises(Exception, match="verify_rounds"):
        verify_selection(pool, "fl", k, 0.1, rounds=-1, lm=tiny_llama)
    for bad in (-0.1, 1.5):
        with pytest.raises(Exception, match="verify_explore"):
            verify_selection(pool, "fl", k, 0.1, explore=bad, lm=tiny_llama)


@pytest.mark.parametrize("args", [["--kernel", "embedding"], ["--kernel", "utility"]])
def test_the_cli_refuses_verification_without_a_learned_kernel_before_any_model_loads(
        args, tmp_path, capsys, monkeypatch):
    import delift_core.lm.models as models

    monkeypatch.setattr(models, "load_causal_lm", lambda *a, **k: pytest.fail("model loaded"))
    rc = main(["select", "--pool", "demo:pool", *args, "--verify-rounds", "2",
               "--out", str(tmp_path / "o")])
    assert rc != 0
    assert "--verify-rounds verifies a learned kernel" in capsys.readouterr().err


def test_the_cli_refuses_exploring_without_verification_rounds(tmp_path, capsys, monkeypatch):
    import delift_core.lm.models as models

    monkeypatch.setattr(models, "load_causal_lm", lambda *a, **k: pytest.fail("model loaded"))
    rc = main(["select", "--pool", "demo:pool", "--kernel", "utility", "--learned",
               "--verify-explore", "0.1", "--out", str(tmp_path / "o")])
    assert rc != 0 and not (tmp_path / "o").exists()
    assert "--verify-explore explores columns in each verification round" in \
        capsys.readouterr().err


def test_exploring_is_refused_where_no_pair_is_a_cover(pool, tiny_llama, store, tmp_path,
                                                       capsys, monkeypatch):
    """GC's verification scores every pair of its columns, none a cover: exploring would be
    ignored while the record said explore 0.1; it is refused by name instead."""
    import delift_core.lm.models as models

    k = _learned(pool.subset(range(60)), tiny_llama, exact_passes=200)
    with pytest.raises(SelectionError, match="gc's verification scores every pair its value "
                                             "stands on, none of them covers"):
        verify_selection(pool.subset(range(60)), "gc", k, 0.1, explore=0.1, lm=tiny_llama)
    monkeypatch.setattr(models, "load_causal_lm", lambda *a, **k: pytest.fail("model loaded"))
    rc = main(["select", "--pool", "demo:pool", "--kernel", "utility", "--learned",
               "--objective", "gc", "--verify-rounds", "1", "--verify-explore", "0.1",
               "--out", str(tmp_path / "o")])
    assert rc != 0 and not (tmp_path / "o").exists()
    assert "gc's verification scores every pair its value stands on" in capsys.readouterr().err


def test_the_manifest_says_what_was_verified(pool, tiny_llama, store, tmp_path):
    k = _learned(pool, tiny_llama)
    sel = verify_selection(pool, "fl", k, 0.1, rounds=2, lm=tiny_llama)
    export_selection(sel, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    v = manifest["learned_kernel"]["pool"]["verification"]
    assert v == json.loads(json.dumps(sel.kernels.meta.learned["pool"]["verification"]))
    assert manifest["params"]["verify_rounds"] == 2


def test_the_cli_verifies_a_learned_kernel_folders_selection(pool, tiny_llama, store, tmp_path,
                                                             monkeypatch, capsys):
    import delift_core.lm.models as models
    from delift_core.kernels.files import save_kernels

    folder = tmp_path / "learned"
    save_kernels(_learned(pool, tiny_llama), folder)
    monkeypatch.setattr(models, "load_causal_lm", lambda *a, **k: tiny_llama)
    out = tmp_path / "sel"
    rc = main(["select", "--pool", "demo:pool", "--kernel", str(folder), "--objective", "fl",
               "--budget", "0.1", "--verify-rounds", "2", "--out", str(out)])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    v = manifest["learned_kernel"]["pool"]["verification"]
    assert v["rounds"] == 2 and v["pairs_verified"] > 0
    selected = [json.loads(line)["id"] for line in (out / "selected.jsonl").open()]
    assert len(selected) == 24 and manifest["selected"] == 24
    printed = capsys.readouterr().out  # the summary says what was verified, as the page does
    assert f"verified (pool kernel): {verification_line(v)}" in printed


@pytest.mark.parametrize("explore", [0.0, 0.2])
def test_the_audit_counts_verified_covers_as_exact(pool, tiny_llama, store, explore):
    from delift_core.outputs.audit import _learned_note

    k = _learned(pool.subset(range(120)), tiny_llama)
    sel = verify_selection(pool.subset(range(120)), "fl", k, 0.1, rounds=2, explore=explore,
                           lm=tiny_llama)
    m = k.meta.learned["pool"]
    v = sel.kernels.meta.learned["pool"]["verification"]
    total = m["exact_pairs"] + m["predicted_pairs"]
    assert _learned_note(k).startswith(f"{m['predicted_pairs'] / total:.0%} of the values")
    note = _learned_note(sel.kernels)
    assert note.startswith(f"{(m['predicted_pairs'] - v['pairs_verified']) / total:.0%} of the")
    if explore:
        assert v["explored_pairs_verified"] > 0
        assert (f"{v['covers_verified']:,} of a selection's covers and "
                f"{v['explored_pairs_verified']:,} pairs of explored columns verified exactly"
                in note)
    else:
        assert f"{v['pairs_verified']:,} of a selection's covers verified exactly" in note


def test_verification_follows_the_objective_the_diagonal_and_the_bans(pool, tiny_llama, store):
    """Only the learned kernels the objective reads are verified (FLQMI reads the target's
    alone), covers are taken under the selection's own diagonal policy (not the kernel's), banned
    rows are never explored, and a method that selects without a kernel is refused."""
    from delift_core.selection.select import select
    from delift_core.selection.verify import _covers as covers_of, _explored

    target = load_dataset("demo:target")
    small = pool.subset(range(120))
    kt = _learned(small, tiny_llama, target=target, exact_passes=600)
    sel = verify_selection(small, "flqmi", kt, 0.2, rounds=1, lm=tiny_llama, target=target)
    learned = sel.kernels.meta.learned
    assert learned["target"]["verification"]["pairs_verified"] > 0
    assert "verification" not in learned["pool"]  # FLQMI never reads the pool kernel
    assert (sel.kernels.exact["pool"] != kt.exact["pool"]).nnz == 0

    k = _learned(pool, tiny_llama)
    assert k.diagonal != "reference"
    ref = select(pool, "fl", k, 0.1, diagonal="reference")
    want_r, want_c = covers_of(k.with_diagonal("reference"), "pool", ref.selected_indices)
    other_r, _ = covers_of(k, "pool", ref.selected_indices)
    assert len(want_r) != len(other_r)  # the two policies disagree on this selection's covers
    pending = ~(np.asarray(k.exact["pool"][want_r, want_c]).ravel() > 0)
    assert first_round(k, ref, 0.0)["covers"] == int(pending.sum())
    v = verify_selection(pool, "fl", k, 0.1, rounds=1, lm=tiny_llama, diagonal="reference"
                         ).kernels.meta.learned["pool"]["verification"]
    assert v["by_round"][0]["covers_scored"] == int(pending.sum())
    assert v["selection"]["diagonal"] == "reference"

    first = select(pool, "fl", k, 0.1).selected_indices
    _, ec, _ = _explored(k, "pool", first, 0.1)
    ban = sorted(set(ec.tolist()))[:3]  # columns exploring would score first
    banned = [pool.ids[j] for j in ban]
    out = verify_selection(pool, "fl", k, 0.1, rounds=1, explore=0.1, lm=tiny_llama,
                           banned=banned)
    _, cols = (out.kernels.exact["pool"] - k.exact["pool"]).nonzero()
    assert len(cols) and not set(cols.tolist()) & set(ban)
    plan = first_round(k, select(pool, "fl", k, 0.1, banned=banned), 0.1)
    assert plan["explored_columns"] == out.kernels.meta.learned["pool"]["verification"][
        "by_round"][0]["explored_columns"]

    with pytest.raises(SelectionError, match="ifd does not select with a kernel"):
        verify_selection(pool, "ifd", k, 0.1, lm=tiny_llama)


def test_verifying_a_verified_kernel_again_adds_to_its_record(pool, tiny_llama, store):
    """A second verification (another budget) keeps the first one's pairs, passes and rounds in
    the record, as the kernel keeps their exact values: the cost and the audit count them all."""
    k = _learned(pool, tiny_llama)
    one = verify_selection(pool, "fl", k, 0.1, rounds=1, lm=tiny_llama)
    two = verify_selection(pool, "fl", one.kernels, 0.3, rounds=1, lm=tiny_llama)
    v1 = one.kernels.meta.learned["pool"]["verification"]
    v2 = two.kernels.meta.learned["pool"]["verification"]
    assert v1["runs"] == 1 and v2["runs"] == 2
    assert v1["selection"]["budget"] == 24 and v2["selection"]["budget"] == 72
    added = (two.kernels.exact["pool"] - one.kernels.exact["pool"]).nnz
    assert added > 0
    assert v2["pairs_verified"] == v1["pairs_verified"] + added == \
        (two.kernels.exact["pool"] - k.exact["pool"]).nnz
    assert v2["rounds_run"] == v1["rounds_run"] + 1 and len(v2["by_round"]) == v2["rounds_run"]
    assert v2["passes_computed"] + v2["passes_reused"] == sum(
        b["passes_computed"] + b["passes_reused"] for b in v2["by_round"])
    assert two.cost()["verification_passes"] == v2["passes_computed"] + v2["passes_reused"] > \
        v1["passes_computed"] + v1["passes_reused"]
    from delift_core.selection.verify import serves

    assert serves(v2, two) and not serves(v2, one) and serves(v1, one)
    # anything else that decides the rows taken makes it another selection
    from delift_core.selection.select import select

    assert serves(v2, select(pool, "fl", two.kernels, 0.3))
    assert not serves(v2, select(pool, "fl", two.kernels, 0.3, pinned=[pool.ids[5]]))
    assert not serves(v2, select(pool, "fl", two.kernels, 0.3, banned=[pool.ids[5]]))
    assert not serves(v2, select(pool, "fl", two.kernels, 0.3, method="stochastic", seed=3))
    assert not serves(v2, select(pool, "gc", two.kernels, 0.3))
    line = verification_line(v2)
    assert "over 2 verifications" in line and line.endswith("it verified FL at 72 rows")


@pytest.mark.parametrize("policy, want", [("rowmax", {(0, 1), (1, 1), (2, 0)}),
                                          ("max", {(1, 1), (2, 0)})])
def test_a_floor_is_verified_at_its_best_pair_that_is_not_a_self_pair(policy, want):
    """Pool row 0 is existing row 0 (a self pair). Under rowmax the self pair ties the row's
    best other pair: the floor stands on that other pair, which must be verified (the self pair
    was taken as the best and then dropped, so row 0's floor stayed predicted); under max the
    self pair is higher and the floor stands on it: nothing to verify for row 0."""
    from delift_core.kernels.builder import Kernels
    from delift_core.selection.verify import _column_best

    existing = np.array([[0.9, 0.4], [0.2, 0.6], [0.3, 0.1]], np.float32)
    meta = {"pool_hashes": ["a", "b", "c"], "existing_hashes": ["a", "x"]}
    k = Kernels("utility", pool=np.ones((3, 3), np.float32), existing=existing, meta=meta,
                diagonal=policy)
    for kern in (k, Kernels("utility", pool=sp.csr_matrix(np.ones((3, 3), np.float32)),
                            existing=sp.csr_matrix(existing), meta=meta, diagonal=policy)):
        rows, cols = _column_best(kern, "existing", None, by_row=True)
        assert set(zip(rows.tolist(), cols.tolist())) == want
