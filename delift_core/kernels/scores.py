"""Per-row scores that cheap selection heuristics rank by: IFD and response length in tokens.

- **IFD** (instruction-following difficulty; Li et al., "From Quantity to Quality", NAACL 2024,
  and Superfiltering, ACL 2024): the mean cross-entropy of the response given the instruction
  divided by its mean cross-entropy alone, from two teacher-forced passes of the chosen causal LM.
  Below 1 the instruction helps the model answer; at or above 1 it does not (Superfiltering drops
  those rows).
- **Response tokens**: the length of the response in the chosen model's tokens ("Long Is More
  for Alignment", Zhao et al., 2024); no model pass, only its tokenizer.

Scores are an artefact of their own beside kernels: cached by content in the cache folder (a
row's score is computed once per model, precision and settings), saved with the row hashes they
were computed for (``row_scores.json``), and refused for rows whose text has changed since.

The conditioned pass is the same forward pass as the utility kernel's plain pass (the prompt in
the plain template, then the response), but the pair store keeps that pass's DELIFT distance, not
its cross-entropy, so IFD computes its own passes and says so in its record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from delift_core.data.dataset import Dataset
from delift_core.errors import DataError, SelectionError
from delift_core.kernels.builder import differing_rows, row_hashes
from delift_core.kernels.utility_settings import KernelCancelled, UtilitySettings
from delift_core.lm.scorer import Scorer
from delift_core.lm.tokens import SegmentTokens
from delift_core.stores.cache import atomic_write

__all__ = ["ROW_SCORES", "RowScores", "compute_row_scores", "save_row_scores",
           "load_row_scores", "scores_json", "SCORES_FILE"]

logger = logging.getLogger(__name__)

ROW_SCORES = {
    "ifd": "instruction-following difficulty: the response's mean cross-entropy given the "
           "instruction divided by its mean cross-entropy alone (2 model passes per row)",
    "response_tokens": "the response's length in the chosen model's tokens (no model pass)",
}
"""The per-row scores, with what each is."""

SCORES_FILE = "row_scores.json"
_VERSION = 1
_BATCH = 8


@dataclass
class RowScores:
    """One score per pool row (``values``, in pool order) and the record of how they were made:
    kind, model, precision, row ids and hashes, passes computed and reused, seconds."""

    kind: str
    values: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def check_rows(self, pool: Dataset, where: str = "the scores") -> None:
        """SelectionError unless these scores are for exactly ``pool``'s rows (ids, order,
        text), naming the first rows that differ."""
        ids, hashes = self.meta.get("ids"), self.meta.get("row_hashes")
        if ids is None or hashes is None or len(ids) != len(pool):
            raise SelectionError(f"{where}: computed for {len(ids or [])} rows, the pool has "
                                 f"{len(pool)}; compute the scores for this pool")
        differ = differing_rows(ids, hashes, pool, "scores")
        if differ:
            raise SelectionError(f"{where}: {differ}; compute the scores for this data")


def _space(kind: str, lm: Any, settings: UtilitySettings) -> str:
    """What a cached score depends on besides the row: the kind, model, precision, settings."""
    key = {"kind": kind, "version": _VERSION, "model": getattr(lm, "fingerprint", None),
           "dtype": str(getattr(lm, "dtype", "")), "settings": settings.value_key(),
           "bos": getattr(lm, "bos_token_id", None), "eos": getattr(lm, "eos_token_id", None)}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _cache_file(space: str) -> Path:
    from delift_core.lm.models import cache_dir

    return cache_dir() / "row_scores" / f"{space}.json"


def _read_cache(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or damaged: recomputed
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float))} \
        if isinstance(data, dict) else {}


def _write_cache(path: Path, values: dict[str, float]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(values).encode("utf-8"))
    except OSError as e:  # a cache is a convenience: never lose the scores over it
        logger.warning("could not cache the row scores in %s: %s", path, e)


def _mean_nll(scorer: Scorer, seqs: list[list[int]], n_scored: list[int]) -> list[float]:
    with torch.inference_mode():
        logps = scorer.log_probs(seqs, n_scored)
    return [float(-lp.double().mean()) for lp in logps]


def compute_row_scores(pool: Dataset, kind: str, *, lm: Any = None,
                       settings: UtilitySettings | None = None,
                       progress: Callable[[str, int, int], None] | None = None,
                       cancel: threading.Event | None = None,
                       use_cache: bool = True) -> RowScores:
    """The ``kind`` score (:data:`ROW_SCORES`) of every pool row with the causal LM ``lm`` (the
    default model when None), prompts in ``settings``' plain template (the utility kernel's).
    Cached rows are read, not computed; ``cancel`` stops between batches (KernelCancelled,
    the finished rows kept in the cache)."""
    if kind not in ROW_SCORES:
        raise SelectionError(f"unknown row score '{kind}'; use one of {', '.join(ROW_SCORES)}")
    if lm is None:
        from delift_core.lm.models import load_causal_lm

        lm = load_causal_lm()
    settings = settings or UtilitySettings()
    start = time.time()
    tok = SegmentTokens(lm, settings.max_field_tokens, settings.max_response_tokens,
                        settings.score_eos)
    hashes = row_hashes(pool)
    meta: dict[str, Any] = {"kind": kind, "what": ROW_SCORES[kind], "version": _VERSION,
                            "model": getattr(lm, "name", None),
                            "model_fingerprint": getattr(lm, "fingerprint", None),
                            "dtype": str(getattr(lm, "dtype", "float32")).replace("torch.", ""),
                            "settings": settings.value_key(), "ids": list(pool.ids),
                            "row_hashes": hashes}
    if kind == "response_tokens":
        values = np.array([len(tok.ids(r)) for r in pool.responses], dtype=np.float64)
        meta.update(passes_computed=0, passes_reused=0, seconds=round(time.time() - start, 3))
        return RowScores(kind, values, meta)
    space = _space(kind, lm, settings)
    path = _cache_file(space)
    cached = _read_cache(path) if use_cache else {}
    values = np.full(len(pool), np.nan)
    todo = []
    for k, h in enumerate(hashes):
        if h in cached:
            values[k] = cached[h]
        else:
            todo.append(k)
    scorer = Scorer(lm)
    bos = [lm.bos_token_id] if lm.bos_token_id is not None else []
    # longest first, so a batch's padding is small and the slowest batch is seen first
    todo.sort(key=lambda k: -(len(pool.prompts[k]) + len(pool.responses[k])))
    label = "IFD scores"
    if progress:
        progress(label, 0, len(todo))
    try:
        for b in range(0, len(todo), _BATCH):
            if cancel is not None and cancel.is_set():
                raise KernelCancelled(f"cancelled after {b} of {len(todo)} rows' IFD scores")
            rows = todo[b: b + _BATCH]
            resp = [tok.response_ids(pool.responses[k]) for k in rows]
            cond = [tok.prompt_ids(settings.plain_template, {"prompt": pool.prompts[k]}) + r
                    for k, r in zip(rows, resp)]
            alone = [bos + r for r in resp]
            n = [len(r) for r in resp]
            with_instruction = _mean_nll(scorer, cond, n)
            without = _mean_nll(scorer, alone, n)
            for k, a, c in zip(rows, with_instruction, without):
                values[k] = a / c if c > 0 else np.inf
                cached[hashes[k]] = float(values[k])
            if progress:
                progress(label, min(b + _BATCH, len(todo)), len(todo))
    finally:
        if use_cache and todo:
            _write_cache(path, cached)
    meta.update(passes_computed=2 * len(todo), passes_reused=2 * (len(pool) - len(todo)),
                seconds=round(time.time() - start, 3),
                plain_passes_note="the conditioned pass is the utility kernel's plain pass, but "
                                  "the pair store keeps its DELIFT distance, not its "
                                  "cross-entropy, so IFD runs its own passes",
                truncated_fields=tok.truncated_fields,
                truncated_responses=tok.truncated_responses)
    logger.info("IFD of %d rows: %d computed, %d cached, %.1f s", len(pool), len(todo),
                len(pool) - len(todo), meta["seconds"])
    return RowScores(kind, values, meta)


def scores_json(scores: RowScores) -> str:
    """The text of ``row_scores.json``: the values (null where not finite) and their record."""
    values = [None if not np.isfinite(v) else float(v) for v in scores.values]
    return json.dumps({"kind": scores.kind, "values": values, "meta": scores.meta}, indent=1,
                      default=str)


def save_row_scores(scores: RowScores, folder: str | Path) -> Path:
    """``row_scores.json`` in ``folder``: the values and their record (row ids and hashes)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    path = out / SCORES_FILE
    path.write_text(scores_json(scores), encoding="utf-8")
    return path


def load_row_scores(path: str | Path, pool: Dataset) -> RowScores:
    """Scores saved by :func:`save_row_scores` (a file or its folder), checked against ``pool``:
    refused (SelectionError naming the rows) when they were computed for other rows or text."""
    p = Path(path)
    if p.is_dir():
        p = p / SCORES_FILE
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        kind, raw, meta = data["kind"], data["values"], data["meta"]
        values = np.array([np.inf if v is None else float(v) for v in raw], dtype=np.float64)
    except FileNotFoundError:
        raise DataError(f"{p}: no such score file") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{p}: not a row score file ({type(e).__name__}: {e})") from None
    scores = RowScores(kind, values, meta)
    scores.check_rows(pool, str(p))
    return scores
