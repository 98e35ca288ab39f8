"""The evaluation run: every subset scored on the test set in each mode, with the same LM and
settings, into an :class:`~delift_core.evaluation.report.EvalReport`.

Per subset and mode the test items get their model inputs (ICL: the nearest subset examples in
the prompt; LoRA: the plain prompt, scored by a copy of the model trained on the subset), are
scored (:mod:`~delift_core.evaluation.scoring`), and their generations are measured
(:mod:`~delift_core.evaluation.metrics`). Item results are cached under the model fingerprint,
the dtype, the settings and the exact model input.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from delift_core.stores.cache import BlockStore, content_key
from delift_core.data.dataset import Dataset
from delift_core.lm.models import CausalLM, cache_dir
from delift_core.lm.tokens import SegmentTokens
from delift_core.kernels.utility_settings import DEFAULT_PLAIN_TEMPLATE
from delift_core.evaluation.icl import icl_prompts, icl_template
from delift_core.evaluation.lora import train_lora
from delift_core.evaluation.metrics import (STOP_MARKERS, cut_generation, extract_final_answer,
                                            rouge_l)
from delift_core.evaluation.report import EvalReport
from delift_core.evaluation.scoring import Item, score_items
from delift_core.evaluation.settings import (EVAL_VERSION, MODES, EvalSettings,
                                             EvaluationCancelled, EvaluationError)
from delift_core.evaluation.subsets import Subset, dataset_key

__all__ = ["ProgressFn", "evaluate"]

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]


def _check(subsets: Sequence[Subset], test: Dataset, modes: Sequence[str]) -> None:
    if not subsets:
        raise EvaluationError("nothing to evaluate: give a subset or ask for a baseline")
    if len(test) == 0:
        raise EvaluationError("the test set has no usable rows")
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise EvaluationError(f"unknown mode(s) {bad or modes}; use icl, lora or both")
    names = [s.name + (f"#{s.seed}" if s.seed is not None else "") for s in subsets]
    if len(set(names)) != len(names):
        raise EvaluationError("two subsets have the same name; name them NAME=PATH")


def _lora_inputs(lm: CausalLM, sub: Subset, settings: EvalSettings, base_key: dict, root: Path,
                 use_cache: bool, progress: ProgressFn, label: str
                 ) -> tuple[Any, str, dict[str, Any]]:
    """(model, adapter key, row extras) for the LoRA mode: the base model for an empty subset."""
    if not sub.size:
        return lm.model, "none", {}
    ad_key = {**base_key, "train": dataset_key(sub.data), "settings": settings.lora_key()}
    ad_store = BlockStore(root / "adapters", content_key(ad_key), ad_key) if use_cache else None
    def cb(done: int, total: int) -> None:
        progress(f"{label}: LoRA training", done, total)

    model, rec = train_lora(lm, sub.data, settings, progress=cb, store=ad_store)
    losses = rec["losses"]
    extra = {"train_loss_first": float(np.mean(losses[:2])) if losses else None,
             "train_loss_last": float(np.mean(losses[-2:])) if losses else None,
             "adapter_cached": rec["cached"], "trainable_params": rec["trainable_params"]}
    return model, content_key(ad_key), extra


def _row(sub: Subset, mode: str, test: Dataset, items: list[Item], gens: list[str],
         gold: list[str | None], embedder: Any, ref_emb: np.ndarray | None,
         settings: EvalSettings) -> tuple[dict[str, Any], dict[str, list]]:
    """The run's row of means and its per-item scores (by metric)."""
    from delift_core.kernels.embedding import embed_texts

    nll = [float(it.result[0]) for it in items]
    dist = [float(it.result[1]) for it in items]
    row: dict[str, Any] = {"subset": sub.name, "kind": sub.kind, "mode": mode,
                           "size": sub.size, "seed": sub.seed, "n_test": len(test),
                           "nll": float(np.mean(nll)), "distance": float(np.mean(dist)),
                           "rouge_l": None, "cosine": None, "exact_match": None,
                           "n_exact": sum(g is not None for g in gold)}
    per_item: dict[str, list] = {"nll": nll, "distance": dist, "rouge_l": [], "cosine": [],
                                 "exact_match": []}
    if settings.generate:
        rl = [rouge_l(g, r) for g, r in zip(gens, test.responses)]
        gen_emb = embed_texts(embedder, gens, use_cache=False)
        cos = [float(x) for x in np.sum(gen_emb * ref_emb, axis=1)]
        em = [None if g is None else float(extract_final_answer(p) == g)
              for p, g in zip(gens, gold)]
        row["rouge_l"] = float(np.mean(rl))
        row["cosine"] = float(np.mean(cos))
        scored = [x for x in em if x is not None]
        row["exact_match"] = float(np.mean(scored)) if scored else None
        per_item.update({"rouge_l": rl, "cosine": cos, "exact_match": em})
    return row, per_item


