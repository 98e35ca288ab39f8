"""The DELIFT utility kernel: the distance, the token sequences, and UF(i, j) on a stub LM with
known probabilities (checked against values worked out by hand) and on tiny real causal LMs
(checked against an independent one-pair-at-a-time computation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from delift_core.lm.scorer import Scorer, response_distance
from delift_core.lm.tokens import template_segments
from delift_core.kernels.utility_settings import (DEFAULT_EXAMPLE_TEMPLATE, DEFAULT_PLAIN_TEMPLATE,
                                                  Texts, UtilitySettings)
from delift_core.kernels.utility import UtilityKernel
from delift_core.kernels.matrices import minmax_scale

from conftest import BigramLM, bigram_table, make_char_tokenizer, make_tiny_lm, tid, wrap_lm


def d_hand(*p: float) -> float:
    """d = ||1 - p||_2 / sqrt(T), written out."""
    return math.sqrt(sum((1 - x) ** 2 for x in p) / len(p))


# ----------------------------------------------------------------------------------------------
# The distance


def test_response_distance_by_hand():
    assert response_distance(torch.tensor([0.5, 0.25])) == pytest.approx(
        math.sqrt(0.25 + 0.5625) / math.sqrt(2), abs=1e-12)
    assert response_distance(torch.tensor([0.5, 0.25])) == pytest.approx(0.6373774391990981)
    assert response_distance(torch.ones(7)) == 0.0
    assert response_distance(torch.zeros(3)) == pytest.approx(1.0)
    assert response_distance(torch.tensor([0.9])) == pytest.approx(0.1)


def test_minmax_scale():
    v = np.array([[-1.0, 0.0], [1.0, 3.0]])
    np.testing.assert_allclose(minmax_scale(v), [[0, 0.25], [0.5, 1]])
    assert (minmax_scale(np.full((2, 2), 5.0)) == 0).all()


# ----------------------------------------------------------------------------------------------
# A bigram stub LM: p(next | current) is a table chosen here


@pytest.fixture(scope="module")
def stub(char_tokenizer):
    t = char_tokenizer
    a, b, c, eos = tid(t, "a"), tid(t, "b"), tid(t, "c"), tid(t, "<eos>")
    table = bigram_table(len(t), {
        (a, a): 0.5, (a, b): 0.25, (a, c): 0.2,
        (b, a): 0.1, (b, c): 0.3, (b, eos): 0.5,
        (c, a): 0.6, (c, c): 0.3, (c, eos): 0.05,
    })
    return wrap_lm(BigramLM(table), t, "bigram-stub")


def test_stub_lm_gives_the_table(stub):
    t = stub.tokenizer
    ids = torch.tensor([[tid(t, "a"), tid(t, "b"), tid(t, "c")]])
    hidden = stub.model.model(input_ids=ids).last_hidden_state
    probs = torch.softmax(stub.model.get_output_embeddings()(hidden), -1)[0]
    assert probs[0, tid(t, "b")].item() == pytest.approx(0.25, abs=1e-6)
    assert probs[1, tid(t, "<eos>")].item() == pytest.approx(0.5, abs=1e-6)
    assert probs[2, tid(t, "a")].item() == pytest.approx(0.6, abs=1e-6)


def test_token_sequences_bos_segments_eos(stub):
    tok = stub.tokenizer
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    engine = UtilityKernel(stub, UtilitySettings(), use_cache=False)
    _, plain, resp = engine.token_sequences(["Hi there"], ["ok"], [], [])
    lit1, lit2 = DEFAULT_PLAIN_TEMPLATE.split("{prompt}")
    assert plain[0] == [tid(tok, "<bos>")] + enc(lit1) + enc("Hi there") + enc(lit2)
    assert resp[0] == enc("ok") + [tid(tok, "<eos>")]
    assert [f for _, f in template_segments(DEFAULT_EXAMPLE_TEMPLATE)] == [
        "example_prompt", "example_response", "prompt", None]

    no_eos = UtilityKernel(stub, UtilitySettings(score_eos=False, max_response_tokens=3,
                                                 max_field_tokens=2), use_cache=False)
    tk, plain, resp = no_eos.token_sequences(["Hi there"], ["okay"], [], [])
    assert resp[0] == enc("oka")
    assert plain[0][-len(enc(lit2)) - 2:] == enc("Hi") + enc(lit2)
    assert tk.truncated_responses == 1 and tk.truncated_fields == 1

    no_bos = wrap_lm(stub.model, make_char_tokenizer(add_bos=False), "bigram-stub-nobos")
    assert no_bos.bos_token_id is None
    _, plain, _ = UtilityKernel(no_bos, use_cache=False).token_sequences(["x"], ["y"], [], [])
    assert plain[0] == enc(lit1) + enc("x") + enc(lit2)


# Plain: "{prompt}" then the response; with an example: "{prompt}{example_response}
# {example_prompt}", so the first response token of target i is predicted from the last character
# of example j's prompt, and the bigram table fixes every probability.
HAND = UtilitySettings(plain_template="{prompt}",
                       example_template="{prompt}{example_response}{example_prompt}",
                       batch_size=4, block_size=2)
T_PROMPTS, T_RESPS = ["xa", "yb"], ["ab", "c"]
E_PROMPTS, E_RESPS = ["qa", "qb", "qc"], ["zz", "z", "zzz"]


def test_utility_on_stub_by_hand(stub, tmp_path):
    res = UtilityKernel(stub, HAND, cache_root=tmp_path).compute(
        Texts(T_PROMPTS, T_RESPS, ["t0", "t1"]), Texts(E_PROMPTS, E_RESPS, ["e0", "e1", "e2"]))
    # target 0 = "xa" -> "ab" <eos>: p(a|a)=.5, p(b|a)=.25, p(eos|b)=.5
    # target 1 = "yb" -> "c" <eos>:  p(c|b)=.3, p(eos|c)=.05
    d_plain = [d_hand(0.5, 0.25, 0.5), d_hand(0.3, 0.05)]
    # after example j the first response token follows 'a', 'b' or 'c'
    d_with = [[d_hand(0.5, 0.25, 0.5), d_hand(0.1, 0.25, 0.5), d_hand(0.6, 0.25, 0.5)],
              [d_hand(0.2, 0.05), d_hand(0.3, 0.05), d_hand(0.3, 0.05)]]
    expected = np.array(d_plain)[:, None] - np.array(d_with)
    assert res.values.shape == (2, 3)
    np.testing.assert_allclose(res.values, expected, atol=1e-6)
    assert res.values[0, 0] == pytest.approx(0, abs=1e-6)
    assert res.values[0, 2] == pytest.approx(d_hand(.5, .25, .5) - d_hand(.6, .25, .5), abs=1e-6)
    np.testing.assert_allclose(res.meta["d_plain"], d_plain, atol=1e-6)
    assert res.row_ids == ["t0", "t1"] and res.col_ids == ["e0", "e1", "e2"]
    assert res.meta["shape"] == [2, 3]
    assert res.meta["pairs_computed"] == 2 + 6
    assert res.meta["bos_first"] is True and res.meta["bos_token_id"] == tid(stub.tokenizer,
                                                                             "<bos>")
    assert res.meta["score_eos"] is True
    assert res.meta["plain_template"] == "{prompt}"


def test_engine_gives_freed_memory_back_between_work_units(stub, tmp_path, monkeypatch):
    """Each finished work unit hands the allocator's free memory back (rate-limited): without
    it a 16,248-row learned kernel's process grew past 4 GB of freed-but-kept heap."""
    import sys

    from delift_core.kernels import utility
    from delift_core.lm import memory

    calls = []
    monkeypatch.setattr(utility, "release_free_memory", lambda: calls.append(1))
    res = UtilityKernel(stub, HAND, cache_root=tmp_path).compute(
        Texts(T_PROMPTS, T_RESPS, ["t0", "t1"]), Texts(E_PROMPTS, E_RESPS, ["e0", "e1", "e2"]))
    assert res.meta["pairs_computed"] == 8
    assert len(calls) == 2  # three examples in blocks of two: two work units
    if sys.platform.startswith("linux"):  # glibc: trims, then waits out the interval
        assert memory.release_free_memory(min_interval=0.0) is True
        assert memory.release_free_memory(min_interval=3600.0) is False


