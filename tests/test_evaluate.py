"""Evaluation: example choice, metrics, NLL on a stub, LoRA, the CLI and the app page.

Everything runs offline on a tiny randomly initialised Llama with a char-level tokenizer built
here; the CLI test uses the packaged sentence embedder; only the ``slow`` test loads Gemma.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from delift_core.data.dataset import load_dataset
from delift_core.evaluation.settings import EvalSettings, EvaluationCancelled, EvaluationError
from delift_core.evaluation.subsets import Subset, baseline_subsets, parse_int_list
from delift_core.evaluation.lora import attach_lora, lora_state, train_lora
from delift_core.evaluation.metrics import (cut_generation, exact_match, extract_final_answer,
                                            rouge_l)
from delift_core.evaluation.run import evaluate
from delift_core.evaluation.icl import icl_template, nearest_examples
from delift_core.evaluation.scoring import nll_and_distance
from delift_core.lm.models import CausalLM
from delift_core.lm.scorer import Scorer
from delift_core.kernels.utility_settings import DEFAULT_EXAMPLE_TEMPLATE, DEFAULT_PLAIN_TEMPLATE

ROOT = Path(__file__).resolve().parents[1]
CHARS = [chr(c) for c in range(32, 127)] + ["\n"]


def char_tokenizer():
    """A char-level fast tokenizer built in memory (no download)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3}
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<bos>", eos_token="<eos>")


def tiny_model(seed: int = 0):
    """A 2-layer random Llama over the char vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(CHARS) + 4, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=2048, pad_token_id=0, bos_token_id=2,
                      eos_token_id=3)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def lm() -> CausalLM:
    return CausalLM(model=tiny_model(), tokenizer=char_tokenizer(), name="tiny", source="test",
                    fingerprint="tiny-llama-test", device=torch.device("cpu"),
                    dtype=torch.float32)


class StubEmbedder:
    """Bag-of-characters unit vectors: deterministic, instant, no download."""

    delift_name = "stub-chars"

    def encode(self, texts, **_: object) -> np.ndarray:
        out = np.zeros((len(texts), 97), np.float32)
        for i, t in enumerate(texts):
            for c in t:
                out[i, min(ord(c), 126) - 30 if ord(c) >= 32 else 0] += 1
            out[i] /= max(1e-9, float(np.linalg.norm(out[i])))
        return out


# ---------------------------------------------------------------------------------- example choice


def test_nearest_examples_orders_most_similar_last_and_breaks_ties_by_index() -> None:
    subset = np.array([[1, 0], [0, 1], [0.8, 0.6], [1, 0]], np.float32)
    query = np.array([[1, 0], [0, 1]], np.float32)
    got = nearest_examples(query, subset, 2)
    # query 0: rows 0 and 3 tie at 1.0 (row 0 wins the tie, so it is last), then row 2
    assert got[0].tolist() == [3, 0]
    assert got[1].tolist() == [2, 1]
    assert nearest_examples(query, subset, 10).shape == (2, 4)
    assert nearest_examples(query, np.zeros((0, 2), np.float32), 3).shape == (2, 0)


def test_icl_template_matches_engine_templates() -> None:
    assert icl_template(0) == DEFAULT_PLAIN_TEMPLATE
    one = icl_template(1).replace("{example_prompt_0}", "{example_prompt}").replace(
        "{example_response_0}", "{example_response}")
    assert one == DEFAULT_EXAMPLE_TEMPLATE
    three = icl_template(3)
    assert three.count("Example:\n") == 3 and "examples as a guide" in three


def test_knn_examples_in_report(lm) -> None:
    pool = load_dataset("demo:pool")
    sub = Subset("s", pool.subset(range(12)))
    test = pool.subset([0, 5])  # items that are in the subset: their nearest example is themselves
    rep = evaluate([sub], test, lm=lm, embedder=StubEmbedder(),
                   settings=EvalSettings(shots=2, generate=False), use_cache=False)
    assert [it["examples"][-1] for it in rep.items] == [pool.ids[0], pool.ids[5]]
    assert all(len(it["examples"]) == 2 for it in rep.items)


# -------------------------------------------------------------------------------- text metrics


@pytest.mark.parametrize("text, expected", [
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", "72"),
    ("so the total is\n#### 1,200", "1200"),
    ("#### $18.", "18"),
    ("#### -3.50", "-3.5"),
    ("no marker, 42 at the end", None),
])
def test_extract_final_answer_reference(text: str, expected: str | None) -> None:
    assert extract_final_answer(text, reference=True) == expected


def test_extract_final_answer_prediction_and_exact_match() -> None:
    assert extract_final_answer("She has 3 then 5 apples, so 8") == "8"
    assert extract_final_answer("work 12 + 6 #### 18 and then 99") == "18"
    assert extract_final_answer("no digits here") is None
    assert exact_match("she pays $1,200.", "steps\n#### 1200") == 1.0
    assert exact_match("answer 19", "steps\n#### 18") == 0.0
    assert exact_match("anything", "a reference with no final answer") is None


def test_rouge_l_on_known_strings() -> None:
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert rouge_l("completely different words", "the cat sat") == 0.0
    # LCS "the cat the mat" = 4 of 6 prediction tokens and 4 of 6 reference tokens
    assert rouge_l("the cat saw the big mat", "the cat sat on the mat") == pytest.approx(4 / 6)


def test_cut_generation_stops_at_template_separators() -> None:
    assert cut_generation(" positive\n\n\nExample:\nmore") == "positive"
    assert cut_generation("a\nQuery:\nb") == "a"
    assert cut_generation("  plain  ") == "plain"


# ------------------------------------------------------------------------------------ NLL stub


class _Body(torch.nn.Module):
    """Hidden state = one-hot of the current token."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids, attention_mask=None, **_):
        class Out:
            pass

        out = Out()
        out.last_hidden_state = torch.nn.functional.one_hot(input_ids, self.vocab).float()
        return out


