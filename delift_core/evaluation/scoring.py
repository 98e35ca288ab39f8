"""Scoring test items with a model (the base LM for ICL, a LoRA copy for LoRA): teacher-forced
NLL and DELIFT distance of the reference, then a greedy generation.

The true-token log-probabilities come from :class:`delift_core.lm.scorer.Scorer`, the same
vocabulary-sliced head the utility kernel uses, so evaluation and kernels cannot disagree on
how a token is scored. Results are cached per exact model input in a ``BlockStore``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from delift_core.stores.cache import BlockStore
from delift_core.lm.models import CausalLM
from delift_core.lm.scorer import Scorer, response_distance
from delift_core.lm.tokens import padded_batch
from delift_core.evaluation.settings import EvalSettings

__all__ = ["Item", "nll_and_distance", "pad_id", "greedy_continuations", "score_items"]

logger = logging.getLogger(__name__)


def nll_and_distance(logp: torch.Tensor) -> tuple[float, float]:
    """Mean negative log-likelihood per token and the DELIFT distance of one scored response."""
    lp = logp.detach().double().cpu()
    return float(-lp.mean()), response_distance(lp.exp())


def pad_id(lm: CausalLM) -> int:
    """The padding id for generation: the tokenizer's pad, else EOS, else 0."""
    pad = lm.tokenizer.pad_token_id
    if pad is None:
        pad = lm.eos_token_id
    return int(pad if pad is not None else 0)


@torch.inference_mode()
def greedy_continuations(model: Any, lm: CausalLM, prompts: Sequence[list[int]],
                         max_new: int) -> list[list[int]]:
    """Greedy continuations (left-padded batch), each cut after its first EOS."""
    pad = pad_id(lm)
    ids, mask, _ = padded_batch(prompts, pad, left=True)
    width = ids.shape[1]
    kwargs: dict[str, Any] = {"max_new_tokens": max_new, "do_sample": False, "pad_token_id": pad}
    if lm.eos_token_id is not None:
        kwargs["eos_token_id"] = lm.eos_token_id
    out = model.generate(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device),
                         **kwargs)[:, width:].cpu().tolist()
    result = []
    for row in out:
        if lm.eos_token_id is not None and lm.eos_token_id in row:
            row = row[: row.index(lm.eos_token_id)]
        result.append(row)
    return result


@dataclass
class Item:
    """One model input to score: prompt tokens, reference tokens and where its result goes."""

    key: str
    prompt: list[int]
    reference: list[int]
    result: np.ndarray | None = None


def score_items(model: Any, lm: CausalLM, items: list[Item], settings: EvalSettings,
                store: BlockStore | None, progress: Callable[[int], None] | None) -> None:
    """Fill ``item.result`` = [nll, distance, T, n_generated, *generated ids] (cached)."""
    todo = []
    for it in items:
        hit = store.get(it.key) if store is not None else None
        if hit is not None and hit.ndim == 1 and hit.shape[0] >= 4:
            it.result = hit
            if progress:
                progress(1)
        else:
            todo.append(it)
    # the same input may appear twice (e.g. two subsets choose the same examples): score it once
    unique: dict[str, list[Item]] = {}
    for it in todo:
        unique.setdefault(it.key, []).append(it)
    keys = sorted(unique, key=lambda k: len(unique[k][0].prompt) + len(unique[k][0].reference))
    logger.debug("scoring %d items (%d distinct inputs not cached)", len(items), len(keys))
    model.eval()
    scorer = Scorer(lm, model)
    for start in range(0, len(keys), settings.batch_size):
        group = [unique[k][0] for k in keys[start: start + settings.batch_size]]
        with torch.inference_mode():
            logps = scorer.log_probs([g.prompt + g.reference for g in group],
                                     [len(g.reference) for g in group])
        gens = (greedy_continuations(model, lm, [g.prompt for g in group], settings.max_new_tokens)
                if settings.generate else [[] for _ in group])
        for g, lp, gen in zip(group, logps, gens):
            nll, dist = nll_and_distance(lp)
            res = np.array([nll, dist, len(g.reference), len(gen), *gen], dtype=np.float64)
            if store is not None:
                store.put(g.key, res)
            for twin in unique[g.key]:
                twin.result = res
            if progress:
                progress(len(unique[g.key]))