def test_utility_on_stub_without_eos_and_truncated(stub):
    s = UtilitySettings(plain_template=HAND.plain_template,
                        example_template=HAND.example_template, score_eos=False,
                        max_response_tokens=1)
    res = UtilityKernel(stub, s, use_cache=False).compute(Texts(T_PROMPTS, T_RESPS),
                                                          Texts(E_PROMPTS, E_RESPS))
    # responses cut to "a" and "c", no EOS scored: one probability each
    # (T = 1, so d = 1 - p)
    expected = np.array([[0.5 - 0.5, 0.1 - 0.5, 0.6 - 0.5],
                         [0.2 - 0.3, 0.3 - 0.3, 0.3 - 0.3]])
    np.testing.assert_allclose(res.values, expected, atol=1e-6)
    assert res.meta["score_eos"] is False
    assert res.meta["truncated_responses"] == 1


def test_context_free_model_gives_zero_utility_with_default_templates(stub):
    """Both default templates end in the same literal, so a bigram model cannot be helped."""
    res = UtilityKernel(stub, UtilitySettings(), use_cache=False).compute(
        Texts(["What is 2+2?", "Name a colour"], ["4", "blue"]),
        Texts(["Say hi", "Add 1+1"], ["hi", "2"]))
    np.testing.assert_allclose(res.values, 0, atol=1e-6)


def test_settings_are_validated(stub):
    with pytest.raises(ValueError, match="plain_template"):
        UtilityKernel(stub, UtilitySettings(plain_template="no field"))
    with pytest.raises(ValueError, match="example_template"):
        UtilityKernel(stub, UtilitySettings(example_template="{prompt} {example_prompt}"))
    with pytest.raises(ValueError):
        UtilityKernel(stub, UtilitySettings(batch_size=0))


# ----------------------------------------------------------------------------------------------
# Tiny randomly initialised real causal LMs: batched engine == one pair at a time


