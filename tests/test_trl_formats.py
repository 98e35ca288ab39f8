"""TRL's dataset formats in and out: conversational prompt/completion (lists of messages), messages
with a system turn, standard text prompt/completion; the layout is kept on export, and the
exported subset trains straight away in TRL's SFTTrainer (a tiny random model, offline)."""

from __future__ import annotations

import json

import datasets
import pytest
import torch

from conftest import make_char_tokenizer
from delift_core.data.dataset import load_dataset
from delift_core.errors import DataError
from delift_core.outputs.export import export_selection
from delift_core.selection.select import select

CONVERSATIONAL = [
    {"id": f"c{k}",
     "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"q{k}?"}],
     "completion": [{"role": "assistant", "content": f"a{k}"}]} for k in range(6)]
MESSAGES = [
    {"messages": [{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": f"hi {k}"},
                  {"role": "assistant", "content": f"hello {k}"}]} for k in range(6)]
STANDARD = [{"prompt": f"2+{k}=", "completion": str(2 + k)} for k in range(6)]


def _jsonl(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_conversational_prompt_completion_is_read(tmp_path):
    ds = load_dataset(_jsonl(tmp_path, CONVERSATIONAL))
    assert ds.layout == "prompt_completion" and len(ds) == 6
    assert ds.prompts[0] == "System: Be brief.\n\nUser: q0?"
    assert ds.responses[0] == "a0"


def test_conversational_prompt_with_only_a_user_turn_is_its_text(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": "Name a colour."}],
             "completion": [{"role": "assistant", "content": "Blue."}]}]
    ds = load_dataset(_jsonl(tmp_path, rows))
    assert (ds.prompts, ds.responses) == (["Name a colour."], ["Blue."])


def test_messages_with_a_system_turn_are_read(tmp_path):
    ds = load_dataset(_jsonl(tmp_path, MESSAGES))
    assert ds.layout == "messages"
    assert ds.prompts[2] == "System: You are terse.\n\nUser: hi 2" and ds.responses[2] == "hello 2"


def test_a_list_prompt_that_is_not_messages_names_the_row_and_column(tmp_path):
    rows = [STANDARD[0], {"prompt": ["just", "words"], "completion": "x"}]
    with pytest.raises(DataError, match=r"data.jsonl: line 2: column 'prompt' holds a list that "
                                        r"is not a list of messages"):
        load_dataset(_jsonl(tmp_path, rows))


@pytest.mark.parametrize("rows", [CONVERSATIONAL, MESSAGES, STANDARD],
                         ids=["conversational", "messages", "standard"])
@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "csv", "hf"])
def test_layout_is_kept_on_export_and_reads_back_the_same(tmp_path, rows, fmt):
    pool = load_dataset(_jsonl(tmp_path, rows))
    sel = select(pool, "random", None, 3, seed=2)
    paths = export_selection(sel, tmp_path / "out", fmt)
    again = load_dataset(paths[f"selected.{fmt}"])
    idx = list(sel.selected_indices)
    assert again.layout == pool.layout
    assert again.prompts == [pool.prompts[k] for k in idx]
    assert again.responses == [pool.responses[k] for k in idx]
    if fmt in ("jsonl", "json"):  # the rows themselves, lists of messages included
        assert again.rows == [pool.rows[k] for k in idx]


def _tiny_model_and_tokenizer():
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_char_tokenizer()
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>"
                         "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(cfg), tok


@pytest.mark.parametrize("rows", [CONVERSATIONAL, MESSAGES, STANDARD],
                         ids=["conversational", "messages", "standard"])
@pytest.mark.parametrize("fmt", ["jsonl", "hf"])
def test_exported_subset_trains_in_trl_sft(tmp_path, rows, fmt):
    """What the README promises: `delift select ... --format jsonl|hf`, then TRL reads the file
    (datasets.load_dataset("json", ...) / load_from_disk) and trains on it, no conversion."""
    trl = pytest.importorskip("trl")
    from trl.data_utils import is_conversational

    pool = load_dataset(_jsonl(tmp_path, rows))
    sel = select(pool, "random", None, 4, seed=0)
    paths = export_selection(sel, tmp_path / "out", fmt)
    train = (datasets.load_dataset("json", data_files=str(paths["selected.jsonl"]), split="train")
             if fmt == "jsonl" else datasets.load_from_disk(str(paths["selected.hf"])))
    assert len(train) == 4
    assert is_conversational(train[0]) is (rows is not STANDARD)
    model, tok = _tiny_model_and_tokenizer()
    args = trl.SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=2,
                         per_device_train_batch_size=2, report_to="none", use_cpu=True,
                         save_strategy="no", max_length=64, disable_tqdm=True)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tok)
    first = trainer.train_dataset[0]
    masked = sum(t == -100 for t in first["labels"])
    # TRL read the layout: prompt/completion trains on the completion only, messages on it all
    assert 0 < len(first["input_ids"]) - masked
    assert (masked > 0) is (rows is not MESSAGES)
    result = trainer.train()
    assert result.global_step == 2 and torch.isfinite(torch.tensor(result.training_loss))


@pytest.mark.slow
@pytest.mark.real_cache
def test_exported_conversational_subset_trains_the_packaged_smollm2(tmp_path):
    """The README's example as written: the packaged SmolLM2 (offline) and its own chat template
    train one step on an exported conversational subset."""
    import copy

    trl = pytest.importorskip("trl")
    from delift_core.lm.models import load_causal_lm

    pool = load_dataset(_jsonl(tmp_path, CONVERSATIONAL))
    paths = export_selection(select(pool, "random", None, 2, seed=0), tmp_path / "out", "jsonl")
    train = datasets.load_dataset("json", data_files=str(paths["selected.jsonl"]), split="train")
    lm = load_causal_lm("smollm2-135m-instruct")
    model = copy.deepcopy(lm.model)  # the loaded model is shared in this process: train a copy
    args = trl.SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=1,
                         per_device_train_batch_size=2, report_to="none", use_cpu=True,
                         save_strategy="no", max_length=64, disable_tqdm=True)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=train,
                             processing_class=lm.tokenizer)
    text = lm.tokenizer.decode(trainer.train_dataset[0]["input_ids"])
    assert "<|im_start|>assistant\na" in text  # SmolLM2's own chat template was applied
    result = trainer.train()
    assert result.global_step == 1 and 0 < result.training_loss < 20
