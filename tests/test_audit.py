"""The audit: hand-built kernels with known values and a fixture of deliberately bad rows (a wrong
answer, a duplicate, a garbled response) must be flagged by the right findings; sparse kernels give
the same answers over their stored pairs; findings an embedding kernel cannot make say so; the
CLI writes audit.json and audit.csv with the thresholds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from delift_core.data.dataset import load_dataset
from delift_core.selection.select import select
from delift_core.outputs.audit import FINDINGS, AuditError, AuditSettings, audit
from delift_core.cli import main
from delift_core.data.dataset import Dataset
from delift_core.kernels.builder import Kernels, row_hashes

ROWS = [  # (id, prompt, response)
    ("easy", "What is 2 + 2?", "4"),
    ("cap-fr", "What is the capital of France?", "Paris"),
    ("cap-fr-dup", "What is the capital of France?", "Paris."),
    ("odd", "Name a colour that rhymes with orange.", "None does; 'orange' has no perfect rhyme."),
    ("wrong", "What is 3 + 5?", "11"),
    ("garbled", "Summarise: the cat sat on the mat.", "xq#9 zz!! mat@@ kk"),
]
IDS = [r[0] for r in ROWS]


def fixture_pool(rows=ROWS) -> Dataset:
    return Dataset(rows=[{"id": i, "prompt": p, "response": r} for i, p, r in rows],
                   ids=[r[0] for r in rows], prompts=[r[1] for r in rows],
                   responses=[r[2] for r in rows], layout="prompt/response", source="fixture",
                   source_format="jsonl")


def bad_rows_kernel() -> np.ndarray:
    """Raw utilities U[i, j] (row i helped by example j) with the bad rows' signatures built in:
    'wrong' hurts everyone (negative column), 'garbled' helps only itself (big diagonal, ~0
    column), 'odd' is helped by no one (row <= 0 off the diagonal)."""
    u = np.array([
        #  easy  cap  dup   odd  wrong garbled
        [0.02, 0.01, 0.01, 0.03, -0.05, 0.00],   # easy
        [0.05, 0.30, 0.28, 0.04, -0.06, -0.01],  # cap-fr
        [0.05, 0.27, 0.30, 0.03, -0.04, 0.01],   # cap-fr-dup
        [-0.01, -0.02, -0.02, 0.25, -0.10, 0.00],  # odd
        [0.06, 0.05, 0.04, 0.02, 0.35, -0.02],   # wrong
        [0.03, 0.04, 0.04, 0.03, -0.08, 0.60],   # garbled
    ], np.float32)
    return u


D_PLAIN = [0.05, 0.40, 0.41, 0.55, 0.62, 0.80]


def utility_kernels(u: np.ndarray | sp.csr_matrix, ds: Dataset) -> Kernels:
    return Kernels("utility", pool=u, meta={"kind": "utility", "pool_ids": ds.ids,
                                            "pool_hashes": row_hashes(ds),
                                            "pool": {"d_plain": D_PLAIN}})


def embeddings() -> np.ndarray:
    """Unit vectors: the two capital rows almost the same (cosine ~0.995), the rest apart."""
    e = np.eye(6, dtype=np.float32)
    e[2] = e[1] * 0.995 + e[2] * 0.0999
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_bad_rows_are_flagged_by_the_right_findings() -> None:
    ds = fixture_pool()
    a = audit(ds, utility_kernels(bad_rows_kernel(), ds), embeddings=embeddings())
    f = a.findings
    assert list(f) == list(FINDINGS)
    assert f["already_known"].ids == ["easy"]               # d_plain 0.05 <= 0.25
    assert f["hurts_others"].ids == ["wrong", "garbled"]    # column means -0.066 and -0.004
    assert f["helped_by_no_one"].ids == ["odd"]             # its row's max off the diagonal is 0
    # 0.60 on itself, -0.004 for others ('wrong' copies itself too but hurts: -0.066 is more than
    # a tenth of its 0.35 below zero, so it is only 'hurts others')
    assert f["copies_itself"].ids == ["garbled"]
    assert f["near_duplicates"].ids == ["cap-fr", "cap-fr-dup"]
    assert f["near_duplicates"].groups[0]["ids"] == ["cap-fr", "cap-fr-dup"]
    assert not f["coverage"].available and f["coverage"].reason == "no selection was given"
    row = a.rows.set_index("id")
    assert row.loc["wrong", "mean_utility_to_others"] == pytest.approx(
        np.mean([-0.05, -0.06, -0.04, -0.10, -0.08]), abs=1e-6)
    assert row.loc["odd", "max_utility_received"] == pytest.approx(0.0, abs=1e-7)
    assert row.loc["garbled", "self_utility"] == pytest.approx(0.60)
    assert row.loc["wrong", "scored_against"] == 5
    assert set(row.loc["garbled", "flags"]) == {"hurts_others", "copies_itself"}
    assert row.loc["cap-fr", "duplicate_group"] == row.loc["cap-fr-dup", "duplicate_group"] == 0


def test_sparse_kernel_gives_the_same_answers_over_its_stored_pairs() -> None:
    ds = fixture_pool()
    dense = bad_rows_kernel()
    a_dense = audit(ds, utility_kernels(dense, ds), embeddings=embeddings())
    a_sparse = audit(ds, utility_kernels(sp.csr_matrix(dense), ds), embeddings=embeddings())
    # csr_matrix drops the zeros: the sparse kernel has fewer stored pairs, so means differ
    # where a zero was left out, but not enough to change a flag; 'odd' keeps its negative
    # entries (max of those stored, -0.01 <= 0)
    for key in ("already_known", "hurts_others", "helped_by_no_one", "copies_itself"):
        assert a_sparse.findings[key].ids == a_dense.findings[key].ids, key
    assert "stored pairs" in a_sparse.findings["hurts_others"].rule
    row = a_sparse.rows.set_index("id")
    # 'garbled' column: stored off-diagonal entries -0.01, 0.01, -0.02 (the zeros are not stored)
    assert row.loc["garbled", "scored_against"] == 3
    assert row.loc["garbled", "mean_utility_to_others"] == pytest.approx(-0.02 / 3, abs=1e-6)
    # a sparse row with only its diagonal stored cannot be judged helped-by-no-one
    only_diag = sp.csr_matrix(np.diag(np.diag(dense)))
    a = audit(ds, utility_kernels(only_diag, ds))
    assert a.findings["helped_by_no_one"].ids == []
    assert a.rows["max_utility_received"].isna().all()


def test_thresholds_are_parameters_recorded_in_the_output() -> None:
    ds = fixture_pool()
    k = utility_kernels(bad_rows_kernel(), ds)
    strict = audit(ds, k, embeddings=embeddings(),
                   settings=AuditSettings(known_max_distance=0.45, hurts_max_mean=-0.05,
                                          duplicate_min_cosine=0.999))
    assert strict.findings["already_known"].ids == ["easy", "cap-fr", "cap-fr-dup"]
    assert strict.findings["hurts_others"].ids == ["wrong"]
    assert strict.findings["near_duplicates"].ids == []
    js = strict.to_json()
    assert js["settings"]["known_max_distance"] == 0.45
    assert js["settings"]["duplicate_min_cosine"] == 0.999
    assert js["findings"]["hurts_others"]["rule"].startswith("mean raw utility to the other rows "
                                                             "<= -0.05")
    with pytest.raises(AuditError, match="coverage_fraction"):
        audit(ds, k, settings=AuditSettings(coverage_fraction=2.0))


def test_embedding_kernel_says_which_findings_need_the_utility_kernel() -> None:
    ds = fixture_pool()
    e = embeddings()
    k = Kernels("embedding", pool=((e @ e.T + 1) / 2).astype(np.float32))
    sel = select(ds, "fl", k, 2)
    a = audit(ds, k, selection=sel, clusters=[0, 1, 1, 2, 3, 4])
    for key in ("already_known", "hurts_others", "helped_by_no_one", "copies_itself"):
        assert not a.findings[key].available
        assert "utility kernel" in a.findings[key].reason
    dup = a.findings["near_duplicates"]
    assert dup.available and dup.ids == ["cap-fr", "cap-fr-dup"]
    assert "embedding kernel" in dup.rule
    kept = dup.groups[0]["kept"]
    assert len(kept) <= 1 and set(kept) <= {"cap-fr", "cap-fr-dup"}  # FL keeps at most one
    cov = a.findings["coverage"]
    assert cov.available and cov.count == 1  # 10% of 6 rows rounds to 1
    worst = a.rows.set_index("id")["cover_value"]
    assert worst[cov.ids[0]] == pytest.approx(worst.min())
    assert {g["cluster"] for g in cov.groups} == {0, 1, 2, 3, 4}
    assert sum(g["worst_covered"] for g in cov.groups) == 1


def test_mismatched_inputs_are_refused() -> None:
    ds = fixture_pool()
    with pytest.raises(AuditError, match="shape"):
        audit(ds, Kernels("utility", pool=np.zeros((3, 3), np.float32)))
    with pytest.raises(AuditError, match="embeddings"):
        audit(ds, None, embeddings=np.zeros((2, 4)))


def test_audit_cli_writes_json_and_csv(tmp_path, capsys) -> None:
    rows = [{"id": i, "prompt": p, "response": r} for i, p, r in ROWS]
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_dataset(data)
    from delift_core.kernels.files import save_kernels

    save_kernels(utility_kernels(bad_rows_kernel(), ds), tmp_path / "kernel")
    out = tmp_path / "audit"
    rc = main(["audit", "--pool", str(data), "--kernel", str(tmp_path / "kernel"),
               "--no-embeddings", "--out", str(out), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["findings"]["hurts_others"]["count"] == 2
    js = json.loads((out / "audit.json").read_text())
    assert js["findings"]["copies_itself"]["ids"] == ["garbled"]
    assert js["findings"]["coverage"]["available"]  # fl at the default budget on the kernel
    assert js["settings"]["hurts_max_mean"] == 0.0
    assert not js["findings"]["near_duplicates"]["available"]
    csv = (out / "audit.csv").read_text().splitlines()
    assert len(csv) == 1 + len(ROWS)
    assert "hurts_others;copies_itself" in [l for l in csv if l.startswith("garbled")][0]


def test_audit_cli_errors_are_plain(tmp_path, capsys) -> None:
    rc = main(["audit", "--pool", "demo:pool", "--kernel", str(tmp_path / "nope"),
               "--out", str(tmp_path / "a")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("delift: error: ") and "Traceback" not in err
    rc = main(["audit", "--pool", "demo:pool", "--kernel", "embedding", "--dup-cosine", "3",
               "--out", str(tmp_path / "a")])
    assert rc == 2
    assert "duplicate_min_cosine" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Pinned on the demo pool: the values, ids and layout the audit gave before its findings became a
# registry and its pipeline a core function (they must not move).


def demo_utility_kernels(ds: Dataset) -> Kernels:
    """A seeded synthetic utility kernel on the demo pool: a few columns hurt, a few rows are
    helped by no one, diagonals of every size; plain distances uniform in [0, 1]."""
    n = len(ds)
    rng = np.random.default_rng(0)
    u = (rng.normal(0.0, 0.03, (n, n)) + rng.normal(0.005, 0.01, n)[None, :]
         + np.where(rng.random(n) < 0.05, -0.2, 0)[:, None]).astype(np.float32)
    u[np.arange(n), np.arange(n)] = rng.uniform(0, 0.6, n)
    d_plain = rng.uniform(0, 1, n).tolist()
    return Kernels("utility", pool=u, meta={"kind": "utility", "pool_ids": ds.ids,
                                            "pool_hashes": row_hashes(ds),
                                            "pool": {"d_plain": d_plain}})


DEMO_CSV_HEADER = ("id,prompt,response,d_plain,mean_utility_to_others,scored_against,"
                   "max_utility_received,self_utility,duplicate_group,cluster,cover_value,"
                   "covered_by,selected,flags")


def test_demo_utility_audit_is_pinned() -> None:
    ds = load_dataset("demo:pool")
    k = demo_utility_kernels(ds)
    sel = select(ds, "fl", k, "0.3")
    a = audit(ds, k, selection=sel)
    counts = {key: f.count for key, f in a.findings.items()}
    assert counts == {"already_known": 54, "hurts_others": 182, "helped_by_no_one": 14,
                      "copies_itself": 169, "near_duplicates": 0, "coverage": 24}
    f = a.findings
    assert f["already_known"].ids[:3] == ["pool-0001", "pool-0077", "pool-0002"]
    assert f["hurts_others"].ids[:3] == ["pool-0095", "pool-0100", "pool-0171"]
    assert f["helped_by_no_one"].ids[:3] == ["pool-0132", "pool-0204", "pool-0054"]
    assert f["copies_itself"].ids[:3] == ["pool-0181", "pool-0218", "pool-0022"]
    assert f["coverage"].ids[:3] == ["pool-0177", "pool-0020", "pool-0171"]
    assert not f["near_duplicates"].available
    assert a.to_csv().splitlines()[0] == DEMO_CSV_HEADER
    assert a.lines()[3] == ("Copies itself: 169 rows (U(i, i) >= 0.1 and |mean utility to others| "
                            "<= 0.05 x U(i, i))")
    s = a.summary()
    assert list(s) == ["version", "rows", "settings", "kernel", "sparse", "duplicates_from",
                       "selection", "clusters", "findings"]
    assert s["selection"] == {"objective": "fl", "budget": 72}
    assert list(s["findings"]["coverage"]) == ["key", "title", "meaning", "needs", "available",
                                               "count", "rule", "reason", "first_ids"]


def test_demo_embedding_cli_audit_is_pinned(tmp_path, capsys) -> None:
    out = tmp_path / "audit"
    assert main(["audit", "--pool", "demo:pool", "--kernel", "embedding", "--out", str(out),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["clusters"] == 8 and summary["selection"] == {"objective": "fl", "budget": 72}
    js = json.loads((out / "audit.json").read_text())
    dup, cov = js["findings"]["near_duplicates"], js["findings"]["coverage"]
    assert dup["count"] == 52 and len(dup["groups"]) == 26
    assert dup["groups"][:2] == [
        {"group": 0, "ids": ["pool-0001", "pool-0042"], "kept": [], "max_cosine": 0.9659},
        {"group": 1, "ids": ["pool-0005", "pool-0077"], "kept": ["pool-0005"],
         "max_cosine": 0.9716}]
    assert cov["count"] == 24 and cov["ids"][:3] == ["pool-0026", "pool-0188", "pool-0051"]
    assert len(cov["groups"]) == 8 and sum(g["worst_covered"] for g in cov["groups"]) == 24
    assert js["settings"] == {"known_max_distance": 0.25, "hurts_max_mean": 0.0,
                              "helped_max": 0.0, "copy_min_self": 0.1, "copy_max_ratio": 0.05,
                              "duplicate_min_cosine": 0.95, "coverage_fraction": 0.1}
    assert (out / "audit.csv").read_text().splitlines()[0] == DEMO_CSV_HEADER
