"""The audit: hand-built kernels with known values and a fixture of deliberately bad rows (a wrong
answer, a duplicate, a garbled response) must be flagged by the right findings; sparse kernels give
the same answers over their stored pairs; findings an embedding kernel cannot make say so; the
CLI writes audit.json and audit.csv with the thresholds; the findings registry declares every
finding and threshold (AuditSettings and the CLI's options come from it); the pipeline function
gives what the CLI's steps gave; the demo pool's values are pinned."""

from __future__ import annotations

import csv
import io
import json
import pickle
from dataclasses import asdict, fields

import numpy as np
import pytest
import scipy.sparse as sp

from delift_core.data.dataset import load_dataset
from delift_core.selection.select import select
from delift_core.outputs import audit_findings
from delift_core.outputs.audit import (DEFAULT_CLUSTERS, AuditError, AuditSettings, audit,
                                       audit_json_text, audit_pool, audit_settings)
from delift_core.outputs.audit_findings import (FINDINGS, KERNEL_NEEDS, AuditInputs,
                                                FindingSpec, Outcome, finding, thresholds)
from delift_core.cli import build_parser, main
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
    assert summary["files"] == {"csv": str(out / "audit.csv"), "json": str(out / "audit.json")}
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
    # the worst-covered rows, worst first; beyond the first two the order and even the selection
    # rest on near-ties of the embeddings, which differ in the last bits between CPUs (AVX2 and
    # AVX512 pick different FL rows here), so those are checked by their rule, not pinned
    assert cov["count"] == 24 and cov["ids"][:2] == ["pool-0026", "pool-0188"]
    rows = {r["id"]: r for r in csv.DictReader(io.StringIO((out / "audit.csv").read_text()))}
    values = [float(rows[i]["cover_value"]) for i in cov["ids"]]
    assert values == sorted(values) and all(rows[i]["selected"] == "False" for i in cov["ids"])
    assert len(cov["groups"]) == 8 and sum(g["worst_covered"] for g in cov["groups"]) == 24
    assert js["settings"] == {"known_max_distance": 0.25, "hurts_max_mean": 0.0,
                              "helped_max": 0.0, "copy_min_self": 0.1, "copy_max_ratio": 0.05,
                              "duplicate_min_cosine": 0.95, "coverage_fraction": 0.1}
    assert (out / "audit.csv").read_text().splitlines()[0] == DEMO_CSV_HEADER


# ----------------------------------------------------------------------------------------------
# The findings registry


OLD_FLAGS = {"known-distance": "known_max_distance", "hurts-mean": "hurts_max_mean",
             "helped-max": "helped_max", "copy-self": "copy_min_self",
             "copy-ratio": "copy_max_ratio", "dup-cosine": "duplicate_min_cosine",
             "coverage-fraction": "coverage_fraction"}


def test_registry_declares_every_finding_and_threshold() -> None:
    assert list(FINDINGS) == ["already_known", "hurts_others", "helped_by_no_one",
                              "copies_itself", "near_duplicates", "coverage"]
    for spec in FINDINGS.values():
        assert spec.run is not None and spec.kernel in KERNEL_NEEDS
        assert spec.label and spec.meaning and spec.needs and spec.columns
        assert set(spec.table_columns) <= {c for s in FINDINGS.values() for c in s.columns}
    for t in thresholds():
        low, high = t.slider_range
        assert t.low <= low <= t.default <= high <= t.high, t.name
        assert 0 < t.step <= high - low and t.label and t.help, t.name
        assert t.check(t.default) is None and "--" + t.flag in t.check(t.high + 1)
    # AuditSettings is made from the registry: one field per threshold, in order, its default
    assert [(f.name, f.default) for f in fields(AuditSettings)] == [
        (t.name, t.default) for t in thresholds()]
    assert {t.flag: t.name for t in thresholds()} == OLD_FLAGS
    # the settings travel through Streamlit's cache (pickle) and compare by value
    s = audit_settings({"helped_max": -0.05, "coverage_fraction": None})
    assert pickle.loads(pickle.dumps(s)) == s == AuditSettings(helped_max=-0.05)
    with pytest.raises(AuditError, match="unknown audit threshold nope"):
        audit_settings({"nope": 1.0})
    with pytest.raises(AuditError, match=r"copy_max_ratio=1.5 \(--copy-ratio\) must be a number "
                                         r"in \[0, 1\]"):
        audit_settings({"copy_max_ratio": 1.5})


def test_each_finding_says_what_it_needs_when_nothing_is_given() -> None:
    ds = fixture_pool()
    a = audit(ds, None)
    inputs = AuditInputs(ds, None, None, None, None, AuditSettings())
    for key, spec in FINDINGS.items():
        assert not a.findings[key].available
        assert a.findings[key].reason == inputs.missing(spec.kernel), key
        assert a.findings[key].title == spec.label and a.findings[key].needs == spec.needs