def evaluate(subsets: Sequence[Subset], test: Dataset, *, lm: CausalLM | None = None,
             embedder: Any = None, settings: EvalSettings | None = None,
             modes: Sequence[str] = ("icl",), progress: ProgressFn | None = None,
             use_cache: bool = True, cache_root: str | Path | None = None,
             keep_items: bool = True, cancel: threading.Event | None = None) -> EvalReport:
    """Score every subset on ``test`` in each mode; see :mod:`delift_core.evaluation`.

    ``progress(label, done, total)`` is called per scored item and LoRA step; setting ``cancel``
    stops the run at the next one with :class:`EvaluationCancelled` (scored items are cached).
    """
    settings = settings or EvalSettings()
    settings.validate()
    _check(subsets, test, modes)

    def tell(label: str, done: int, total: int) -> None:  # every report checks cancel
        if cancel is not None and cancel.is_set():
            raise EvaluationCancelled("evaluation cancelled")
        if progress is not None:
            progress(label, done, total)

    if lm is None:
        from delift_core.lm.models import load_causal_lm

        lm = load_causal_lm()
    if embedder is None:
        from delift_core.lm.models import load_embedder

        embedder = load_embedder()
    from delift_core.kernels.embedding import embed_texts

    started = time.time()
    root = Path(cache_root) if cache_root else cache_dir() / "evaluations"
    tell("embedding the test set", 0, 1)
    test_emb = embed_texts(embedder, test.prompts, use_cache=use_cache)
    tell("embedding the test set", 1, 1)
    ref_emb = embed_texts(embedder, test.responses, use_cache=use_cache) if settings.generate \
        else None
    tok = SegmentTokens(lm, settings.max_field_tokens, settings.max_reference_tokens)
    refs = [tok.response_ids(r) for r in test.responses]
    gold = [extract_final_answer(r, reference=True) for r in test.responses]
    rows: list[dict] = []
    items_out: list[dict] = []
    base_key = {"version": EVAL_VERSION, "model": lm.fingerprint, "dtype": str(lm.dtype),
                "bos": lm.bos_token_id, "eos": lm.eos_token_id}
    for mode in modes:
        for sub in subsets:
            label = f"{mode} {sub.name}" + (f" seed {sub.seed}" if sub.seed is not None else "")
            t0 = time.time()
            tell(label, 0, len(test))
            extra: dict[str, Any] = {}
            if mode == "icl":
                model = lm.model
                prompts, example_ids = icl_prompts(tok, sub, test, test_emb, embedder,
                                                   settings.shots, use_cache)
                run_key = content_key({**base_key, "mode": "icl", "settings": settings.icl_key()})
            else:
                model, adapter, extra = _lora_inputs(lm, sub, settings, base_key, root, use_cache,
                                                     tell, label)
                prompts = [tok.prompt_ids(DEFAULT_PLAIN_TEMPLATE, {"prompt": p})
                           for p in test.prompts]
                run_key = content_key({**base_key, "mode": "lora", "adapter": adapter,
                                       "settings": settings.icl_key() | {"shots": 0}})
                example_ids = [[] for _ in test.prompts]
            store = BlockStore(root / "items", run_key, {**base_key, "mode": mode}) \
                if use_cache else None
            items = [Item(content_key([prompts[i], refs[i]]), prompts[i], refs[i])
                     for i in range(len(test))]
            done = 0

            def tick(k: int, _label: str = label) -> None:
                nonlocal done
                done += k
                tell(_label, done, len(items))

            score_items(model, lm, items, settings, store, tick)
            if mode == "lora" and model is not lm.model:
                del model
            gens = [lm.tokenizer.decode([int(t) for t in it.result[4:]], skip_special_tokens=True)
                    if settings.generate else "" for it in items]
            gens = [cut_generation(g) for g in gens]
            row, per_item = _row(sub, mode, test, items, gens, gold, embedder, ref_emb, settings)
            row.update(extra)
            row["subset_info"] = sub.info
            row["seconds"] = round(time.time() - t0, 2)
            rows.append(row)
            logger.info("%s: NLL %.4f, distance %.4f (%.1f s)", label, row["nll"],
                        row["distance"], row["seconds"])
            if keep_items:
                for i in range(len(test)):
                    got = {m: v[i] if v else None for m, v in per_item.items()}
                    items_out.append({
                        "mode": mode, "subset": sub.name, "seed": sub.seed, "test_id": test.ids[i],
                        "examples": example_ids[i], "nll": got["nll"], "distance": got["distance"],
                        "generated": gens[i], "rouge_l": got["rouge_l"], "cosine": got["cosine"],
                        "exact_match": got["exact_match"]})
    s = asdict(settings)
    if "lora" not in modes:
        s = {k: v for k, v in s.items() if not k.startswith("lora_")}
    meta = {"model": lm.name, "model_fingerprint": lm.fingerprint,
            "dtype": str(lm.dtype).replace("torch.", ""), "device": str(lm.device),
            "embedder": getattr(embedder, "delift_name", type(embedder).__name__),
            "test": {"source": test.source, "rows": len(test), "text_sha256": test.text_sha256},
            "templates": {"icl": icl_template(settings.shots), "lora": DEFAULT_PLAIN_TEMPLATE},
            "example_choice": "k nearest subset prompts to the test prompt by cosine of "
                              "sentence embeddings; the most similar last",
            "exact_match": "reference answer after '####'; prediction: first number after its "
                           "last '####', else its last number; commas/$ dropped, numbers compared "
                           "as normalised numbers",
            "generation": f"greedy, at most {settings.max_new_tokens} new tokens, cut at "
                          f"{list(STOP_MARKERS)}",
            "truncated_fields": tok.truncated_fields, "seconds": round(time.time() - started, 2)}
    return EvalReport(rows=rows, items=items_out, settings=s, meta=meta)
