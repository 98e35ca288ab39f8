"""Score-based selection methods (ifd, ifd-fl, longest), their per-row score artefact, and the
cost record every selection carries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from delift_core import compute_kernels, load_dataset, select
from delift_core.data.dataset import Dataset
from delift_core.errors import SelectionError
from delift_core.kernels.scores import (compute_row_scores, load_row_scores, save_row_scores)
from delift_core.kernels.utility_settings import DEFAULT_PLAIN_TEMPLATE

ROOT = Path(__file__).resolve().parents[1]


def _pool(n: int = 12) -> Dataset:
    return load_dataset("demo:pool").subset(range(n))


def _mean_nll_by_hand(lm, ids: list[int], n_scored: int) -> float:
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    total = 0.0
    for pos in range(len(ids) - n_scored, len(ids)):
        total -= float(logp[pos - 1, ids[pos]])
    return total / n_scored


def test_ifd_is_the_ratio_of_the_two_mean_losses_computed_by_hand(tiny_llama) -> None:
    pool = _pool(6)
    scores = compute_row_scores(pool, "ifd", lm=tiny_llama, use_cache=False)
    tok = tiny_llama.tokenizer
    bos, eos = tiny_llama.bos_token_id, tiny_llama.eos_token_id
    for k in range(len(pool)):
        prompt = DEFAULT_PLAIN_TEMPLATE.replace("{prompt}", pool.prompts[k])
        resp = tok(pool.responses[k], add_special_tokens=False)["input_ids"] + [eos]
        cond = [bos] + tok(prompt, add_special_tokens=False)["input_ids"] + resp
        alone = [bos] + resp
        want = _mean_nll_by_hand(tiny_llama, cond, len(resp)) / \
            _mean_nll_by_hand(tiny_llama, alone, len(resp))
        assert scores.values[k] == pytest.approx(want, rel=1e-4), k
    assert scores.meta["passes_computed"] == 2 * len(pool)
    again = compute_row_scores(pool, "ifd", lm=tiny_llama)  # into the cache, then from it
    cached = compute_row_scores(pool, "ifd", lm=tiny_llama)
    assert cached.meta["passes_computed"] == 0 and cached.meta["passes_reused"] == 12
    np.testing.assert_allclose(cached.values, again.values)


def test_ifd_ranks_by_score_with_rows_at_or_above_one_last(tiny_llama) -> None:
    pool = _pool(12)
    scores = compute_row_scores(pool, "ifd", lm=tiny_llama, use_cache=False)
    scores.values[:] = [0.5, 1.2, 0.9, 0.9, 0.1, 1.0, 0.7, np.nan, 0.95, 0.3, 2.0, 0.6]
    sel = select(pool, "ifd", None, 12, scores=scores)
    assert sel.order.tolist() == [8, 2, 3, 6, 11, 0, 9, 4, 10, 1, 5, 7]
    assert select(pool, "ifd", None, 3, scores=scores, banned=[pool.ids[8]]).selected_indices \
        .tolist() == [2, 3, 6]
    assert select(pool, "ifd", None, 3, scores=scores, pinned=[pool.ids[10]]).selected_indices \
        .tolist() == [10, 8, 2]


def test_longest_is_a_sort_by_response_tokens(tiny_llama) -> None:
    pool = _pool(40)
    scores = compute_row_scores(pool, "response_tokens", lm=tiny_llama)
    counts = [len(tiny_llama.tokenizer(r, add_special_tokens=False)["input_ids"])
              for r in pool.responses]
    assert scores.values.tolist() == counts
    want = sorted(range(len(pool)), key=lambda k: (-counts[k], k))
    sel = select(pool, "longest", None, 10, scores=scores)
    assert sel.selected_indices.tolist() == want[:10]
    assert sel.cost()["model_passes_computed"] == 0


def test_ifd_fl_is_the_top_ifd_share_then_facility_location(tiny_llama) -> None:
    from delift_core.lm.models import load_embedder

    pool = _pool(40)
    kernels = compute_kernels(pool, kind="embedding", embedder=load_embedder())
    scores = compute_row_scores(pool, "ifd", lm=tiny_llama)
    sel = select(pool, "ifd-fl", kernels, 5, scores=scores, keep=0.5)
    # by hand: the rows with IFD < 1, best first, the first half of the pool; FL among them
    helped = [k for k in np.argsort(-scores.values, kind="stable") if scores.values[k] < 1]
    kept = set(helped[:20])
    fl = select(pool, "fl", kernels, 5,
                banned=[pool.ids[k] for k in range(len(pool)) if k not in kept])
    assert sel.selected_indices.tolist() == fl.selected_indices.tolist()
    assert set(sel.selected_indices.tolist()) <= kept
    assert sel.params["kept_by_score"] == len(kept)
    # the rows the filter left out are recorded, so a verification never explores them
    assert set(sel.excluded.tolist()) == set(range(len(pool))) - kept


def test_a_stale_or_missing_score_file_is_refused(tmp_path: Path, tiny_llama) -> None:
    pool = _pool(8)
    save_row_scores(compute_row_scores(pool, "response_tokens", lm=tiny_llama), tmp_path)
    assert load_row_scores(tmp_path, pool).values.shape == (8,)
    rows = [dict(r) for r in pool.rows]
    rows[3]["output"] = rows[3]["output"] + " (edited)"
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SelectionError, match=r"1 of 8 rows differ .* rows 3 \(id 'pool-0004': "
                                             r"text changed\)"):
        load_row_scores(tmp_path / "row_scores.json", load_dataset(str(edited)))
    with pytest.raises(SelectionError, match="computed for 8 rows, the pool has 12"):
        load_row_scores(tmp_path, _pool(12))
    with pytest.raises(SelectionError, match="ranks by per-row 'ifd' scores"):
        select(pool, "ifd", None, 3)


def test_every_manifest_has_the_cost_and_the_cli_prints_it(tmp_path: Path) -> None:
    out = tmp_path / "fl"
    run = subprocess.run([sys.executable, "-m", "delift_core", "select", "--pool", "demo:pool",
                          "--kernel", "embedding", "--budget", "0.1", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "cost: 0 model passes computed" in run.stdout and "texts embedded" in run.stdout
    cost = json.loads((out / "manifest.json").read_text())["cost"]
    assert cost["texts_embedded"] + cost["texts_embedding_reused"] == 240
    assert cost["seconds"] >= cost["selection_seconds"] >= 0
    longest = tmp_path / "longest"
    run = subprocess.run([sys.executable, "-m", "delift_core", "select", "--pool", "demo:pool",
                          "--objective", "longest", "--budget", "10", "--out", str(longest)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    manifest = json.loads((longest / "manifest.json").read_text())
    assert manifest["kernel"] is None and manifest["row_scores"]["kind"] == "response_tokens"
    stale = tmp_path / "stale"
    run = subprocess.run([sys.executable, "-m", "delift_core", "select", "--pool",
                          str(ROOT / "delift_core/data/demo_data/target.jsonl"), "--objective",
                          "longest", "--budget", "5", "--scores", str(longest), "--out",
                          str(stale)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 2 and "computed for 240 rows, the pool has 40" in run.stderr
    assert not stale.exists()