def test_cli_threshold_options_come_from_the_registry() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["audit"]
    opts = {o: a for a in sub._actions for o in a.option_strings}
    for spec in FINDINGS.values():
        for t in spec.thresholds:
            action = opts[f"--{t.flag}"]  # the flag names users scripted stay
            assert action.dest == f"audit_{t.name}" and action.default is None
            text = action.help.replace("%%", "%")
            assert text.startswith(f"{spec.label}: {t.help}")
            assert f"default {t.default:g}" in text and t.name in text
    args = sub.parse_args(["--pool", "x", "--out", "y", "--dup-cosine", "0.9", "--copy-ratio",
                           "0.1"])
    given = {t.name: getattr(args, f"audit_{t.name}") for t in thresholds()}
    assert audit_settings(given) == AuditSettings(duplicate_min_cosine=0.9, copy_max_ratio=0.1)


def test_a_new_finding_is_one_registered_function() -> None:
    @finding(FindingSpec(name="long_answer", label="Long answers", meaning="Long responses.",
                         needs="the pool", kernel="selection", columns=("answer_chars",)))
    def long_answer(inputs: AuditInputs) -> Outcome:
        chars = np.array([len(r) for r in inputs.pool.responses])
        return Outcome(True, {"answer_chars": chars},
                       [i for i, c in zip(inputs.pool.ids, chars) if c > 30], rule="> 30 chars")

    try:
        a = audit(fixture_pool(), None)
        assert list(a.findings)[-1] == "long_answer"
        assert a.findings["long_answer"].ids == ["odd"]
        assert "answer_chars" in a.to_csv().splitlines()[0]
        assert a.to_json()["findings"]["long_answer"]["rule"] == "> 30 chars"
        assert a.lines()[-1] == "Long answers: 1 rows (> 30 chars)"
    finally:
        audit_findings.FINDINGS.pop("long_answer")
    with pytest.raises(ValueError, match="kernel must be one of"):
        FindingSpec(name="x", label="x", meaning="x", needs="x", kernel="gpu", columns=("x",))


# ----------------------------------------------------------------------------------------------
# The pipeline in the core


def test_audit_pool_gives_the_audit_of_the_cli_steps_on_the_demo_pool() -> None:
    """The steps ``delift audit --kernel embedding`` used to run inline (FL at 0.3, the pool's
    sentence embeddings, 8 k-means clusters, audit) and audit_pool give the same audit."""
    from delift_core.kernels.embedding import embed_rows, embedding_kernel
    from delift_core.lm.models import load_embedder
    from delift_core.outputs.maps import cluster_labels

    ds = load_dataset("demo:pool")
    embedder = load_embedder(None)
    emb = embed_rows(embedder, ds)
    k = Kernels("embedding", pool=embedding_kernel(emb, emb))
    old = audit(ds, k, selection=select(ds, "fl", k, "0.3"), embeddings=emb,
                clusters=cluster_labels(emb, 8))
    new = audit_pool(ds, k, budget="0.3", embedder=embedder, clusters=DEFAULT_CLUSTERS)
    assert audit_json_text(new) == audit_json_text(old)
    assert new.to_csv() == old.to_csv() and new.lines() == old.lines() and not new.notes
    assert new.findings["near_duplicates"].count == 52 and new.meta["clusters"] == 8
    # given embeddings (the studio's cached ones) and a selection: the same again
    again = audit_pool(ds, k, selection=select(ds, "fl", k, 72), embeddings=emb)
    assert audit_json_text(again) == audit_json_text(old)
    # no budget, no embedder: no selection, no clusters; only the kernel's own findings
    bare = audit_pool(ds, k, budget=None)
    assert not bare.findings["coverage"].available and bare.meta["clusters"] is None
    assert bare.findings["near_duplicates"].count == 52  # from the embedding kernel's pairs
    with pytest.raises(AuditError, match="dup-cosine"):
        audit_pool(ds, k, settings=AuditSettings(duplicate_min_cosine=2.0))


def test_audit_pool_notes_a_missing_clustering_package(monkeypatch) -> None:
    from delift_core.errors import MissingDependencyError
    from delift_core.outputs import maps

    def no_sklearn(*a, **kw):
        raise MissingDependencyError("k-means clustering needs scikit-learn")

    monkeypatch.setattr(maps, "cluster_labels", no_sklearn)
    ds = fixture_pool()
    e = embeddings()
    k = Kernels("embedding", pool=((e @ e.T + 1) / 2).astype(np.float32))
    a = audit_pool(ds, k, budget=2, embeddings=e)
    assert a.notes == ["coverage is not grouped by cluster: k-means clustering needs "
                       "scikit-learn"]
    assert a.findings["coverage"].available and not a.findings["coverage"].groups
    assert a.meta["clusters"] is None and "notes" not in a.to_json()
    assert asdict(a.settings) == asdict(AuditSettings())
