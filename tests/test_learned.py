"""The learned utility kernel: exact pairs stay exact, held-out pairs are never trained on, the
record says "learned" with its fidelity everywhere, and the refusals."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp

from delift_core.cli import main
from delift_core.data.dataset import load_dataset
from delift_core.errors import SettingError
from delift_core.kernels.builder import compute_kernels, kernel_report
from delift_core.kernels.files import load_kernels, save_kernels
from delift_core.kernels.learned import (FIDELITY_FLOOR, LearnedKernelError, anchor_order,
                                         fidelity, fidelity_line)
from delift_core.kernels.utility import UtilityKernel
from delift_core.kernels.utility_settings import KernelCancelled
from delift_core.outputs.export import export_selection
from delift_core.selection.select import select
from conftest import learned_kernels as _learned


class _RuleEngine:
    """A stand-in utility engine: exact utilities from ``rule(rows, cols)``, no model."""

    def __init__(self, rule):
        self.rule, self.lm = rule, SimpleNamespace(name="fake", dtype="float32")

    def model_record(self):
        return {"model": "fake", "dtype": "float32"}

    def compute(self, targets, examples, *, pairs, cancel=None, progress=None):
        r, c = pairs
        return SimpleNamespace(values=sp.csr_matrix(
            (self.rule(r, c), (r, c)), shape=(len(targets.prompts), len(examples.prompts))),
            meta={"pairs_computed": len(r), "pairs_reused": 0})


def test_exact_values_stay_exact_and_are_marked(pool, tiny_llama, store):
    k = _learned(pool, tiny_llama)
    mask = k.exact["pool"].tocoo()
    assert mask.nnz > 0 and np.all(mask.data == 1)
    r, c = mask.row, mask.col
    # the same pairs computed on their own by the engine: the kernel holds exactly those values
    engine = UtilityKernel(tiny_llama, use_cache=False)
    rows = sorted(set(r.tolist()))
    local = {a: i for i, a in enumerate(rows)}
    direct = engine.compute(pool.subset(rows), pool,
                            pairs=(np.array([local[a] for a in r]), c)).values
    want = np.asarray(direct[[local[a] for a in r], c]).ravel()
    got = np.asarray(k.pool[r, c]).ravel()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # and every other pair of the dense 240-row kernel is predicted (not left out)
    assert k.pool.shape == (240, 240) and np.isfinite(k.pool).all()
    assert k.meta.learned["pool"]["exact_pairs"] == mask.nnz
    assert k.meta.learned["pool"]["predicted_pairs"] == 240 * 240 - mask.nnz


def test_heldout_pairs_are_never_trained_on(pool, tiny_llama, store):
    m = _learned(pool, tiny_llama).meta.learned["pool"]
    held, trained = set(m["heldout_rows_list"]), set(m["train_rows_list"])
    assert held and trained and not (held & trained)
    emb_order = anchor_order(np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32), 0)
    assert sorted(emb_order.tolist()) == list(range(50))  # every row, once
    f = m["fidelity"]
    assert f["heldout_rows"] == len(held) and f["heldout_pairs"] > 0
    assert m["predictor"]["train_pairs"] + f["heldout_pairs"] == m["exact_pairs"]
    assert m["predictor"]["train_rows"] == len(trained)


def test_the_record_says_learned_with_its_figures(pool, tiny_llama, store, tmp_path):
    k = _learned(pool, tiny_llama)
    line = [x for x in kernel_report(k) if "LEARNED" in x]
    assert line and "held-out fidelity" in line[0] and "exact pairs" in line[0]
    assert k.meta.settings["learned"] is True and k.meta.settings["exact_passes"] == 400
    paths = save_kernels(k, tmp_path / "k")
    saved = json.loads(paths["meta"].read_text())
    assert saved["pool"]["learned"] is True and "pair_spearman" in saved["pool"]["fidelity"]
    back = load_kernels(tmp_path / "k", pool)
    assert back.meta.learned["pool"]["fidelity"] == k.meta.learned["pool"]["fidelity"]
    assert (back.exact["pool"] != k.exact["pool"]).nnz == 0
    sel = select(pool, "fl", back, 0.1)
    export_selection(sel, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    got = manifest["learned_kernel"]["pool"]
    assert got["exact_pairs"] == k.meta.learned["pool"]["exact_pairs"]
    assert "row_spearman_median" in got["fidelity"] and "below_floor" in got["fidelity"]
    assert got["stopped"] == "budget" and got["budget"]["exact_passes"] == 400
    # the model that made its exact values, as for an exact kernel (once null for a learned one)
    assert manifest["model_fingerprint"] == tiny_llama.fingerprint
    assert manifest["templates"]["plain"] and manifest["templates"]["example"]


def test_a_target_kernel_from_another_file_is_not_labelled_with_the_folders_record(
        pool, tiny_llama, store, tmp_path):
    """--target-kernel FILE with a learned kernel folder: the folder's learned record and exact
    mask describe its own target kernel, not the file's; they once went with the file's matrix."""
    target = load_dataset("demo:target")
    small = pool.subset(range(120))
    k = _learned(small, tiny_llama, target=target, exact_passes=600)
    save_kernels(k, tmp_path / "k")
    other = tmp_path / "other_target.npy"
    np.save(other, np.full((len(target), len(small)), 0.5, np.float32))
    back = load_kernels(tmp_path / "k", small, target=target, target_kernel=other)
    assert "target" not in back.exact and "target" not in back.meta.learned
    assert "pool" in back.exact and "pool" in back.meta.learned
    same = load_kernels(tmp_path / "k", small, target=target)
    assert "target" in same.exact and "target" in same.meta.learned


def test_exact_pairs_come_from_and_go_to_the_pair_store(pool, tiny_llama, store):
    first = _learned(pool, tiny_llama).meta.learned["pool"]
    again = _learned(pool, tiny_llama).meta.learned["pool"]
    assert first["passes_computed"] > 0
    assert again["passes_computed"] == 0 and again["passes_reused"] > 0  # the same anchors
    assert again["exact_pairs"] == first["exact_pairs"]
    # a larger budget scores more rows, the first ones for free
    more = _learned(pool, tiny_llama, exact_passes=800).meta.learned["pool"]
    assert more["exact_rows"] > first["exact_rows"] and more["passes_reused"] >= \
        first["passes_computed"]


def test_cancel_keeps_the_exact_pairs_and_fits_from_what_is_there(pool, tiny_llama, store):
    cancel = threading.Event()
    seen = []

    def progress(label, done, total):
        seen.append(label)
        if label.endswith("exact pairs") and done >= 500:
            cancel.set()  # stop scoring after the first chunks

    k = _learned(pool, tiny_llama, exact_passes=2000, cancel=cancel, progress=progress)
    m = k.meta.learned["pool"]
    assert m["stopped"] == "cancelled" and 300 <= m["passes_computed"] < 2000 and m["exact_rows"] >= 32
    # a kernel a cancel stopped early says so wherever its line shows (CLI, Kernel page)
    assert f"STOPPED EARLY (cancelled): fitted from the {m['passes_computed']:,} passes " \
        "finished of its 2,000" in fidelity_line("pool", m)
    assert "STOPPED EARLY" not in fidelity_line("pool", {**m, "stopped": "budget"})
    cancel2 = threading.Event()
    cancel2.set()  # cancelled before the first pair: nothing to fit from
    with pytest.raises(KernelCancelled):
        _learned(pool.subset(range(100, 240)), tiny_llama, exact_passes=2000, cancel=cancel2)
    # what the cancelled run scored is reused by the next
    again = _learned(pool, tiny_llama, exact_passes=2000).meta.learned["pool"]
    assert again["passes_reused"] >= m["passes_computed"]


def test_too_few_exact_pairs_is_a_named_refusal(pool, tiny_llama, store):
    with pytest.raises(LearnedKernelError, match=r"raise --exact-passes or --exact-minutes"):
        _learned(pool, tiny_llama, exact_passes=30)


def test_a_set_too_small_to_hold_rows_out_is_refused_before_any_pass(pool, tiny_llama, store):
    """No budget can fit a learned kernel over fewer than 10 rows: the refusal says so and names
    the set before the first pass (it once asked for a larger budget after the pool kernel's
    passes, and a 1-row pool ended in a traceback)."""
    seen = []
    with pytest.raises(LearnedKernelError, match=r"utility target: 9 rows; .* use the exact"):
        _learned(pool.subset(range(60)), tiny_llama, target=load_dataset("demo:target").subset(
            range(9)), exact_passes=600, progress=lambda *a: seen.append(a))
    assert seen == []
    with pytest.raises(LearnedKernelError, match=r"utility pool: 1 row; "):
        _learned(pool.subset([0]), tiny_llama)

def test_the_cli_refuses_a_learned_kernel_of_too_few_rows_before_any_model_loads(
        tmp_path, capsys, monkeypatch):
    import delift_core.kernels.request as request

    monkeypatch.setattr(request, "load_models", lambda *a, **k: pytest.fail("a model loaded"))
    assert main(["kernel", "--pool", "demo:pool", "--limit", "5", "--learned", "--out",
                 str(tmp_path / "k")]) == 2
    assert "utility pool: 5 rows; a learned kernel needs at least 10" in capsys.readouterr().err


def test_the_exact_budget_is_the_whole_runs_not_each_kernels(pool, tiny_llama, store):
    """--exact-passes N is N passes in all: the pool and existing (or target) kernels share it
    as the work estimate does; each kernel once spent all of it."""
    from delift_core.kernels.estimates import estimate_work
    from delift_core.kernels.learned import budget_shares

    small, existing = pool.subset(range(120)), load_dataset("demo:existing").subset(range(30))
    k = _learned(small, tiny_llama, existing=existing, exact_passes=600)
    spent = {r: m["passes_computed"] + m["passes_reused"] for r, m in k.meta.learned.items()}
    shares = budget_shares(600, {"pool": 120, "existing": 120})
    assert sum(spent.values()) <= 600 and all(spent[r] <= shares[r] for r in spent)
    assert all(m["budget"]["exact_passes"] == shares[r] and
               m["budget"]["whole_run"]["exact_passes"] == 600
               for r, m in k.meta.learned.items())
    est = {label: units for label, units, _ in estimate_work(
        small, existing=existing, exact_passes=600).stages if label.endswith("exact pairs")}
    assert est == {f"utility {r}: exact pairs": shares[r] for r in ("pool", "existing")}
    assert sum(budget_shares(1001, {"a": 240, "b": 40, "c": 240}).values()) == 1001


def test_a_learned_kernel_takes_the_random_columns_it_is_given(pool, tiny_llama, monkeypatch):
    """--neighbour-random reaches a learned kernel without --neighbours (it once kept 4)."""
    import delift_core.kernels.builder as builder

    got = {}

    def capture(*a, **kw):
        got.update(kw)
        raise LearnedKernelError("captured")

    monkeypatch.setattr(builder, "build_learned", capture)
    with pytest.raises(LearnedKernelError, match="captured"):
        _learned(pool, tiny_llama, neighbour_random=0)
    assert got["neighbour_random"] == 0 and got["neighbours"] is None


def test_copies_of_a_row_are_never_split_between_training_and_held_out():
    """The pair store values rows by content, so a copy of a training row held out would
    measure the predictor on what it was trained on; and a row's copy is its self pair, never
    an exact example of it."""
    from delift_core.kernels.learned import LearnedSpec, build_learned

    base = load_dataset("demo:pool").subset(range(60))
    idx = list(range(60)) + list(range(60))  # every row twice
    rows = SimpleNamespace(prompts=[base.prompts[i] for i in idx],
                           responses=[base.responses[i] for i in idx],
                           subset=lambda ix: SimpleNamespace(prompts=[0] * len(list(ix))))
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(60, 16)).astype(np.float32)
    emb = np.concatenate([emb, emb + 1e-3 * rng.normal(size=emb.shape).astype(np.float32)])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)

    rule = lambda r, c: (0.01 * ((c % 60) % 7) + 0.001 * (r % 5)).astype(np.float32)  # noqa: E731
    _, mask, meta = build_learned(_RuleEngine(rule), rows, rows, emb, emb,
                                  learned=LearnedSpec(exact_passes=1040, seed=1), neighbours=8,
                                  neighbour_random=2, same_set=True, label="utility pool")
    held = {i % 60 for i in meta["heldout_rows_list"]}
    trained = {i % 60 for i in meta["train_rows_list"]}
    assert held and trained and not held & trained
    m = mask.tocoo()
    assert m.nnz and not np.any(m.row % 60 == m.col % 60)


@pytest.mark.parametrize("args, message", [
    (["--kernel", "embedding", "--learned"], "--learned needs the utility kernel"),
    (["--exact-passes", "100"], "--exact-passes and --exact-minutes need --learned"),
    (["--learned", "--exact-passes", "100", "--exact-minutes", "2"], "not both"),
    (["--learned", "--exact-passes", "0"], r"exact_passes \(--exact-passes\): must be at least 1"),
])
def test_the_cli_refuses_bad_learned_options_before_any_model_loads(args, message, tmp_path,
                                                                     capsys, monkeypatch):
    import delift_core.kernels.request as request

    monkeypatch.setattr(request, "load_models", lambda *a, **k: pytest.fail("a model loaded"))
    assert main(["kernel", "--pool", "demo:pool", *args, "--out", str(tmp_path / "k")]) == 2
    assert message.replace("\\", "") in capsys.readouterr().err or \
        __import__("re").search(message, capsys.readouterr().err)


def test_fidelity_figures_by_hand():
    rows = np.repeat(np.arange(4), 5)
    exact = np.tile(np.arange(5, dtype=float), 4) + rows
    perfect = fidelity(exact, exact * 2 + 1, rows, baseline=-exact)
    assert perfect["pair_spearman"] == 1.0 and perfect["row_spearman_median"] == 1.0
    assert perfect["top_k_recovered"] == 1.0 and perfect["cosine_row_spearman_median"] == -1.0
    assert not perfect["below_floor"]
    reversed_ = fidelity(exact, -exact, rows)
    assert reversed_["row_spearman_median"] == -1.0 and reversed_["below_floor"]
    assert reversed_["top_k_recovered"] == round(1 / 3, 4)  # of 5, the middle one is in both top 3s
    assert FIDELITY_FLOOR["row_spearman_median"] > 0


def test_fidelity_medians_carry_intervals_over_the_heldout_rows():
    rng = np.random.default_rng(0)
    rows = np.repeat(np.arange(60), 8)
    exact = rng.normal(size=len(rows))
    f = fidelity(exact, exact + rng.normal(size=len(rows)), rows, baseline=rng.normal(size=len(rows)))
    lo, hi = f["row_spearman_interval"]
    assert lo < f["row_spearman_median"] < hi and hi - lo < 0.4
    clo, chi = f["cosine_row_spearman_interval"]
    assert clo < f["cosine_row_spearman_median"] < chi
    dlo, dhi = f["row_spearman_minus_cosine_interval"]  # a real signal against noise: above 0
    assert 0 < dlo < f["row_spearman_median"] - f["cosine_row_spearman_median"] < dhi
    few = fidelity(exact[:48], exact[:48] + rng.normal(size=48), rows[:48])
    assert few["row_spearman_interval"][1] - few["row_spearman_interval"][0] > hi - lo
    assert "cosine_row_spearman_interval" not in few  # no baseline, no baseline interval
    line = fidelity_line("pool", {"fidelity": f})
    assert f"{f['row_spearman_median']} [{lo:.3f}, {hi:.3f}]" in line
    assert f"learned minus cosine [{dlo:+.3f}, {dhi:+.3f}]" in line and "95 %" in line
    low = fidelity(exact, -exact, rows)  # surely below the floor: the message says so
    assert "its whole interval below it" in fidelity_line("pool", {"fidelity": low})
    assert "more exact passes" in fidelity_line("pool", {"fidelity": low})
    old = {k: v for k, v in f.items() if "interval" not in k}  # a kernel from before intervals
    assert "[" not in fidelity_line("pool", {"fidelity": old})
    assert "minus cosine" not in fidelity_line("pool", {"fidelity": old})


def test_the_engine_refuses_learned_settings_that_cannot_run(pool):
    with pytest.raises(SettingError, match="needs the utility kernel"):
        compute_kernels(pool, kind="embedding", learned=True)
    with pytest.raises(SettingError, match="need --learned"):
        compute_kernels(pool, kind="embedding", exact_passes=10)


def test_the_audit_says_which_findings_stand_on_predicted_values(pool, tiny_llama, store):
    from delift_core.outputs.audit import audit

    k = _learned(pool, tiny_llama)
    a = audit(pool, k)
    assert "values are predicted" in a.meta["learned_kernel"]
    lo, hi = k.meta.learned["pool"]["fidelity"]["row_spearman_interval"]
    assert f"[{lo:.3f}, {hi:.3f}]" in a.meta["learned_kernel"]  # the median's interval too
    utility = [f for f in a.findings.values() if f.available and "ON A LEARNED KERNEL" in f.rule]
    assert utility, [f.rule for f in a.findings.values()]
    known = a.findings["already_known"]  # no plain distance of every row: said, not misnamed
    assert not known.available and "anchor rows only" in known.reason


@pytest.mark.parametrize("direction", ["helps-target", "reference"])
def test_every_stage_gets_a_learned_kernel(pool, tiny_llama, store, direction):
    """Target and existing kernels are learned too, in either target direction."""
    target = load_dataset("demo:target")
    small = pool.subset(range(120))
    k = _learned(small, tiny_llama, target=target, exact_passes=600,
                 target_direction=direction)
    assert k.target.shape == (40, 120) and k.exact["target"].shape == (40, 120)
    assert set(k.meta.learned) == {"pool", "target"}
    r, c = k.exact["target"].nonzero()
    assert len(r) and np.isfinite(np.asarray(k.target[r, c])).all()
    existing = load_dataset("demo:existing").subset(range(30))
    k2 = _learned(small, tiny_llama, existing=existing, exact_passes=600)
    assert k2.existing.shape == (120, 30) and set(k2.meta.learned) == {"pool", "existing"}


def test_a_sparse_learned_reference_target_kernel_holds_the_exact_kernels_pairs(
        pool, tiny_llama, store):
    """A sparse target kernel values the same (q, i) pairs in either direction (each target
    row's nearest pool rows); the learned one in the reference direction once took each pool
    row's nearest target rows instead."""
    target = load_dataset("demo:target")
    small = pool.subset(range(120))
    emb = compute_kernels(small, target=target, kind="embedding", neighbours=4,
                          neighbour_random=1)
    want = emb.target.tocoo()
    k = _learned(small, tiny_llama, target=target, exact_passes=600, neighbours=4,
                 neighbour_random=1, target_direction="reference")
    got = sp.csr_matrix(k.target)
    held = got[want.row, want.col]
    assert k.target.shape == emb.target.shape and held.size == want.nnz
    have = sp.csr_matrix((np.ones(got.nnz), got.indices, got.indptr), shape=got.shape)
    assert np.asarray(have[want.row, want.col]).ravel().all()


def test_importing_the_engine_bounds_onednn_primitive_cache_unless_the_user_set_it():
    """oneDNN's default cache (1,024 primitives) kept 0.36 to 0.45 GiB more at the peak of exact
    passes for no speed (benchmarks/README.md); the engine sets 128 before any primitive is made,
    and a capacity the user chose is left as it is."""
    import os
    import subprocess
    import sys

    code = ("import os, delift_core; print(os.environ.get('ONEDNN_PRIMITIVE_CACHE_CAPACITY'), "
            "os.environ.get('DNNL_PRIMITIVE_CACHE_CAPACITY'))")
    env = {k: v for k, v in os.environ.items()
           if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY")}
    run = lambda extra: subprocess.run([sys.executable, "-c", code], env={**env, **extra},  # noqa: E731
                                       capture_output=True, text=True, check=True).stdout.split()
    assert run({}) == ["128", "None"]
    assert run({"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "7"}) == ["7", "None"]
    assert run({"DNNL_PRIMITIVE_CACHE_CAPACITY": "9"}) == ["None", "9"]


def test_an_exact_value_of_zero_is_kept_where_the_mask_says_exact():
    """Exact values replace predictions without sparse arithmetic, which drops entries that come
    out exactly 0: an exact utility of 0.0 once vanished from a sparse learned kernel while its
    mask still called the pair exact (read as absent, not as 0). Sparse only: a dense kernel's
    absent entry is 0 anyway."""
    from delift_core.kernels.learned import LearnedSpec, build_learned

    rows = load_dataset("demo:pool").subset(range(120))
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(rows), 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)

    def rule(r, c):  # every third pair exactly 0
        return np.where((r + c) % 3 == 0, 0.0, 0.05 + 0.01 * (c % 7)).astype(np.float32)

    values, mask, meta = build_learned(_RuleEngine(rule), rows, rows, emb, emb,
                                       learned=LearnedSpec(exact_passes=520, seed=1),
                                       neighbours=8, neighbour_random=2, same_set=True,
                                       label="utility pool")
    m = mask.tocoo()
    assert m.nnz == meta["exact_pairs"] > 0
    v = sp.csr_matrix(values)
    got = np.asarray(v[m.row, m.col]).ravel()
    zeros = got == 0
    assert zeros.any()  # some exact pairs are exactly 0 ...
    held = sp.csr_matrix((np.ones(len(m.row)), (m.row, m.col)), shape=v.shape)
    stored = v.copy()  # ... and each is a stored entry of the sparse kernel
    stored.data[:] = 1.0
    assert (held - held.multiply(stored)).nnz == 0
