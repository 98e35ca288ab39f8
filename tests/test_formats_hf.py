"""``--format hf``: save_to_disk folders that load_from_disk reads back with the pool's columns and
types; ``--push-to-hub`` refused before any work when offline; the folders feed evaluate."""

from __future__ import annotations

import json

import datasets
import pytest

from delift_core import cli
from delift_core.data.dataset import load_dataset
from delift_core.errors import DeliftError
from delift_core.outputs.export import export_selection
from delift_core.selection.select import select

ROWS = [{"id": k, "prompt": f"question {k}", "completion": f"answer {k}", "score": k / 4,
         "tags": ["a"] * (k % 3), "meta": {"src": "s", "n": k}, "note": None if k % 2 else "x"}
        for k in range(8)]


@pytest.fixture()
def pool(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return load_dataset(path)


def test_hf_export_round_trips_columns_types_and_rows(pool, tmp_path):
    sel = select(pool, "random", None, 3, seed=1)
    paths = export_selection(sel, tmp_path / "out", "hf")
    assert {"selected.hf", "rejected.hf", "annotated.csv", "selection.json",
            "manifest.json"} == set(paths)
    selected = datasets.load_from_disk(str(paths["selected.hf"]))
    rejected = datasets.load_from_disk(str(paths["rejected.hf"]))
    assert selected.column_names == list(ROWS[0]) == rejected.column_names
    assert selected.features == rejected.features  # one schema for both
    f = selected.features
    assert (f["id"].dtype, f["score"].dtype, f["prompt"].dtype) == ("int64", "float64", "string")
    assert f["meta"] == {"src": datasets.Value("string"), "n": datasets.Value("int64")}
    chosen = [int(pool.ids[k]) for k in sel.selected_indices]
    assert selected.to_list() == [ROWS[k] for k in chosen]  # values and order exactly
    assert sorted(r["id"] for r in rejected.to_list()) == sorted(set(range(8)) - set(chosen))
    manifest = json.loads(paths["manifest.json"].read_text())
    assert manifest["format"] == "hf"
    assert "selected.hf/" in manifest["files"] and "rejected.hf/" in manifest["files"]
    assert not any(n.endswith(".parquet") for n in manifest["files"])


def test_hf_folder_reads_back_as_a_pool_and_as_an_evaluate_subset(pool, tmp_path):
    from delift_core.evaluation.subsets import load_subset

    sel = select(pool, "random", None, 4, seed=0)
    export_selection(sel, tmp_path / "out", "hf")
    again = load_dataset(tmp_path / "out" / "selected.hf")
    assert again.ids == [pool.ids[k] for k in sel.selected_indices]
    assert again.prompts == [pool.prompts[k] for k in sel.selected_indices]
    subset, _ = load_subset(tmp_path / "out")
    assert subset.size == 4


def test_hf_column_with_null_in_one_part_keeps_its_type(tmp_path):
    rows = [{"id": str(k), "prompt": "p", "completion": "c", "extra": "v" if k == 0 else None}
            for k in range(4)]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_dataset(path)
    sel = select(ds, "random", None, 1, pinned=["1"])  # 'extra' is null in every selected row
    paths = export_selection(sel, tmp_path / "o", "hf")
    for part in ("selected.hf", "rejected.hf"):
        assert datasets.load_from_disk(str(paths[part])).features["extra"].dtype == "string"


def test_cli_select_format_hf(tmp_path, capsys):
    out = tmp_path / "sel"
    code = cli.main(["select", "--pool", "demo:pool", "--objective", "random", "--budget", "10",
                     "--format", "hf", "--out", str(out), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "hf" and summary["selected"] == 10
    selected = datasets.load_from_disk(str(out / "selected.hf"))
    assert len(selected) == 10
    assert selected.column_names == ["id", "family", "instruction", "input", "output"]
    assert len(datasets.load_from_disk(str(out / "rejected.hf"))) == 230


@pytest.mark.parametrize("env", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_push_to_hub_offline_fails_before_any_work(tmp_path, capsys, monkeypatch, env):
    monkeypatch.setenv(env, "1")
    calls = []
    import delift_core.cli.common as cli_common

    monkeypatch.setattr(cli_common, "load_dataset", lambda *a, **k: calls.append(a))
    out = tmp_path / "sel"
    code = cli.main(["select", "--pool", "demo:pool", "--push-to-hub", "me/subset",
                     "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and calls == [] and not out.exists()
    assert f"delift: error: --push-to-hub me/subset: the Hugging Face hub is not reachable " \
           f"({env} is set); nothing was computed" in err
    assert "Traceback" not in err


def test_push_to_hub_without_network_fails_fast(tmp_path, capsys, monkeypatch):
    import socket

    from delift_core.outputs import hf_export

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

    def refuse(*a, **k):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(DeliftError, match="huggingface.co cannot be reached "
                                          r"\(Network is unreachable\)"):
        hf_export.check_push("me/subset")


@pytest.mark.parametrize("repo", ["subset", "a/b/c", "/x", "me/ "])
def test_push_to_hub_needs_owner_and_name(repo):
    from delift_core.outputs.hf_export import check_push

    with pytest.raises(DeliftError, match="give a dataset repository as OWNER/NAME"):
        check_push(repo)


def test_push_selection_uploads_the_selected_rows_as_train(pool, monkeypatch):
    from delift_core.outputs import hf_export

    pushed = {}

    def fake_push(self, repo_id, private=True):
        pushed.update(repo=repo_id, private=private, rows={k: v.to_list() for k, v in self.items()})

    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", fake_push)
    sel = select(pool, "random", None, 2, seed=3)
    url = hf_export.push_selection(sel, "me/subset")
    assert url == "https://huggingface.co/datasets/me/subset"
    assert pushed["repo"] == "me/subset" and pushed["private"] is True
    assert pushed["rows"]["train"] == [ROWS[int(pool.ids[k])] for k in sel.selected_indices]
