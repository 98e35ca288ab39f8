"""Output folders: checked before any work, written whole (no stale files), locked, and left as
they were when a run fails (issue: Reliability, items 3 and 4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from delift_core.cli import main
from delift_core.outputs.outdir import MARKER, OutputError, check_output, output_folder


def _pool(tmp_path, n=30, empty=0):
    path = tmp_path / "pool.jsonl"
    with path.open("w") as f:
        for k in range(n):
            f.write(json.dumps({"id": f"r{k}", "prompt": f"question {k}",
                                "response": "" if k < empty else f"answer {k}"}) + "\n")
    return path


def _select(pool, out, *extra):
    return main(["select", "--pool", str(pool), "--kernel", "embedding", "--budget", "10",
                 "--out", str(out), *extra])


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_rerun_replaces_an_earlier_output_whole(tmp_path):
    out = tmp_path / "out"
    assert _select(_pool(tmp_path, empty=5), out, "--format", "csv") == 0
    assert (out / "skipped.csv").exists()
    assert _select(_pool(tmp_path), out) == 0  # no skipped rows, another format
    manifest = json.loads((out / "manifest.json").read_text())
    on_disk = sorted(p.name for p in out.iterdir() if p.name != MARKER)
    assert on_disk == manifest["files"]  # nothing of the earlier run is left
    assert not (out / "skipped.csv").exists() and not (out / "selected.csv").exists()
    assert len(_rows(out / "selected.jsonl")) + len(_rows(out / "rejected.jsonl")) == 30
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temp or lock


def test_a_foreign_non_empty_folder_is_refused_before_work_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert _select(_pool(tmp_path), out) == 2
    err = capsys.readouterr().err
    assert "not written by delift" in err and "--overwrite" in err and "Traceback" not in err
    assert (out / "notes.txt").read_text() == "keep me"
    assert _select(_pool(tmp_path), out, "--overwrite") == 0
    assert not (out / "notes.txt").exists() and (out / "selected.jsonl").exists()


@pytest.mark.parametrize("case", ["file", "under_file"])
def test_bad_out_paths_fail_before_any_work(tmp_path, capsys, case, monkeypatch):
    import delift_core.cli.common as common
    import delift_core.cli.select_cmds as cli

    f = tmp_path / "a_file"
    f.write_text("x")
    out = f if case == "file" else f / "sub" / "out"
    monkeypatch.setattr(cli, "selection_kernels", lambda *a, **k: pytest.fail("work was done"))
    monkeypatch.setattr(common, "kernels_from_settings",
                        lambda *a, **k: pytest.fail("work was done"))
    assert _select(_pool(tmp_path), out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("delift: error: --out") and "file" in err[-1]
    assert main(["kernel", "--pool", str(_pool(tmp_path)), "--kernel", "embedding",
                 "--out", str(out)]) == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_parent_is_refused(tmp_path):  # pragma: no cover - CI runs as root
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(OutputError, match="not writable"):
        check_output(ro / "out")


def test_a_second_run_fails_fast_while_the_first_holds_the_lock(tmp_path):
    out = tmp_path / "out"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".out.lock").write_text(str(sleeper.pid))
        with pytest.raises(OutputError, match=f"another delift run \\(process {sleeper.pid}\\)"):
            with output_folder(out, command="test"):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    with output_folder(out, command="test") as tmp:  # a dead run's lock is taken over
        (tmp / "a.txt").write_text("a")
    assert (out / "a.txt").read_text() == "a"


def test_a_failed_write_leaves_the_earlier_folder_as_it_was(tmp_path):
    out = tmp_path / "out"
    with output_folder(out, command="test") as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with output_folder(out, command="test") as tmp:
            (tmp / "b.txt").write_text("half")
            raise RuntimeError("disk full")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "a.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
