"""The ``delift`` command line: inspect, kernel and select, with the embedding kernel (fast), and
user errors that exit 2 with a one-line message instead of a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from delift_core.cli import main
from delift_core.outputs.review import Decisions

TARGET = ["--target", "demo:target"]
EXISTING = ["--existing", "demo:existing"]
EXTRA = {"fl": [], "flmi": TARGET, "flqmi": TARGET, "flcg": EXISTING, "random": []}


@pytest.fixture(autouse=True)
def _no_causal_lm(monkeypatch):
    """These tests use the embedding kernel or none: loading the causal LM would be a bug here."""
    import delift_core.lm.models

    def refuse(*args, **kwargs):
        raise AssertionError("the CLI loaded the causal LM although no utility kernel was asked")

    monkeypatch.setattr(delift_core.lm.models, "load_causal_lm", refuse)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def run_select(tmp_path: Path, *args: str) -> tuple[int, Path]:
    out = tmp_path / "out"
    return main(["select", "--pool", "demo:pool", "--out", str(out), *args]), out


@pytest.mark.parametrize("objective", ["fl", "flmi", "flqmi", "flcg", "random"])
def test_select_with_the_embedding_kernel(objective, tmp_path, capsys):
    code, out = run_select(tmp_path, "--kernel", "embedding", "--objective", objective,
                           "--budget", "0.3", *EXTRA[objective])
    assert code == 0, capsys.readouterr().err
    assert "selected 72 of 240 rows" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        ".delift-output.json", "annotated.csv", "manifest.json", "rejected.jsonl",
        "selected.jsonl", "selection.json"]
    selected, rejected = lines(out / "selected.jsonl"), lines(out / "rejected.jsonl")
    assert len(selected) == 72 and len(rejected) == 168
    ids = [r["id"] for r in selected + rejected]
    assert len(set(ids)) == 240
    data = json.loads((out / "selection.json").read_text())
    assert data["objective"] == objective and data["selected_ids"] == [r["id"] for r in selected]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kernel"] == "embedding" and manifest["embedder"] == "all-MiniLM-L6-v2"
    if objective in ("flmi", "flqmi"):
        assert manifest["inputs"]["target"]["rows"] == 40
    if objective == "flcg":
        assert manifest["inputs"]["existing"]["rows"] == 60
    if objective != "random":
        gains = data["gains"]
        assert all(g >= 0 for g in gains) and gains == sorted(gains, reverse=True)


def test_select_count_budget_format_pins_and_decisions(tmp_path, capsys):
    decisions = Decisions()
    decisions.pin("pool-0200")
    decisions.ban("pool-0001")
    (tmp_path / "decisions.json").write_text(decisions.to_json())
    code, out = run_select(tmp_path, "--kernel", "embedding", "--budget", "10", "--format", "csv",
                           "--pin", "pool-0150", "--ban", "pool-0002",
                           "--decisions", str(tmp_path / "decisions.json"))
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "selection.json").read_text())
    assert len(data["selected_ids"]) == 10
    assert data["selected_ids"][:2] == ["pool-0150", "pool-0200"]
    assert not {"pool-0001", "pool-0002"} & set(data["selected_ids"])
    import csv

    with open(out / "selected.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == data["selected_ids"]


def test_kernel_command_writes_the_matrices(tmp_path, capsys):
    out = tmp_path / "k"
    assert main(["kernel", "--pool", "demo:pool", "--kernel", "embedding", *TARGET,
                 "--out", str(out)]) == 0
    pool_k, target_k = np.load(out / "kernel_pool.npy"), np.load(out / "kernel_target.npy")
    assert pool_k.shape == (240, 240) and target_k.shape == (40, 240)
    assert np.allclose(np.diag(pool_k), 1, atol=1e-5) and np.allclose(pool_k, pool_k.T, atol=1e-6)
    assert pool_k.min() >= 0 and pool_k.max() <= 1
    meta = json.loads((out / "kernel_meta.json").read_text())
    assert meta["kind"] == "embedding" and len(meta["pool_ids"]) == 240
    assert len(meta["target_ids"]) == 40
    assert "kernel_pool.npy (240, 240)" in capsys.readouterr().out

    # the saved folder feeds `select`, and gives the same subset as computing the kernel there
    code, sel = run_select(tmp_path, "--kernel", str(out), "--objective", "flmi", *TARGET,
                           "--budget", "20")
    assert code == 0, capsys.readouterr().err
    direct = tmp_path / "direct"
    assert main(["select", "--pool", "demo:pool", "--kernel", "embedding", "--objective", "flmi",
                 *TARGET, "--budget", "20", "--out", str(direct)]) == 0
    assert json.loads((sel / "selection.json").read_text())["selected_ids"] == \
        json.loads((direct / "selection.json").read_text())["selected_ids"]

    out2 = tmp_path / "k2"
    assert main(["kernel", "--pool", "demo:pool", "--kernel", "embedding", *EXISTING,
                 "--out", str(out2)]) == 0
    assert np.load(out2 / "kernel_existing.npy").shape == (240, 60)


def user_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "delift: error:" in err and "Traceback" not in err
    return err


def test_wrong_kernel_shape_is_a_clear_user_error(tmp_path, capsys):
    np.save(tmp_path / "k.npy", np.zeros((240, 200), np.float32))
    err = user_error(capsys, ["select", "--pool", "demo:pool", "--kernel",
                              str(tmp_path / "k.npy"), "--out", str(tmp_path / "o")])
    assert "--trust-kernel" in err  # a bare file says nothing of its rows
    err = user_error(capsys, ["select", "--pool", "demo:pool", "--trust-kernel", "--kernel",
                              str(tmp_path / "k.npy"), "--out", str(tmp_path / "o")])
    assert "shape (240, 200), expected (240, 240)" in err
    np.save(tmp_path / "k.npy", np.zeros((240, 240), np.float32))
    np.save(tmp_path / "t.npy", np.zeros((40, 241), np.float32))
    err = user_error(capsys, ["select", "--pool", "demo:pool", "--kernel",
                              str(tmp_path / "k.npy"), "--trust-kernel",
                              "--target-kernel", str(tmp_path / "t.npy"),
                              "--objective", "flmi", *TARGET, "--out", str(tmp_path / "o")])
    assert "target kernel has shape (40, 241), expected (40, 240)" in err
    assert not (tmp_path / "o").exists()


def test_other_user_errors_exit_2(tmp_path, capsys):
    out = ["--out", str(tmp_path / "o")]
    err = user_error(capsys, ["select", "--pool", "demo:pool", "--objective", "flmi",
                              "--kernel", "embedding", *out])
    assert "needs --target" in err
    err = user_error(capsys, ["select", "--pool", "demo:pool", "--objective", "flcg",
                              "--kernel", "embedding", *out])
    assert "needs --existing" in err
    err = user_error(capsys, ["select", "--pool", "demo:pool", "--objective", "random",
                              "--budget", "0", *out])
    assert "budget" in err
    user_error(capsys, ["select", "--pool", "demo:pool", "--objective", "random",
                        "--budget", "lots", *out])
    import delift_core.lm.models

    loaded = []
    real = delift_core.lm.models.load_embedder
    try:
        delift_core.lm.models.load_embedder = lambda *a, **k: loaded.append(1) or real(*a, **k)
        err = user_error(capsys, ["select", "--pool", "demo:pool", "--kernel", "embedding",
                                  "--budget", "0", *out])
    finally:
        delift_core.lm.models.load_embedder = real
    assert "selects nothing" in err and not loaded, "the budget is checked before the kernels"
    user_error(capsys, ["select", "--pool", "demo:pool", "--objective", "random",
                        "--budget", "500", *out])
    user_error(capsys, ["select", "--pool", "demo:pool", "--objective", "random", "--limit", "0",
                        *out])
    user_error(capsys, ["select", "--pool", "demo:pool", "--objective", "random",
                        "--pin", "nope", *out])
    user_error(capsys, ["select", "--pool", "demo:pool", "--objective", "random",
                        "--prompt-col", "instruction", *out])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{oops}\n')
    err = user_error(capsys, ["select", "--pool", str(bad), "--objective", "random", *out])
    assert "bad.jsonl: line 2 is not valid JSON" in err
    (tmp_path / "dec.json").write_text('{"pinned": ["a"], "banned": ["a"]}')
    err = user_error(capsys, ["select", "--pool", "demo:pool", "--objective", "random",
                              "--decisions", str(tmp_path / "dec.json"), *out])
    assert "both pinned and banned" in err
    user_error(capsys, ["inspect", str(tmp_path / "missing.jsonl")])
    assert not (tmp_path / "o").exists()


def test_random_needs_no_kernel_and_limit(tmp_path, capsys):
    code, out = run_select(tmp_path, "--objective", "random", "--budget", "0.5", "--limit", "50",
                           "--seed", "3")
    assert code == 0
    err = capsys.readouterr().err
    assert "using the first 50 of 240 pool rows" in err
    assert len(lines(out / "selected.jsonl")) == 25 and len(lines(out / "rejected.jsonl")) == 25


def test_inspect(capsys, tmp_path):
    assert main(["inspect", "demo:pool", "--rows", "1"]) == 0
    text = capsys.readouterr().out
    assert "240 rows, layout 'alpaca'" in text and "--- id pool-0001" in text
    rows = [{"t": "Q1", "s": "A1"}, {"t": "Q2", "s": ""}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["inspect", str(tmp_path / "c.jsonl"), "--prompt-col", "t",
                 "--response-col", "s"]) == 0
    text = capsys.readouterr().out
    assert "1 rows, layout 'mapping'" in text and "skipped line 2: empty response" in text


def test_python_dash_m_reports_user_errors_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "delift_core", "select", "--pool", "demo:pool",
                           "--objective", "flqmi", "--kernel", "embedding",
                           "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "delift: error: objective 'flqmi' needs --target FILE" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_real_data_all_three_stages(shared_data, tmp_path, capsys):
    """200 rows of P3 as the pool; a GSM8K test slice as the target and a Code Alpaca slice as the
    existing data (slices written to tmp_path to keep the embedding time small)."""
    gsm = tmp_path / "gsm8k_test_head.jsonl"
    gsm.write_text("".join((shared_data / "gsm8k_test.jsonl").read_text(encoding="utf-8")
                           .splitlines(keepends=True)[:50]), encoding="utf-8")
    code_alpaca = json.loads((shared_data / "code_alpaca_2k.json").read_text(encoding="utf-8"))
    existing = tmp_path / "code_alpaca_head.json"
    existing.write_text(json.dumps(code_alpaca[:80]), encoding="utf-8")
    pool = ["--pool", str(shared_data / "p3_sample.jsonl"), "--limit", "200", "--kernel",
            "embedding", "--budget", "0.25"]
    for objective, extra in [("fl", []), ("flmi", ["--target", str(gsm)]),
                             ("flcg", ["--existing", str(existing)])]:
        out = tmp_path / objective
        assert main(["select", *pool, "--objective", objective, *extra, "--out", str(out)]) == 0
        selected, rejected = lines(out / "selected.jsonl"), lines(out / "rejected.jsonl")
        assert len(selected) == 50 and len(rejected) == 150
        assert all(r["id"].startswith("p3-") for r in selected)
        assert {"id", "template", "prompt", "completion"} <= set(selected[0])
    err = capsys.readouterr().err
    assert "using the first 200" in err


def test_review_decisions_file(tmp_path):
    from delift_core.errors import DataError
    from delift_core.outputs.review import load_decisions

    d = Decisions()
    d.pin("a")
    d.pin("b")
    d.ban("c")
    d.ban("a")  # a ban replaces a pin
    d.clear("b")
    d.notes["c"] = "duplicate of d"
    assert d.pinned == [] and d.banned == ["c", "a"]
    (tmp_path / "d.json").write_text(d.to_json(), encoding="utf-8")
    back = load_decisions(tmp_path / "d.json")
    assert (back.pinned, back.banned, back.notes) == (d.pinned, d.banned, d.notes)
    for text, message in [("{oops", "not valid JSON"), ("[1, 2]", "expected an object"),
                          ('{"pinned": "a"}', "must be lists"),
                          ('{"pinned": [1], "banned": ["1"]}', "both pinned and banned")]:
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(DataError, match=message):
            load_decisions(tmp_path / "bad.json")
    with pytest.raises(DataError, match="cannot read"):
        load_decisions(tmp_path / "absent.json")