class BigramStub(torch.nn.Module):
    """A bigram LM with a fixed table: log p(next | current) = log_softmax(table[current])."""

    base_model_prefix = "body"

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.body = _Body(table.shape[0])
        self.head = torch.nn.Linear(table.shape[0], table.shape[1], bias=False)
        with torch.no_grad():
            self.head.weight.copy_(table.T)

        class Cfg:
            final_logit_softcapping = None

        self.config = Cfg()

    def get_output_embeddings(self):
        return self.head


def test_nll_and_distance_of_a_known_stub() -> None:
    table = torch.log(torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.25, 0.25], [0.2, 0.2, 0.6]]))
    model = BigramStub(table)
    seqs = [[0, 1, 2, 2], [2, 0]]
    lm = CausalLM(model=model, tokenizer=SimpleNamespace(pad_token_id=0), name="bigram",
                  source="test", fingerprint="bigram", device=torch.device("cpu"),
                  dtype=torch.float32)
    with torch.no_grad():
        logps = Scorer(lm).log_probs(seqs, [2, 1])
    # first sequence scores tokens 2 (after 1) and 2 (after 2): p = 0.25, 0.6
    nll, dist = nll_and_distance(logps[0])
    assert nll == pytest.approx(-(math.log(0.25) + math.log(0.6)) / 2, rel=1e-5)
    assert dist == pytest.approx(math.sqrt(((1 - 0.25) ** 2 + (1 - 0.6) ** 2) / 2), rel=1e-5)
    nll2, dist2 = nll_and_distance(logps[1])
    assert nll2 == pytest.approx(-math.log(0.2), rel=1e-5) and dist2 == pytest.approx(0.8)


# ---------------------------------------------------------------------------------------- LoRA


def test_lora_changes_adapters_and_lowers_training_loss(lm) -> None:
    data = load_dataset("demo:pool").subset(range(4))
    settings = EvalSettings(lora_steps=15, lora_batch_size=4, lora_lr=1e-2, lora_max_tokens=96,
                            lora_targets="q_proj,v_proj")
    model, rec = train_lora(lm, data, settings)
    after = lora_state(model)
    fresh = lora_state(attach_lora(lm, settings))
    assert after and set(after) == set(fresh)
    assert any(not torch.equal(after[k], fresh[k]) for k in after if "lora_B" in k)
    losses = rec["losses"]
    assert len(losses) == 15 and np.mean(losses[-3:]) < np.mean(losses[:3])
    # the shared base model was not modified
    assert not any("lora" in n for n, _ in lm.model.named_parameters())


