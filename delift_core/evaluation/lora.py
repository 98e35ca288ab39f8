"""LoRA fine-tuning on a subset (``peft``), for the ``lora`` evaluation mode.

A copy of the LM gets LoRA adapters, trained on the subset with the plain template and the loss
on the response tokens only, with the same settings for every subset; the trained adapter
tensors are cached under the subset content, the model and the training settings. The loss is
the true-token log-probability of :class:`delift_core.lm.scorer.Scorer`, the head the kernel and
the scoring use, run with gradients.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Callable

import numpy as np
import torch

from delift_core.stores.cache import BlockStore
from delift_core.data.dataset import Dataset
from delift_core.errors import optional_import
from delift_core.lm.models import CausalLM
from delift_core.lm.scorer import Scorer
from delift_core.lm.tokens import SegmentTokens
from delift_core.kernels.utility_settings import DEFAULT_PLAIN_TEMPLATE
from delift_core.evaluation.settings import EvalSettings, EvaluationError

__all__ = ["attach_lora", "lora_state", "train_lora", "trainable_params"]

logger = logging.getLogger(__name__)


def attach_lora(lm: CausalLM, settings: EvalSettings) -> Any:
    """A deep copy of ``lm``'s model with fresh LoRA adapters (seeded by ``lora_seed``)."""
    peft = optional_import("peft", "eval", "LoRA evaluation")
    torch.manual_seed(settings.lora_seed)
    base = copy.deepcopy(lm.model)
    targets = [t.strip() for t in settings.lora_targets.split(",") if t.strip()]
    config = peft.LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=0.0,
                        target_modules=targets, bias="none")
    try:
        return peft.get_peft_model(base, config)
    except ValueError as e:
        raise EvaluationError(f"LoRA could not be attached ({e}); set --lora-targets to module "
                              "names of this model") from None


def lora_state(model: Any) -> dict[str, torch.Tensor]:
    """The trainable LoRA tensors of a peft model, by name (detached copies)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def trainable_params(model: Any) -> int:
    """How many parameters of ``model`` are trained."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def _training_sequences(lm: CausalLM, data: Dataset, settings: EvalSettings
                        ) -> tuple[list[list[int]], list[int]]:
    """Plain-template prompt + response (+ EOS) per row, cut to ``lora_max_tokens`` (at most
    half of it response), and how many tokens of each are scored."""
    tok = SegmentTokens(lm, settings.max_field_tokens, settings.max_reference_tokens)
    seqs, n_scored = [], []
    for p, r in zip(data.prompts, data.responses):
        prompt = tok.prompt_ids(DEFAULT_PLAIN_TEMPLATE, {"prompt": p})
        ref = tok.response_ids(r)
        keep_ref = min(len(ref), max(1, settings.lora_max_tokens // 2))
        ref = ref[:keep_ref]
        prompt = prompt[-max(1, settings.lora_max_tokens - len(ref)):]
        seqs.append(prompt + ref)
        n_scored.append(len(ref))
    return seqs, n_scored


def _load_adapter(model: Any, names: list[str], store: BlockStore | None) -> list[float] | None:
    """Copy cached adapter tensors into ``model``; their training losses, or None if not cached."""
    if store is None or store.get("losses") is None or not all(
            store.get(f"w{k}") is not None for k in range(len(names))):
        return None
    with torch.no_grad():
        params = dict(model.named_parameters())
        for k, n in enumerate(names):
            params[n].copy_(torch.from_numpy(store.get(f"w{k}")))
    return store.get("losses").tolist()


def train_lora(lm: CausalLM, data: Dataset, settings: EvalSettings, *,
               progress: Callable[[int, int], None] | None = None,
               store: BlockStore | None = None) -> tuple[Any, dict]:
    """A copy of ``lm``'s model with LoRA adapters trained on ``data``, and its training record.

    Sequences are the plain template with the prompt, then the response and EOS; the loss is the
    mean NLL of the response tokens. Batches are drawn with ``lora_seed``. Adapters are cached.
    """
    model = attach_lora(lm, settings)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    cached = _load_adapter(model, names, store)
    if cached is not None:
        if progress:
            progress(settings.lora_steps, settings.lora_steps)
        model.eval()
        logger.debug("LoRA adapter for %d rows read from the cache", len(data))
        return model, {"losses": cached, "cached": True, "trainable_params": trainable_params(model)}
    seqs, n_scored = _training_sequences(lm, data, settings)
    rng = np.random.default_rng(settings.lora_seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                            lr=settings.lora_lr, weight_decay=0.0)
    scorer = Scorer(lm, model)
    model.train()
    losses = []
    order: list[int] = []
    for step in range(settings.lora_steps):
        batch = []
        while len(batch) < min(settings.lora_batch_size, len(seqs)):
            if not order:
                order = list(rng.permutation(len(seqs)))
            batch.append(order.pop())
        logps = scorer.log_probs([seqs[k] for k in batch], [n_scored[k] for k in batch])
        loss = -torch.cat(logps).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress:
            progress(step + 1, settings.lora_steps)
    model.eval()
    logger.debug("LoRA trained on %d rows: loss %.4f -> %.4f", len(data),
                 losses[0] if losses else float("nan"), losses[-1] if losses else float("nan"))
    if store is not None:
        params = dict(model.named_parameters())
        for k, n in enumerate(names):
            store.put(f"w{k}", params[n].detach().float().cpu().numpy())
        store.put("losses", np.asarray(losses, dtype=np.float64))
    return model, {"losses": losses, "cached": False, "trainable_params": trainable_params(model)}
