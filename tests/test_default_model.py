"""The real default model (packaged Gemma 3 270M) computes a small utility kernel.

Marked slow but run by default (CI runs it). It uses the user's real cache folder, where the first
call leaves the dequantised float weights (about 40 s once); the kernel blocks go to ``tmp_path``.
"""

from __future__ import annotations

import numpy as np
import pytest

from delift_core.data.dataset import load_dataset
from delift_core.kernels.utility_settings import (DEFAULT_EXAMPLE_TEMPLATE, DEFAULT_PLAIN_TEMPLATE,
                                                  UtilitySettings)
from delift_core.kernels.utility import UtilityKernel

pytestmark = [pytest.mark.slow, pytest.mark.real_cache]


@pytest.fixture(scope="module")
def default_lm():
    from delift_core.lm.models import load_causal_lm

    return load_causal_lm()


@pytest.fixture(scope="module")
def four_rows():
    """The first demo row of four different task families, so each row is its own best example."""
    pool = load_dataset("demo:pool")
    first: dict[str, int] = {}
    for k, row in enumerate(pool.rows):
        first.setdefault(row["family"], k)
    return pool.subset(list(first.values())[:4])


def test_default_model_utility_kernel(default_lm, four_rows, tmp_path):
    rows = four_rows
    engine = UtilityKernel(default_lm, UtilitySettings(), cache_root=tmp_path)
    res = engine.compute(rows, rows)
    v = res.values
    assert v.shape == (4, 4) and np.isfinite(v).all()
    assert res.row_ids == rows.ids == res.col_ids
    d_plain = np.array(res.meta["d_plain"])
    assert ((d_plain > 0) & (d_plain <= 1)).all()
    # UF = d_plain - d_with and d_with is in [0, 1]
    assert (v <= d_plain[:, None] + 1e-6).all() and (v >= d_plain[:, None] - 1 - 1e-6).all()

    # Seeing its own answer as the example helps a row more than another task's example does.
    diag, off = np.diag(v), v[~np.eye(4, dtype=bool)]
    assert diag.mean() > off.mean() + 0.05, v
    assert sum(v[i, i] == v[i].max() for i in range(4)) >= 3, v

    meta = res.meta
    tok = default_lm.tokenizer
    assert meta["model"] == "gemma-3-270m" and meta["model_fingerprint"].startswith("gemma3-270m")
    assert meta["plain_template"] == DEFAULT_PLAIN_TEMPLATE
    assert meta["example_template"] == DEFAULT_EXAMPLE_TEMPLATE
    assert meta["bos_first"] == (default_lm.bos_token_id is not None)
    assert meta["bos_token_id"] == default_lm.bos_token_id
    assert meta["eos_token_id"] == tok.eos_token_id and meta["score_eos"] is True
    assert meta["segments"]["plain"][0][1] == "prompt"
    assert "add_special_tokens=False" in meta["tokenisation"]
    _, plain, resp = engine.token_sequences(rows.prompts, rows.responses, [], [])
    assert all(r[-1] == tok.eos_token_id for r in resp)
    if meta["bos_first"]:
        assert all(p[0] == tok.bos_token_id for p in plain)

    again = UtilityKernel(default_lm, UtilitySettings(), cache_root=tmp_path).compute(rows, rows)
    assert again.meta["pairs_computed"] == 0
    np.testing.assert_array_equal(again.values, v)


def test_default_model_puts_bos_first_like_its_tokenizer(default_lm):
    tok = default_lm.tokenizer
    own = tok("Hello")["input_ids"]
    assert own[0] == tok.bos_token_id  # the tokenizer itself puts BOS first
    assert default_lm.bos_token_id == tok.bos_token_id