def test_evaluate_lora_and_icl_with_baselines_and_cache(lm, tmp_path) -> None:
    pool = load_dataset("demo:pool")
    test = load_dataset("demo:target").subset(range(3))
    subs = [Subset("first", pool.subset(range(6)))] + baseline_subsets(
        pool, [6], ["random", "full", "none"], [0, 1])
    settings = EvalSettings(shots=1, max_new_tokens=4, lora_steps=2, lora_max_tokens=64)
    calls: list[tuple] = []
    rep = evaluate(subs, test, lm=lm, embedder=StubEmbedder(), settings=settings,
                   modes=("icl", "lora"), cache_root=tmp_path, progress=lambda *a: calls.append(a))
    assert len(rep.rows) == 2 * 5 and calls
    summ = rep.summary()
    rnd = [r for r in summ if r["kind"] == "random" and r["mode"] == "icl"][0]
    assert rnd["n_seeds"] == 2 and rnd["size"] == 6 and rnd["nll_sd"] is not None
    assert {r["size"] for r in summ if r["subset"] == "full"} == {len(pool)}
    md = rep.to_markdown()
    assert "| icl | random-6 | 6 | 0,1 |" in md and "±" in md
    fig = rep.figure()
    assert len(fig.data) >= 2
    paths = rep.write(tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert data["settings"]["shots"] == 1 and data["meta"]["model_fingerprint"] == "tiny-llama-test"
    assert paths["chart"].read_text().count("plotly") > 0
    again = evaluate(subs, test, lm=lm, embedder=StubEmbedder(), settings=settings,
                     modes=("icl", "lora"), cache_root=tmp_path)
    for a, b in zip(rep.rows, again.rows):
        assert a["nll"] == b["nll"] and a["rouge_l"] == b["rouge_l"]
    assert all(r.get("adapter_cached") for r in again.rows if r["mode"] == "lora" and r["size"])


def test_a_cancelled_evaluation_stops_at_the_next_batch_and_resumes_from_the_cache(
        lm, tmp_path) -> None:
    """Setting the cancel event stops the run at the next progress report (a scored batch or a
    LoRA step); what was scored is cached, so the rerun equals an uninterrupted run."""
    import threading

    pool = load_dataset("demo:pool")
    test = load_dataset("demo:target").subset(range(4))
    subs = [Subset("first", pool.subset(range(6)))] + baseline_subsets(pool, [6], ["random"],
                                                                      [0, 1])
    settings = EvalSettings(shots=1, max_new_tokens=2, batch_size=2, lora_steps=3,
                            lora_max_tokens=48)
    cancel = threading.Event()
    seen: list[tuple] = []

    def progress(label: str, done: int, total: int) -> None:
        seen.append((label, done, total))
        if label.startswith("icl random-6 seed 0") and done >= 2:
            cancel.set()  # mid-run: after the first scored batch of the second subset

    with pytest.raises(EvaluationCancelled):
        evaluate(subs, test, lm=lm, embedder=StubEmbedder(), settings=settings,
                 modes=("icl", "lora"), cache_root=tmp_path, progress=progress, cancel=cancel)
    assert seen[-1] == ("icl random-6 seed 0", 2, 4)  # nothing ran past the cancel
    assert not any(label.startswith("lora") for label, _, _ in seen)
    resumed: list[tuple] = []
    rep = evaluate(subs, test, lm=lm, embedder=StubEmbedder(), settings=settings,
                   modes=("icl", "lora"), cache_root=tmp_path,
                   progress=lambda *a: resumed.append(a))
    fresh = evaluate(subs, test, lm=lm, embedder=StubEmbedder(), settings=settings,
                     modes=("icl", "lora"), use_cache=False)
    assert [r["nll"] for r in rep.rows] == [r["nll"] for r in fresh.rows]
    assert len(rep.rows) == 6
    # LoRA training reports every step, so a cancel stops training too
    cancel = threading.Event()
    lora_seen: list[tuple] = []

    def stop_in_training(label: str, done: int, total: int) -> None:
        lora_seen.append((label, done, total))
        if label.endswith("LoRA training") and done == 1:
            cancel.set()

    with pytest.raises(EvaluationCancelled):
        evaluate(subs[:1], test, lm=lm, embedder=StubEmbedder(),
                 settings=EvalSettings(shots=1, max_new_tokens=2, lora_steps=3,
                                       lora_max_tokens=48, lora_lr=2e-3),
                 modes=("lora",), cache_root=tmp_path / "l", progress=stop_in_training,
                 cancel=cancel)
    assert lora_seen[-1] == ("lora first: LoRA training", 1, 3)


def test_evaluate_rejects_bad_input(lm) -> None:
    pool = load_dataset("demo:pool")
    with pytest.raises(EvaluationError, match="nothing to evaluate"):
        evaluate([], pool, lm=lm, embedder=StubEmbedder())
    with pytest.raises(EvaluationError, match="shots"):
        evaluate([Subset("a", pool)], pool, lm=lm, embedder=StubEmbedder(),
                 settings=EvalSettings(shots=-1))
    with pytest.raises(EvaluationError, match="pool has 240"):
        baseline_subsets(pool, [500], ["random"], [0])
    with pytest.raises(EvaluationError, match="need a pool"):
        baseline_subsets(None, [5], ["none", "full"], [0])
    with pytest.raises(EvaluationError, match="need a size"):
        baseline_subsets(pool, [], ["random"], [0])
    assert [b.kind for b in baseline_subsets(None, [5], ["none"], [0])] == ["none"]
    assert [len(b.data) for b in baseline_subsets(pool, [5, 5, 7], ["random"], [0, 1])] == \
        [5, 5, 7, 7]
    assert parse_int_list("0, 1,2,", "seeds") == [0, 1, 2]
    with pytest.raises(EvaluationError, match="seeds must be a comma list"):
        parse_int_list("0,x", "seeds")


# ----------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny model and tokenizer saved as a local folder, loadable by ``--model``."""
    d = tmp_path_factory.mktemp("tiny-model")
    tiny_model().save_pretrained(d)
    char_tokenizer().save_pretrained(d)
    return d


def test_cli_select_then_evaluate_end_to_end(tiny_model_dir, tmp_path, monkeypatch, capsys) -> None:
    from delift_core.cli import main

    monkeypatch.setenv("DELIFT_CACHE_DIR", str(tmp_path / "cache"))
    sel = tmp_path / "sel"
    assert main(["select", "--pool", "demo:pool", "--kernel", "embedding", "--budget", "6",
                 "--out", str(sel)]) == 0
    out = tmp_path / "eval"
    code = main(["evaluate", f"fl={sel}", "--test", "demo:target", "--test-limit", "3",
                 "--baselines", "random,none", "--seeds", "0,1", "--shots", "1",
                 "--max-new-tokens", "3", "--model", str(tiny_model_dir), "--out", str(out)])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    names = [(r["subset"], r["seed"]) for r in res["rows"]]
    assert names == [("fl", 0), ("random-6", 0), ("random-6", 1), ("none", None)]
    assert res["rows"][0]["subset_info"]["objective"] == "fl"
    assert (out / "results.md").exists() and (out / "chart.html").exists()
    printed = capsys.readouterr().out
    assert "| icl | fl | 6 |" in printed
    comp = [c for c in res["comparisons"] if c["metric"] == "nll"]
    assert len(comp) == 1 and comp[0]["subset"] == "fl" and comp[0]["n_seeds"] == 2
    assert comp[0]["versus"] == "random-6" and comp[0]["n_items"] == 3
    per_item = {(it["subset"], it["seed"], it["test_id"]): it["nll"] for it in res["items"]}
    diff = np.mean([per_item[("fl", 0, t)] - per_item[("random-6", s, t)]
                    for s in (0, 1) for t in {k[2] for k in per_item}])
    assert comp[0]["mean_diff"] == pytest.approx(diff)
    assert "Against random" in printed and "of 2 |" in printed


def test_cli_errors_exit_2(tiny_model_dir, tmp_path, capsys) -> None:
    from delift_core.cli import main

    assert main(["evaluate", str(tmp_path / "missing.jsonl"), "--test", "demo:target",
                 "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["evaluate", "--test", "demo:target", "--baselines", "random",
                 "--out", str(tmp_path / "o")]) == 2
    assert "need a pool" in capsys.readouterr().err
    assert main(["evaluate", "--test", "demo:target", "--out", str(tmp_path / "o")]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- the page


PAGE = ROOT / "pages" / "7_Evaluate.py"


def _page_app(tiny_model_dir: Path):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(PAGE), default_timeout=120)
    at.session_state["ev_model"] = str(tiny_model_dir)
    return at


def _wait_for_eval_jobs() -> None:
    import threading

    for t in threading.enumerate():
        if t.name.startswith("delift-evaluation-"):
            t.join(300)


def _small_evaluation_verdicts(at: Any) -> Any:
    """Run the page's evaluation small (2 test rows, 1 shot, random seeds 0 and 1, no
    generation), wait for it, and return its verdict table (the comparisons with random)."""
    at.session_state["ev_test_src"] = "demo:target"
    at.session_state["ev_test_limit"] = 2
    at.session_state["ev_shots"] = 1
    at.session_state["ev_generate"] = False
    at.session_state["ev_baselines"] = ["random"]
    at.session_state["ev_seeds"] = "0,1"
    at.button(key="ev_run").click().run()
    _wait_for_eval_jobs()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    return next(d.value for d in at.dataframe if "verdict" in d.value.columns)


def test_page_main_path(tiny_model_dir, tmp_path, monkeypatch) -> None:
    """The evaluation runs as a background job; the page adopts its report when it ends."""
    monkeypatch.setenv("DELIFT_CACHE_DIR", str(tmp_path / "cache"))
    at = _page_app(tiny_model_dir)
    at.run()
    assert not at.exception
    at.session_state["ev_subset_src"] = "demo:existing"
    at.session_state["ev_test_src"] = "demo:target"
    at.session_state["ev_test_limit"] = 2
    at.session_state["ev_max_new"] = 2
    at.session_state["ev_shots"] = 1
    at.session_state["ev_baselines"] = ["none"]
    at.button(key="ev_run").click().run()
    assert not at.exception
    assert not at.error, [e.value for e in at.error]
    _wait_for_eval_jobs()
    at.run()
    assert not at.exception
    assert not at.error, [e.value for e in at.error]
    assert at.session_state["ev_report"] is not None
    assert len(at.session_state["ev_report"].rows) == 2  # the subset and "none"
    assert len(at.dataframe) >= 1


def test_page_shows_what_each_selection_cost_beside_its_gain(tiny_model_dir, tmp_path,
                                                             monkeypatch) -> None:
    """The comparison with random carries the cost the subset's manifest recorded."""
    from delift_core.cli import main

    monkeypatch.setenv("DELIFT_CACHE_DIR", str(tmp_path / "cache"))
    sel = tmp_path / "sel"
    assert main(["select", "--pool", "demo:pool", "--kernel", "embedding", "--budget", "6",
                 "--out", str(sel)]) == 0
    cost = json.loads((sel / "manifest.json").read_text())["cost"]
    at = _page_app(tiny_model_dir)
    at.run()
    at.session_state["ev_subset_src"] = str(sel)
    table = _small_evaluation_verdicts(at)
    cells = set(table["what the selection cost"])
    assert cells == {f"0 passes · 240 texts · {cost['seconds']:.0f} s"}, cells


def test_page_evaluation_can_be_cancelled(tiny_model_dir, tmp_path, monkeypatch) -> None:
    """Cancel on a running evaluation: the job ends as cancelled, the page says so and keeps no
    half report; the button works again."""
    from studio import jobs

    monkeypatch.setenv("DELIFT_CACHE_DIR", str(tmp_path / "cache"))
    at = _page_app(tiny_model_dir)
    at.run()
    at.session_state["ev_subset_src"] = "demo:existing"
    at.session_state["ev_test_src"] = "demo:target"
    at.session_state["ev_test_limit"] = 20
    at.session_state["ev_baselines"] = ["random"]
    at.session_state["ev_seeds"] = "0,1,2,3,4,5"
    at.button(key="ev_run").click().run()
    job = jobs.job_registry().get(at.session_state["_sid"], "evaluation")
    assert job is not None and job.runs == 7
    job.cancel.set()
    _wait_for_eval_jobs()
    at.run()
    assert job.status == "cancelled" and job.run_index < 6
    assert any("cancelled" in w.value for w in at.warning)
    assert at.session_state["ev_report"] is None
    assert not at.button(key="ev_run").disabled


def test_page_error_path(tiny_model_dir) -> None:
    at = _page_app(tiny_model_dir)
    at.run()
    at.session_state["ev_subset_src"] = "/no/such/file.jsonl"
    at.session_state["ev_test_src"] = "demo:target"
    at.button(key="ev_run").click().run()
    assert not at.exception
    assert at.error and "no such file" in at.error[0].value
    at.session_state["ev_subset_src"] = "demo:existing"
    at.session_state["ev_seeds"] = "1,two"
    at.session_state["ev_baselines"] = ["random"]
    at.button(key="ev_run").click().run()
    assert not at.exception
    assert any("seeds must be a comma list" in e.value for e in at.error)


# ------------------------------------------------------------------------------------ real model


@pytest.mark.slow
@pytest.mark.real_cache
def test_real_model_icl_short(tmp_path) -> None:
    from delift_core.lm.models import load_causal_lm, load_embedder

    pool = load_dataset("demo:pool")
    rep = evaluate([Subset("s", pool.subset(range(10)))], load_dataset("demo:target").subset([0]),
                   lm=load_causal_lm(), embedder=load_embedder(),
                   settings=EvalSettings(shots=1, max_new_tokens=8), cache_root=tmp_path)
    r = rep.rows[0]
    assert 0 < r["distance"] < 1 and r["nll"] > 0 and 0 <= r["rouge_l"] <= 1


def _report(rows, items):
    from delift_core.evaluation.report import EvalReport

    return EvalReport(rows=rows, items=items, settings={"generate": False}, meta={})


def test_report_pairs_each_subset_with_the_random_seeds_of_its_size() -> None:
    """Hand-made scores: the subset is 0.5 better than seed 0 and 0.1 better than seed 1 on every
    item, 1.0 worse than seed 2; only the random rows of its size and mode are used."""
    def row(name, kind, seed, size, mode="icl"):
        return {"subset": name, "kind": kind, "mode": mode, "size": size, "seed": seed,
                "n_test": 3, "nll": 0.0, "distance": 0.0}

    rows = [row("fl", "subset", 0, 6), row("random-6", "random", 0, 6),
            row("random-6", "random", 1, 6), row("random-6", "random", 2, 6),
            row("random-9", "random", 0, 9), row("full", "full", None, 30)]
    base = {("fl", 0): 2.0, ("random-6", 0): 2.5, ("random-6", 1): 2.1, ("random-6", 2): 1.0,
            ("random-9", 0): 9.0, ("full", None): 0.0}
    items = [{"mode": "icl", "subset": n, "seed": sd, "test_id": f"t{k}", "nll": v + 0.01 * k,
              "distance": v / 10 + 0.001 * k}
             for (n, sd), v in base.items() for k in range(3)]
    comps = _report(rows, items).comparisons(n_boot=2000)
    nll = [c for c in comps if c["metric"] == "nll"]
    assert len(nll) == 1 and nll[0]["versus"] == "random-6" and nll[0]["random_seeds"] == [0, 1, 2]
    assert nll[0]["per_seed_diff"] == pytest.approx([-0.5, -0.1, 1.0])
    assert nll[0]["mean_diff"] == pytest.approx(0.4 / 3)
    assert nll[0]["seeds_beaten"] == 2 and nll[0]["verdict"] == "ties"
    assert nll[0]["low"] == pytest.approx(-0.5) and nll[0]["high"] == pytest.approx(1.0)
    md = _report(rows, items).to_markdown()
    assert "| icl | fl | NLL/token ↓ | +0.1333 [-0.5000, +1.0000] | 2 of 3 | ties |" in md


def test_report_chart_shows_every_random_seed() -> None:
    pytest.importorskip("plotly")
    rows = [{"subset": "random-6", "kind": "random", "mode": "icl", "size": 6, "seed": k,
             "n_test": 3, "nll": 2.0 + k, "distance": 0.5} for k in range(4)]
    fig = _report(rows, []).figure()
    seeds = [t for t in fig.data if t.name == "icl: each random seed"]
    assert len(seeds) == 2  # one per metric panel
    assert sorted(seeds[0].y) == [2.0, 3.0, 4.0, 5.0]


def _embedding_selection(rows: int = 40, budget: int = 6):
    """A FL selection on the demo pool's first rows with the embedding kernel (no model pass)."""
    from delift_core.data.dataset import load_dataset
    from delift_core.kernels.builder import compute_kernels
    from delift_core.selection.select import select

    pool = load_dataset("demo:pool").subset(range(rows))
    return select(pool, "fl", compute_kernels(pool, kind="embedding"), budget)


def test_method_subsets_choose_each_method_on_the_same_pool_kernels_and_budget(
        tiny_model_dir, tmp_path, monkeypatch) -> None:
    """Each method's subset is what selecting with it alone gives, at the selection's budget,
    with its cost; a method whose scores or kernel are missing is refused by name."""
    from delift_core.evaluation.subsets import method_subsets
    from delift_core.kernels.scores import compute_row_scores
    from delift_core.lm.models import load_causal_lm
    from delift_core.selection.select import select

    monkeypatch.setenv("DELIFT_CACHE_DIR", str(tmp_path / "cache"))
    sel = _embedding_selection()
    tokens = compute_row_scores(sel.pool, "response_tokens", lm=load_causal_lm(str(tiny_model_dir)))
    subs = method_subsets(sel, ["gc", "longest"], {"response_tokens": tokens})
    assert [s.name for s in subs] == ["gc (same budget)", "longest (same budget)"]
    assert all(s.size == 6 and s.kind == "subset" and "cost" in s.info for s in subs)
    longest = np.argsort(-tokens.values, kind="stable")[:6]
    assert sorted(subs[1].data.ids) == sorted(sel.pool.ids[i] for i in longest)
    gc = select(sel.pool, "gc", sel.kernels, 6)
    assert subs[0].data.ids == [sel.pool.ids[i] for i in gc.selected_indices]
    # GC's cost holds the kernel it selects on; the longest responses use none, so cost none
    embedded = sum(e["computed"] + e["reused"] for e in sel.kernels.meta["embeddings"].values())
    got = subs[0].info["cost"]
    assert got["texts_embedded"] + got["texts_embedding_reused"] == embedded == 40
    got = subs[1].info["cost"]
    assert got["texts_embedded"] == got["texts_embedding_reused"] == 0
    assert got["model_passes_computed"] == got["kernel_seconds"] == 0
    # without the lengths given, they are counted with the model's tokenizer: the same subset
    counted = method_subsets(sel, ["longest"], lm=load_causal_lm(str(tiny_model_dir)))
    assert counted[0].data.ids == subs[1].data.ids
    with pytest.raises(EvaluationError, match="IFD.*not computed for this pool.*Kernel page"):
        method_subsets(sel, ["ifd"], {"response_tokens": tokens})
    with pytest.raises(EvaluationError, match="needs a target kernel"):
        method_subsets(sel, ["flmi"])
    with pytest.raises(EvaluationError, match="baseline"):
        method_subsets(sel, ["random"])


def test_page_compares_other_methods_in_one_verdict_table(tiny_model_dir, tmp_path,
                                                          monkeypatch) -> None:
    """The current selection and the methods chosen beside it are scored in one run: one verdict
    table with a row per method, each with what its selection cost."""
    monkeypatch.setenv("DELIFT_CACHE_DIR", str(tmp_path / "cache"))
    at = _page_app(tiny_model_dir)
    at.session_state["selection"] = _embedding_selection()
    at.run()
    box = at.multiselect(key="ev_methods")
    # not FL (the selection's own), not IFD (no IFD scores computed), not the random baseline
    assert box.options == ["GC (graph cut)", "longest responses"]
    at.session_state["ev_methods"] = ["gc", "longest"]
    table = _small_evaluation_verdicts(at)
    from delift_core.evaluation.metrics import METRIC_LABELS

    nll = table[table["metric"] == METRIC_LABELS["nll"]]
    assert list(nll["subset"]) == ["selection (fl)", "gc (same budget)",
                                   "longest (same budget)"]
    assert all(c.endswith(" s") for c in nll["what the selection cost"]), list(nll["what the selection cost"])
