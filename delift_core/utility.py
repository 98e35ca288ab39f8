"""The DELIFT pairwise utility kernel, computed with the causal LM itself.

For a target i and an in-context example j, the response y_i is teacher-forced after the plain
prompt and after a prompt that first shows (x_j, y_j). With p_t the probability of the true token
at each of the T scored positions, the distance is d = ||1 - p||_2 / sqrt(T), and the utility is
UF(i, j) = d(i, plain) - d(i, with j). Rows are targets i, columns are examples j.

This module only orchestrates: which sequences to score (:mod:`delift_core.tokens` builds them),
in which cached, resumable blocks, and what the result records. The model work is done by
:class:`delift_core.scorer.Scorer`. Token sequences: [BOS if the model uses one] + prompt tokens
+ response tokens [+ EOS if scored], the prompt tokenised in segments split at the template's
fields; every choice is recorded in ``meta`` so another implementation can rebuild them.
"""

from __future__ import annotations

import logging
import string
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from .cache import BlockStore, content_key
from .matrices import scale_to_unit
from .models import CausalLM, cache_dir
from .scorer import Scorer, cpu_threads
from .tokens import SegmentTokens, split_prompt, template_segments

__all__ = ["DEFAULT_PLAIN_TEMPLATE", "DEFAULT_EXAMPLE_TEMPLATE", "ENGINE_VERSION", "Texts",
           "KernelCancelled", "UtilitySettings", "KernelResult", "UtilityKernel"]

logger = logging.getLogger(__name__)

ENGINE_VERSION = "utility-v1"
DEFAULT_PLAIN_TEMPLATE = ("Instruction: Please generate a response to the following query.\n\n\n"
                          "Query: {prompt}\n")
DEFAULT_EXAMPLE_TEMPLATE = ("Instruction:\nUse the following example as a guide to answer the query "
                            "in the same format and style, providing a clear and concise response."
                            "\n\n\nExample:\n{example_prompt}\n{example_response}\n\n\nQuery:\n"
                            "{prompt}\n")
ProgressFn = Callable[[int, int], None]


class TextRows(Protocol):
    """What the kernel reads from targets and examples (a :class:`~delift_core.data.Dataset` or
    :class:`Texts`)."""

    prompts: Sequence[str]
    responses: Sequence[str]
    ids: Sequence[str]