def reference_utility(lm, settings, t_prompts, t_resps, e_prompts, e_resps) -> np.ndarray:
    """UF from full, unpadded forward passes of one sequence at a time (no engine code).

    With a character tokenizer, tokenising the formatted template in one piece gives the same ids
    as the engine's segment-by-segment tokenisation.
    """
    tok = lm.tokenizer
    enc = lambda s: list(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    bos, eos = [tok.bos_token_id], [tok.eos_token_id]

    @torch.inference_mode()
    def dist(prompt_text: str, response: str) -> float:
        prompt, resp = bos + enc(prompt_text), enc(response) + eos
        ids = torch.tensor([prompt + resp])
        logits = lm.model(input_ids=ids).logits[0].double()
        probs = torch.softmax(logits[len(prompt) - 1: ids.shape[1] - 1], -1)
        p = probs[torch.arange(len(resp)), torch.tensor(resp)]
        return math.sqrt(float(((1 - p) ** 2).mean()))

    out = np.zeros((len(t_prompts), len(e_prompts)))
    for i, (tp, tr) in enumerate(zip(t_prompts, t_resps)):
        plain = dist(settings.plain_template.format(prompt=tp), tr)
        for j, (ep, er) in enumerate(zip(e_prompts, e_resps)):
            out[i, j] = plain - dist(settings.example_template.format(
                prompt=tp, example_prompt=ep, example_response=er), tr)
    return out


TINY_T = (["What is 2+2?", "Translate 'cat' to French.", "Sort: 3 1 2"],
          ["4", "chat", "1 2 3, sorted in ascending order"])
TINY_E = (["What is 3+5?", "Translate 'dog' to French.", "Give a synonym of big.",
           "Sort: 9 7 8"], ["8", "chien", "large", "7 8 9"])


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_batched_engine_equals_one_pair_at_a_time(kind, char_tokenizer, tmp_path):
    lm = make_tiny_lm(kind, char_tokenizer, seed=1)
    settings = UtilitySettings(batch_size=16, block_size=3)
    batched = UtilityKernel(lm, settings, cache_root=tmp_path / "a").compute(Texts(*TINY_T),
                                                                             Texts(*TINY_E))
    ref = reference_utility(lm, settings, *TINY_T, *TINY_E)
    assert batched.values.shape == (3, 4)
    assert np.abs(ref).max() > 1e-3, "the tiny model should give non-trivial utilities"
    np.testing.assert_allclose(batched.values, ref, atol=1e-5, rtol=0)

    single = UtilityKernel(lm, UtilitySettings(batch_size=1, block_size=1), use_cache=False) \
        .compute(Texts(*TINY_T), Texts(*TINY_E))
    np.testing.assert_allclose(batched.values, single.values, atol=1e-5, rtol=0)
    np.testing.assert_allclose(batched.meta["d_plain"], single.meta["d_plain"], atol=1e-6)


def test_progress_reports_every_pair(tiny_llama):
    seen = []
    UtilityKernel(tiny_llama, UtilitySettings(batch_size=5, block_size=2), use_cache=False) \
        .compute(Texts(*TINY_T), Texts(*TINY_E), progress=lambda d, t: seen.append((d, t)))
    total = 3 * 4 + 3
    assert seen[-1] == (total, total)
    assert all(t == total for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_a_token_outside_the_output_layer_is_a_clear_error(tiny_llama):
    scorer = Scorer(tiny_llama)
    vocab = tiny_llama.model.get_output_embeddings().weight.shape[0]
    hidden = torch.zeros(2, tiny_llama.model.config.hidden_size)
    p = scorer.p_true(hidden, torch.tensor([0, vocab - 1]))
    assert torch.allclose(p, torch.full((2,), 1.0 / vocab))  # zero hidden state: uniform
    with pytest.raises(ValueError, match="outside the model's output layer"):
        scorer.p_true(hidden, torch.tensor([0, vocab]))


def test_progress_counts_only_scored_pairs_so_the_bar_never_waits_for_the_head(
        tiny_llama, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each progress report comes after the head has scored the batch it reports (the bar used
    to reach 100 % and then wait for the last head batch); every sequence is reported once."""
    heads: list[int] = []
    real = Scorer.p_true

    def counted(self, hidden, targets):
        heads.append(hidden.shape[0])
        return real(self, hidden, targets)

    monkeypatch.setattr(Scorer, "p_true", counted)
    reports: list[tuple[int, int]] = []  # (head calls so far, done)
    rows = Texts([f"question {k} about {'x' * k}" for k in range(6)],
                 [f"answer {k}" for k in range(6)])
    uk = UtilityKernel(tiny_llama, UtilitySettings(batch_size=4), use_cache=False)
    uk.compute(rows, rows, progress=lambda done, total: reports.append((len(heads), done)))
    assert reports[-1][1] == 6 * 6 + 6
    calls = [h for h, _ in reports]
    assert all(c >= 1 for c in calls) and calls == sorted(calls)
    assert len(set(calls)) == len(calls)  # a head call before each report: scored, not queued
