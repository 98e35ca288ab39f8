"""Shared fixtures: a character-level tokenizer, a bigram stub LM whose probabilities are a table
we choose, tiny randomly initialised real causal LMs, and an isolated kernel cache folder."""

from __future__ import annotations

import shutil
import string
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from delift_core.lm.models import CausalLM

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CHARS = sorted(set(string.printable))
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_cache: uses the user's real DELIFT cache folder "
                                       "(the dequantised default model lives there)")


_SESSION_CACHE: Path | None = None


@pytest.fixture(autouse=True)
def _isolated_cache(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                    tmp_path_factory: pytest.TempPathFactory) -> None:
    """Kernel and embedding caches go to a temporary folder, never the user's cache.

    The folder is shared by the session so that the embedder's cached embeddings of the demo data
    are reused across CLI tests; tests about the kernel cache use their own ``tmp_path``.
    """
    if request.node.get_closest_marker("real_cache"):
        return
    global _SESSION_CACHE
    if _SESSION_CACHE is None:
        _SESSION_CACHE = tmp_path_factory.mktemp("delift-cache")
    monkeypatch.setenv("DELIFT_CACHE_DIR", str(_SESSION_CACHE))
    # review decisions are kept per pool content: each test starts with none saved
    shutil.rmtree(_SESSION_CACHE / "decisions", ignore_errors=True)


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A pair store and embedding cache of the test's own, empty (what a first run finds)."""
    monkeypatch.setenv("DELIFT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def pool():
    """The demo pool (240 rows)."""
    from delift_core.data.dataset import load_dataset

    return load_dataset("demo:pool")


def learned_kernels(pool, lm, **kw):
    """The learned utility kernels of ``pool`` computed with ``lm`` (400 exact passes unless
    ``exact_passes`` is given; other keywords go to ``compute_kernels``)."""
    from delift_core.kernels.builder import compute_kernels

    kw.setdefault("exact_passes", 400)
    return compute_kernels(pool, kind="utility", lm=lm, learned=True, **kw)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "p3_sample.jsonl").exists():
        pytest.skip(f"the shared reference data folder {SHARED_DATA} is absent")
    return SHARED_DATA


# ----------------------------------------------------------------------------------------------
# Tokenizer


def make_char_tokenizer(add_bos: bool = True):
    """A character-level PreTrainedTokenizerFast over printable ASCII, built offline."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: k for k, t in enumerate(SPECIALS)}
    for c in CHARS:
        vocab[c] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>", add_bos_token=add_bos)


@pytest.fixture(scope="session")
def char_tokenizer():
    return make_char_tokenizer()


def tid(tok, ch: str) -> int:
    """The id of one character (or special token) in the char tokenizer."""
    return tok.convert_tokens_to_ids(ch)


# ----------------------------------------------------------------------------------------------
# A stub LM: p(next token | current token) is a table


class _OneHotBody(nn.Module):
    """The model body: hidden state = one-hot of the current token.

    It accepts the keyword arguments of a Hugging Face body (attention mask, position ids, a
    key/value cache) and ignores them: a bigram model needs no context. When asked for a cache it
    returns an empty one (no layers), which is all an engine that reuses prefixes can expand.
    """

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                use_cache: bool | None = None, **kwargs):
        hidden = nn.functional.one_hot(input_ids, self.vocab).float()
        past = SimpleNamespace(layers=[]) if use_cache else None
        return SimpleNamespace(last_hidden_state=hidden, past_key_values=past)


class BigramLM(nn.Module):
    """hidden = one-hot(current token); head weight = log(table).T, so softmax(logits) = table[cur]."""

    base_model_prefix = "model"

    def __init__(self, table: np.ndarray) -> None:
        super().__init__()
        table = np.asarray(table, dtype=np.float64)
        assert (table > 0).all() and np.allclose(table.sum(axis=1), 1)
        v = table.shape[0]
        self.model = _OneHotBody(v)
        self.lm_head = nn.Linear(v, v, bias=False)
        with torch.no_grad():
            self.lm_head.weight.copy_(torch.tensor(np.log(table).T, dtype=torch.float32))
        self.config = SimpleNamespace(final_logit_softcapping=None)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head


def bigram_table(vocab: int, fixed: dict[tuple[int, int], float]) -> np.ndarray:
    """A row-stochastic table with the given entries; each row's remaining mass is spread evenly."""
    table = np.zeros((vocab, vocab))
    for a in range(vocab):
        given = {b: p for (r, b), p in fixed.items() if r == a}
        rest = 1.0 - sum(given.values())
        assert rest > 0
        others = [b for b in range(vocab) if b not in given]
        table[a, others] = rest / len(others)
        for b, p in given.items():
            table[a, b] = p
    return table


def wrap_lm(model: nn.Module, tok, name: str) -> CausalLM:
    return CausalLM(model=model.eval(), tokenizer=tok, name=name, source="tests",
                    fingerprint=f"{name}-test", device=torch.device("cpu"), dtype=torch.float32)


# ----------------------------------------------------------------------------------------------
# Tiny randomly initialised real causal LMs


def make_tiny_lm(kind: str, tok, seed: int = 0) -> CausalLM:
    """A 2-layer, hidden-32 Llama or Gemma 3 with the char tokenizer's vocabulary, random weights.

    The weights are scaled up from the default init so the next-token distributions are far from
    uniform and utilities are not all ~0.
    """
    torch.manual_seed(seed)
    common = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                  max_position_embeddings=1024, pad_token_id=tid(tok, "<pad>"),
                  bos_token_id=tid(tok, "<bos>"), eos_token_id=tid(tok, "<eos>"),
                  initializer_range=0.3)
    if kind == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(**common))
    elif kind == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        model = Gemma3ForCausalLM(Gemma3TextConfig(
            **common, sliding_window=16, layer_types=["sliding_attention", "full_attention"],
            final_logit_softcapping=5.0))
    else:
        raise ValueError(kind)
    return wrap_lm(model.float(), tok, f"tiny-{kind}-{seed}")


@pytest.fixture(scope="session")
def tiny_llama(char_tokenizer) -> CausalLM:
    return make_tiny_lm("llama", char_tokenizer)