@dataclass(frozen=True)
class Texts:
    """Prompts and responses given as plain lists; ids default to "0".."n-1"."""

    prompts: Sequence[str]
    responses: Sequence[str]
    ids: Sequence[str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompts", list(self.prompts))
        object.__setattr__(self, "responses", list(self.responses))
        ids = [str(k) for k in range(len(self.prompts))] if self.ids is None else list(self.ids)
        object.__setattr__(self, "ids", ids)
        if not len(self.prompts) == len(self.responses) == len(ids):
            raise ValueError(f"{len(self.prompts)} prompts, {len(self.responses)} responses and "
                             f"{len(ids)} ids: they must be as many")


class KernelCancelled(RuntimeError):
    """Raised when a caller's cancel event is set; finished blocks stay cached."""


@dataclass(frozen=True)
class UtilitySettings:
    """Everything besides the data and the model that changes the utility values."""

    plain_template: str = DEFAULT_PLAIN_TEMPLATE
    example_template: str = DEFAULT_EXAMPLE_TEMPLATE
    score_eos: bool = True
    max_field_tokens: int = 256
    max_response_tokens: int = 256
    batch_size: int = 16
    block_size: int = 8

    def validate(self) -> None:
        """Raise ValueError for templates or sizes that cannot run."""
        _check_template(self.plain_template, {"prompt"}, "plain template")
        _check_template(self.example_template, {"prompt", "example_prompt", "example_response"},
                        "example template")
        if self.batch_size < 1 or self.block_size < 1:
            raise ValueError("batch_size and block_size must be at least 1")
        if self.max_field_tokens < 1 or self.max_response_tokens < 1:
            raise ValueError("max_field_tokens and max_response_tokens must be at least 1")

    def value_key(self) -> dict:
        """The settings that change values (batching does not)."""
        d = asdict(self)
        d.pop("batch_size")
        d.pop("block_size")
        return d


def _check_template(template: str, fields: set[str], what: str) -> None:
    try:
        found = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(f"{what}: not a valid format string ({e})") from None
    unknown = set(found) - fields
    if unknown or set(found) != fields or len(found) != len(set(found)):
        raise ValueError(f"{what}: must use each of {sorted(fields)} exactly once, found {found}")


@dataclass
class KernelResult:
    """A raw kernel (rows = items helped, columns = in-context examples) and how it was made."""

    values: Any  # dense float32 ndarray, or a scipy CSR float32 matrix for given pairs
    row_ids: list[str]
    col_ids: list[str]
    meta: dict

    @property
    def scaled(self) -> Any:
        return scale_to_unit(self.values)


@dataclass
class _Run:
    """One kernel computation's cache store, tokens, scorer, progress count and cancel event."""

    store: BlockStore | None
    tok: SegmentTokens
    resp: list[list[int]]
    scorer: Scorer
    total: int
    progress: ProgressFn | None
    cancel: threading.Event | None
    done: int = 0
    blocks_reused: int = 0
    pairs_computed: int = 0

    def tick(self, k: int) -> None:
        self.done += k
        if self.progress:
            self.progress(self.done, self.total)

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise KernelCancelled("kernel computation cancelled")


@dataclass
class _Blocks:
    """The (example j, target i) pairs to score, sorted by example, cut into cached blocks.

    Block ``b`` is ``pairs[bounds[b]:bounds[b + 1]]`` (its examples ``b * block_size`` onwards),
    stored as ``f"{prefix}_{b:06d}"``; ``pack``/``unpack`` turn its distances into the stored
    array and back (the dense kernel stores each block as targets x examples).
    """

    cols: np.ndarray
    rows: np.ndarray
    bounds: list[int]
    prefix: str
    pack: Callable[[np.ndarray], np.ndarray] = field(default=lambda d: d)
    unpack: Callable[[np.ndarray], np.ndarray] = field(default=lambda a: a)


class UtilityKernel:
    """Computes UF(i, j) for targets i and examples j, in cached, resumable blocks of examples.

    :meth:`compute` returns a :class:`KernelResult`; ``progress(done_pairs, total_pairs)`` is
    called as work finishes, and setting ``cancel`` stops the run between batches.
    """

    def __init__(self, lm: CausalLM, settings: UtilitySettings | None = None,
                 cache_root: str | Path | None = None, use_cache: bool = True) -> None:
        self.lm = lm
        self.settings = settings or UtilitySettings()
        self.settings.validate()
        self.cache_root = cache_root
        self.use_cache = use_cache
        self.pairs_computed_ = 0
        self.tokens_processed_ = 0
        self.positions_scored_ = 0

    def token_sequences(self, t_prompts: Sequence[str], t_resps: Sequence[str],
                        e_prompts: Sequence[str], e_resps: Sequence[str]
                        ) -> tuple[SegmentTokens, list[list[int]], list[list[int]]]:
        """Plain and with-example token sequences (exactly what the model is given)."""
        s = self.settings
        tok = SegmentTokens(self.lm, s.max_field_tokens, s.max_response_tokens, s.score_eos)
        plain = [tok.prompt_ids(s.plain_template, {"prompt": p}) for p in t_prompts]
        resp = [tok.response_ids(r) for r in t_resps]
        return tok, plain, resp

    def compute(self, targets: TextRows, examples: TextRows, *,
                pairs: tuple[np.ndarray, np.ndarray] | None = None,
                progress: ProgressFn | None = None,
                cancel: threading.Event | None = None) -> KernelResult:
        """UF(i, j) for targets i and examples j; blocks already in the cache are not recomputed.

        ``pairs`` None: every pair, as a dense n_targets x n_examples float32 array.
        ``pairs=(rows, cols)`` (target and example index arrays): only those pairs, as a scipy
        CSR float32 matrix in which pairs not listed are absent. Either way pairs are grouped by
        example (its prefix run once), in blocks of ``block_size`` examples.
        """
        start = time.time()
        n_t, n_e = len(targets.prompts), len(examples.prompts)
        key = self._key(targets, examples)
        if pairs is None:
            blocks = self._dense_blocks(n_t, n_e)
        else:
            blocks = self._pair_blocks(pairs, n_t, n_e)
            key["pairs"] = content_key([blocks.cols.tolist(), blocks.rows.tolist()])
        run = self._start(key, targets.responses, len(blocks.cols) + n_t, progress, cancel)
        d_plain = self._plain(run, targets)
        d_with = self._run_blocks(run, blocks, targets, examples)
        self.pairs_computed_ = run.pairs_computed
        self.tokens_processed_ = run.scorer.tokens_processed
        self.positions_scored_ = run.scorer.positions_scored
        meta = self._meta(run, targets, examples, len(blocks.bounds) - 1, start, d_plain)
        logger.debug("utility kernel %d x %d: %d pairs computed, %d blocks reused, %.1f s",
                     n_t, n_e, run.pairs_computed, run.blocks_reused, meta["seconds"])
        if pairs is None:
            values = (d_plain[:, None] - d_with.reshape(n_e, n_t).T).astype(np.float32)
        else:
            r, c = blocks.rows, blocks.cols
            values = sp.csr_matrix(((d_plain[r] - d_with).astype(np.float32), (r, c)),
                                   shape=(n_t, n_e), dtype=np.float32)
            values.sort_indices()
            meta.update({"sparse": True, "format": "scipy CSR float32, absent pairs not computed",
                         "nnz": int(values.nnz)})
        return KernelResult(values=values, row_ids=list(targets.ids), col_ids=list(examples.ids),
                            meta=meta)

    # ------------------------------------------------------------------------------------------
    # Which pairs, in which blocks

    def _n_blocks(self, n_e: int) -> int:
        return (n_e + self.settings.block_size - 1) // self.settings.block_size

    def _dense_blocks(self, n_t: int, n_e: int) -> _Blocks:
        """Every pair, example-major; block b holds examples b * block_size onwards, all targets."""
        bs = self.settings.block_size
        bounds = [min(n_e, b * bs) * n_t for b in range(self._n_blocks(n_e) + 1)]
        return _Blocks(np.repeat(np.arange(n_e), n_t), np.tile(np.arange(n_t), n_e), bounds,
                       "examples", pack=lambda d: d.reshape(-1, n_t).T,
                       unpack=lambda a: a.T.reshape(-1))

    def _pair_blocks(self, pairs: tuple[np.ndarray, np.ndarray], n_t: int, n_e: int) -> _Blocks:
        """The given (target, example) pairs, checked, deduplicated and sorted by example."""
        r = np.asarray(pairs[0], dtype=np.int64)
        c = np.asarray(pairs[1], dtype=np.int64)
        if r.shape != c.shape or (r.size and (r.min() < 0 or r.max() >= n_t or c.min() < 0
                                               or c.max() >= n_e)):
            raise ValueError("pair rows and columns must be equal-length index arrays in range")
        both = np.unique(np.stack([c, r], axis=1), axis=0) if r.size else np.zeros((0, 2), np.int64)
        bs = self.settings.block_size
        edges = np.arange(self._n_blocks(n_e) + 1) * bs
        return _Blocks(both[:, 0], both[:, 1], np.searchsorted(both[:, 0], edges).tolist(), "pairs")

    # ------------------------------------------------------------------------------------------
    # Running them

    def _key(self, targets: TextRows, examples: TextRows) -> dict:
        return {"engine": ENGINE_VERSION, "model": self.lm.fingerprint, "dtype": str(self.lm.dtype),
                "settings": self.settings.value_key(), "bos": self.lm.bos_token_id,
                "eos": self.lm.eos_token_id,
                "targets": content_key([list(targets.prompts), list(targets.responses)]),
                "examples": content_key([list(examples.prompts), list(examples.responses)]),
                "block_size": self.settings.block_size}

    def _start(self, key: dict, t_resps: Sequence[str], total: int,
               progress: ProgressFn | None, cancel: threading.Event | None) -> _Run:
        """Open the cache for ``key`` and tokenise the targets: what every computation starts with."""
        root = Path(self.cache_root) if self.cache_root else cache_dir() / "kernels"
        store = BlockStore(root, content_key(key), key) if self.use_cache else None
        s = self.settings
        tok = SegmentTokens(self.lm, s.max_field_tokens, s.max_response_tokens, s.score_eos)
        resp = [tok.response_ids(r) for r in t_resps]
        if self.lm.device.type == "cpu":
            torch.set_num_threads(cpu_threads())
        self.pairs_computed_ = 0
        return _Run(store, tok, resp, Scorer(self.lm), total, progress, cancel)

    def _plain(self, run: _Run, targets: TextRows) -> np.ndarray:
        """d(i, plain) for every target, from the cache when it holds them: the template head runs
        once, prompts + responses behind it."""
        n_t = len(targets.prompts)
        d_plain = run.store.get("plain") if run.store else None
        if d_plain is not None and d_plain.shape == (n_t,):
            run.tick(n_t)
            return d_plain
        heads, suffixes = [], []
        for p, r in zip(targets.prompts, run.resp):
            head, rest = split_prompt(run.tok, self.settings.plain_template, {"prompt": p})
            heads.append(head)
            suffixes.append(rest + r)
        d_plain = self._grouped(run, heads, suffixes, [len(r) for r in run.resp])
        run.pairs_computed += n_t
        if run.store:
            run.store.put("plain", d_plain)
        return d_plain

    def _run_blocks(self, run: _Run, blocks: _Blocks, targets: TextRows,
                    examples: TextRows) -> np.ndarray:
        """d(i, with example j) for every listed pair, block by block; cached blocks are read,
        damaged or missing ones computed and stored."""
        d_with = np.empty(len(blocks.cols), dtype=np.float64)
        for blk in range(len(blocks.bounds) - 1):
            lo, hi = blocks.bounds[blk], blocks.bounds[blk + 1]
            if hi <= lo:
                continue
            name = f"{blocks.prefix}_{blk:06d}"
            cached = run.store.get(name) if run.store else None
            if cached is not None and cached.shape == blocks.pack(d_with[lo:hi]).shape:
                d_with[lo:hi] = blocks.unpack(cached)
                run.blocks_reused += 1
                run.tick(hi - lo)
                continue
            d_with[lo:hi] = self._example_distances(
                run, zip(blocks.cols[lo:hi].tolist(), blocks.rows[lo:hi].tolist()),
                targets, examples)
            run.pairs_computed += hi - lo
            if run.store:
                run.store.put(name, blocks.pack(d_with[lo:hi]))
        return d_with

    def _example_distances(self, run: _Run, pairs: Any, targets: TextRows,
                           examples: TextRows) -> np.ndarray:
        """d(i, with example j) for each (j, i) pair: each example's prefix runs once."""
        heads, suffixes, n_scored = [], [], []
        for j, i in pairs:
            head, rest = split_prompt(run.tok, self.settings.example_template, {
                "example_prompt": examples.prompts[j], "example_response": examples.responses[j],
                "prompt": targets.prompts[i]})
            heads.append(head)
            suffixes.append(rest + run.resp[i])
            n_scored.append(len(run.resp[i]))
        return self._grouped(run, heads, suffixes, n_scored)

    def _grouped(self, run: _Run, heads: list[list[int]], suffixes: list[list[int]],
                 n_scored: list[int]) -> np.ndarray:
        """Distances of ``heads[k] + suffixes[k]``, each distinct head run once."""
        groups: dict[tuple, list[int]] = {}
        for k, h in enumerate(heads):
            groups.setdefault(tuple(h), []).append(k)
        return run.scorer.run_groups([(list(h), m) for h, m in groups.items()], suffixes, n_scored,
                                     self.settings.batch_size, run.tick, run.check)

    def _meta(self, run: _Run, targets: TextRows, examples: TextRows, n_blocks: int,
              start: float, d_plain: np.ndarray) -> dict:
        """What a kernel result records about how it was made."""
        s, lm = self.settings, self.lm
        tok, store = run.tok, run.store
        n_t, n_e = len(targets.prompts), len(examples.prompts)
        return {
            "kind": "utility",
            "model": lm.name, "model_source": lm.source,
            "model_fingerprint": lm.fingerprint, "dtype": str(lm.dtype).replace("torch.", ""),
            "device": str(lm.device),
            "plain_template": s.plain_template, "example_template": s.example_template,
            "bos_token_id": lm.bos_token_id, "bos_first": lm.bos_token_id is not None,
            "eos_token_id": lm.eos_token_id,
            "score_eos": bool(s.score_eos and lm.eos_token_id is not None),
            "tokenisation": ("prompt tokenised in segments split at the template's fields: each "
                             "literal piece and each field value tokenised separately with "
                             "add_special_tokens=False and concatenated in template order; BOS "
                             "first when bos_first; response tokenised alone (no special tokens), "
                             "truncated to max_response_tokens, then EOS appended when score_eos"),
            "segments": {"plain": template_segments(s.plain_template),
                         "example": template_segments(s.example_template)},
            "max_field_tokens": s.max_field_tokens, "max_response_tokens": s.max_response_tokens,
            "truncated_field_values": tok.truncated_fields,
            "truncated_responses": tok.truncated_responses,
            "distance": "d = ||1 - p||_2 / sqrt(T) over the scored positions",
            "utility": "UF(i, j) = d(i, plain) - d(i, with example j)",
            "rows": "targets i (items helped)", "columns": "in-context examples j",
            "row_ids": list(targets.ids), "col_ids": list(examples.ids),
            "shape": [n_t, n_e], "pairs_computed": run.pairs_computed,
            "tokens_processed": run.scorer.tokens_processed,
            "positions_scored": run.scorer.positions_scored,
            "blocks_reused": run.blocks_reused, "blocks_total": n_blocks,
            "blocks_damaged_recomputed": list(store.damaged) if store else [],
            "cache_dir": str(store.path) if store else None,
            "seconds": round(time.time() - start, 3),
            "d_plain": [float(x) for x in d_plain],
        }
