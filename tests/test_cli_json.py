"""``--json`` on inspect, kernel, select and evaluate: exactly one JSON object on stdout (paths,
counts, values, timings) and nothing else there; errors give a JSON object too and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from delift_core import cli
from test_evaluate import tiny_model_dir  # noqa: F401  (fixture: --model DIR)


def _run(capsys, argv: list[str]) -> tuple[int, dict, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 1, out  # one summary line, nothing else on stdout
    return code, json.loads(lines[0]), err


def test_inspect_json(capsys):
    code, s, err = _run(capsys, ["inspect", "demo:pool", "--json", "--rows", "2"])
    assert code == 0 and s["command"] == "inspect" and s["ok"] is True
    assert (s["rows"], s["layout"], s["format"], s["skipped"]) == (240, "alpaca", "jsonl", 0)
    assert s["columns"] == ["id", "family", "instruction", "input", "output"]
    assert s["ids"] == ["pool-0001", "pool-0002"] and s["seconds"] >= 0
    assert "--- id pool-0001" in err  # the human preview moved to stderr


def test_kernel_json(capsys, tmp_path, tiny_model_dir):
    out = tmp_path / "k"
    code, s, _ = _run(capsys, ["kernel", "--pool", "demo:pool", "--limit", "4", "--model",
                               str(tiny_model_dir), "--out", str(out), "--json"])
    assert code == 0 and s["command"] == "kernel" and s["kind"] == "utility"
    assert s["shapes"] == {"pool": [4, 4]} and s["rows"]["pool"] == 4
    assert Path(s["files"]["pool"]) == out / "kernel_pool.npy"
    assert Path(s["files"]["pool"]).exists() and Path(s["files"]["meta"]).exists()
    assert s["kernel_seconds"] >= 0 and s["report"]


def test_select_json(capsys, tmp_path):
    out = tmp_path / "s"
    code, s, _ = _run(capsys, ["select", "--pool", "demo:pool", "--objective", "random",
                               "--budget", "12", "--out", str(out), "--json"])
    assert code == 0 and s["command"] == "select"
    assert (s["selected"], s["rejected"], s["pool_rows"]) == (12, 228, 240)
    assert s["objective"] == "random" and isinstance(s["objective_value"], float)
    assert set(s["files"]) >= {"selected.jsonl", "rejected.jsonl", "manifest.json"}
    assert all(Path(p).parent == out and Path(p).exists() for p in s["files"].values())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["selected"] == 12


def test_evaluate_json(capsys, tmp_path, tiny_model_dir):
    sel = tmp_path / "sel"
    assert cli.main(["select", "--pool", "demo:pool", "--objective", "random", "--budget", "4",
                     "--out", str(sel)]) == 0
    capsys.readouterr()
    out = tmp_path / "e"
    code, s, err = _run(capsys, ["evaluate", f"r={sel}", "--test", "demo:target",
                                 "--test-limit", "2", "--shots", "1", "--no-generate",
                                 "--model", str(tiny_model_dir), "--out", str(out), "--json"])
    assert code == 0 and s["command"] == "evaluate"
    assert (s["subsets"], s["test_rows"], s["modes"]) == (1, 2, ["icl"])
    assert Path(s["files"]["results.json"]).exists()
    assert [r["subset"] for r in s["results"]] == ["r"]
    assert "| icl | r |" in err  # the markdown table went to stderr


def test_json_error_is_json_too(capsys, tmp_path):
    code, s, err = _run(capsys, ["select", "--pool", str(tmp_path / "missing.jsonl"),
                                 "--out", str(tmp_path / "o"), "--json"])
    assert code == 2 and s["ok"] is False and "no such file" in s["error"]
    assert "delift: error:" in err and "Traceback" not in err


def test_without_json_stdout_is_for_people(capsys):
    assert cli.main(["inspect", "demo:pool", "--rows", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(str(Path("delift_core").resolve().parent)) or "240 rows" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_model_options_are_one_definition_shared_by_the_commands():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for name in ("kernel", "select", "evaluate", "audit"):
        opts = {o: a for a in sub[name]._actions for o in a.option_strings}
        assert {"--model", "--embedder", "--dtype", "--device"} <= set(opts), name
        # the choices come from the settings spec and are checked in the core, not by argparse
        assert opts["--dtype"].metavar == "{float32,bfloat16,float16}"
        assert "smollm2-135m-instruct" in opts["--model"].help
    for name in ("inspect", "kernel", "select", "evaluate", "audit"):
        assert any("--json" in a.option_strings for a in sub[name]._actions), name
