"""The DELIFT pairwise utility kernel, computed with the causal LM itself.

For a target i and an in-context example j, the response y_i is teacher-forced after the plain
prompt and after a prompt that first shows (x_j, y_j). With p_t the probability of the true token
at each of the T scored positions, the distance is d = ||1 - p||_2 / sqrt(T), and the utility is
UF(i, j) = d(i, plain) - d(i, with j). Rows are targets i, columns are examples j.

This module only orchestrates: which sequences to score (:mod:`delift_core.lm.tokens` builds them),
which pairs the pair store (:mod:`delift_core.stores.pairstore`) already holds, in which work units the
missing ones run (here, or on Ray workers: :mod:`delift_core.kernels.ray_backend`), and what the result
records. The model work is done by
:class:`delift_core.lm.scorer.Scorer`. Token sequences: [BOS if the model uses one] + prompt tokens
+ response tokens [+ EOS if scored], the prompt tokenised in segments split at the template's
fields; every choice is recorded in ``meta`` so another implementation can rebuild them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from delift_core import settings as settings_spec
from delift_core.lm.models import CausalLM, cache_dir
from delift_core.lm.scorer import Scorer, cpu_threads
from delift_core.lm.memory import release_free_memory
from delift_core.stores.pairstore import PairStore, row_key
from delift_core.lm.tokens import (SegmentTokens, chat_wrapped_template, split_prompt,
                                   template_segments)
from delift_core.kernels.utility_settings import (ENGINE_VERSION, KernelCancelled, KernelResult,
                                                  TextRows, UtilitySettings)

__all__ = ["UNIT_PAIRS", "UtilityKernel", "store_path", "stored_pairs"]

logger = logging.getLogger(__name__)

UNIT_PAIRS = 256
"""At most this many pairs per work unit: one unit is computed (here or on a Ray worker) and
stored in one transaction, so a stopped run loses at most the units in flight."""
ProgressFn = Callable[[int, int], None]


def store_path(cache_root: str | Path | None = None) -> Path:
    """The pair store's file: ``<cache_root>/pairs.sqlite``, by default under the DELIFT cache
    folder (``<cache>/utility/pairs.sqlite``; the old block cache in ``<cache>/kernels`` is not
    read any more)."""
    root = Path(cache_root) if cache_root else cache_dir() / "utility"
    return root / "pairs.sqlite"


def stored_pairs(rows: TextRows, cols: TextRows, *, dtype: str = settings_spec.default("dtype"),
                 model: str | None = None, settings: UtilitySettings | None = None,
                 cache_root: str | Path | None = None) -> tuple[int, int]:
    """(pairs of rows x cols, plain distances of rows) already in the pair store, for an
    estimate before the model is loaded: counted in the most recently used value space of this
    ``dtype`` and ``settings`` (default settings) whose model fingerprint contains ``model``
    (compared without case, '-' and '_': "gemma-3-270m" finds "gemma3-270m-q4_k_m:..."; any
    model when None). (0, 0) when there is no store or no such space."""
    path = store_path(cache_root)
    if not path.exists():
        return 0, 0
    want = (settings or UtilitySettings()).value_key()
    store = PairStore(path)
    try:
        spaces = [sp_ for sp_ in store.spaces() if sp_.dtype == dtype
                  and sp_.info.get("settings") == want and sp_.info.get("engine") == ENGINE_VERSION
                  and (model is None or _norm(model) in _norm(sp_.model))]
        if not spaces:
            return 0, 0
        return store.count_stored(spaces[0].id,
                                  [row_key(p, r) for p, r in zip(rows.prompts, rows.responses)],
                                  [row_key(p, r) for p, r in zip(cols.prompts, cols.responses)])
    finally:
        store.close()


@dataclass
class _Run:
    """One computation's tokens, scorer, progress count (of passes computed) and cancel event."""

    tok: SegmentTokens
    resp: list[list[int]]
    scorer: Scorer
    total: int
    progress: ProgressFn | None
    cancel: threading.Event | None
    done: int = 0

    def tick(self, k: int) -> None:
        self.done += k
        if self.progress and self.total:
            self.progress(self.done, self.total)

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise KernelCancelled("kernel computation cancelled")


@dataclass
class _Plan:
    """The (example j, target i) pairs of a kernel, example-major, and what the store lacks.

    ``todo`` are the positions (into ``cols``/``rows``) of the distinct missing pairs, cut into
    work units of one block of ``block_size`` examples and at most :data:`UNIT_PAIRS` pairs;
    ``first[k]`` is the position whose value pair k shares (same target and example content).
    """

    cols: np.ndarray
    rows: np.ndarray
    first: np.ndarray
    todo: np.ndarray
    units: list[np.ndarray] = field(default_factory=list)
    blocks_total: int = 0
    blocks_reused: int = 0


class UtilityKernel:
    """Computes UF(i, j) for targets i and examples j; every distance is kept in the pair store,
    so only pairs it lacks are computed (see :mod:`delift_core.stores.pairstore`).

    :meth:`compute` returns a :class:`KernelResult`; ``progress(done, total)`` counts the passes
    actually computed as they finish, and setting ``cancel`` stops the run between batches.
    ``backend="ray"`` runs the missing work units on Ray actors (``ray_options``: ``address``,
    ``workers``, ``threads``; see :mod:`delift_core.kernels.ray_backend`).
    """

    def __init__(self, lm: CausalLM, settings: UtilitySettings | None = None,
                 cache_root: str | Path | None = None, use_cache: bool = True,
                 backend: str = "local", ray_options: dict | None = None) -> None:
        self.lm = lm
        self.settings = settings or UtilitySettings()
        self.settings.validate()
        if self.settings.chat_template:  # the one place prompts get the chat template
            from dataclasses import replace

            self.settings = replace(self.settings, plain_template=chat_wrapped_template(
                lm, self.settings.plain_template), example_template=chat_wrapped_template(
                lm, self.settings.example_template))
        backend = settings_spec.check("backend", backend)
        self.cache_root = cache_root
        self.use_cache = use_cache
        self.backend = backend
        self.ray_options = dict(ray_options or {})
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

    def value_space(self) -> dict:
        """What, besides the two rows, a stored distance depends on: engine version, model
        fingerprint and dtype, BOS/EOS, and the value-changing settings."""
        return {"engine": ENGINE_VERSION, "model": self.lm.fingerprint, "dtype": str(self.lm.dtype),
                "settings": self.settings.value_key(), "bos": self.lm.bos_token_id,
                "eos": self.lm.eos_token_id}

    def open_store(self) -> PairStore | None:
        """The pair store this engine reads and writes (None with ``use_cache=False``)."""
        return PairStore(store_path(self.cache_root)) if self.use_cache else None

    def compute(self, targets: TextRows, examples: TextRows, *,
                pairs: tuple[np.ndarray, np.ndarray] | None = None,
                progress: ProgressFn | None = None,
                cancel: threading.Event | None = None) -> KernelResult:
        """UF(i, j) for targets i and examples j; pairs already in the store are not recomputed.

        ``pairs`` None: every pair, as a dense n_targets x n_examples float32 array.
        ``pairs=(rows, cols)`` (target and example index arrays): only those pairs, as a scipy
        CSR float32 matrix in which pairs not listed are absent. Missing pairs are grouped by
        example (its prefix run once) in work units of one block of ``block_size`` examples.
        """
        start = time.time()
        n_t, n_e = len(targets.prompts), len(examples.prompts)
        if pairs is None:
            cols, rows = np.repeat(np.arange(n_e), n_t), np.tile(np.arange(n_t), n_e)
        else:
            cols, rows = self._pair_list(pairs, n_t, n_e)
        t_keys = [row_key(p, r) for p, r in zip(targets.prompts, targets.responses)]
        e_keys = [row_key(p, r) for p, r in zip(examples.prompts, examples.responses)]
        store = self.open_store()
        try:
            space = (store.space(self.value_space(), self.lm.fingerprint,
                                 str(self.lm.dtype).replace("torch.", "")) if store else 0)
            d_plain, plain_todo = self._stored_plain(store, space, t_keys)
            d_with, plan = self._stored_pairs(store, space, t_keys, e_keys, cols, rows)
            run = self._start(targets.responses, len(plain_todo) + len(plan.todo), progress,
                              cancel)
            for unit, vals in self._plain_units(run, targets, plain_todo):
                d_plain[unit] = vals
                if store:  # each unit in one transaction: a stopped run keeps the finished ones
                    store.put_plain(space, [(t_keys[i], v) for i, v in zip(unit.tolist(),
                                                                           vals.tolist())
                                            if np.isfinite(v)])
            d_plain = d_plain[_first_index(t_keys)]
            run_units = self._run_local if self.backend == "local" else self._run_ray
            for unit, vals in run_units(run, plan, targets, examples):
                d_with[unit] = vals
                release_free_memory()  # what the unit's batches freed goes back to the system
                if store:
                    store.put_pairs(space, [(t_keys[i], e_keys[j], v) for i, j, v in zip(
                        rows[unit].tolist(), cols[unit].tolist(), vals.tolist())
                        if np.isfinite(v)])
            d_with = d_with[plan.first]
            damaged = store.damaged if store else 0
            file_damage = store.file_damage if store else None
        finally:
            if store:
                store.close()
        computed = len(plain_todo) + len(plan.todo)
        self.pairs_computed_ = computed
        self.tokens_processed_ = run.scorer.tokens_processed
        self.positions_scored_ = run.scorer.positions_scored
        meta = self._meta(run, targets, examples, start, d_plain)
        meta.update({"pairs_computed": computed, "pairs_reused": len(cols) + n_t - computed,
                     "plain_computed": len(plain_todo),
                     "blocks_reused": plan.blocks_reused, "blocks_total": plan.blocks_total,
                     "entries_damaged_recomputed": int(damaged),
                     "store_file_damaged": file_damage,
                     "cache_dir": str(store_path(self.cache_root)) if store else None,
                     "backend": self.backend})
        if self.backend == "ray":
            meta["ray"] = {k: v for k, v in self.ray_options.items() if k != "actors"}
        logger.debug("utility kernel %d x %d: %d passes computed, %d reused, %.1f s", n_t, n_e,
                     computed, meta["pairs_reused"], meta["seconds"])
        if pairs is None:
            values = (d_plain[:, None] - d_with.reshape(n_e, n_t).T).astype(np.float32)
        else:
            values = sp.csr_matrix(((d_plain[rows] - d_with).astype(np.float32), (rows, cols)),
                                   shape=(n_t, n_e), dtype=np.float32)
            values.sort_indices()
            meta.update({"sparse": True, "format": "scipy CSR float32, absent pairs not computed",
                         "nnz": int(values.nnz)})
        return KernelResult(values=values, row_ids=list(targets.ids), col_ids=list(examples.ids),
                            meta=meta)

    def pair_distances(self, targets: TextRows, examples: TextRows, cols: Sequence[int],
                       rows: Sequence[int]) -> np.ndarray:
        """d(i, with example j) for the pairs (cols[k], rows[k]), nothing stored: the work a Ray
        worker does for one unit."""
        run = self._start(targets.responses, 0, None, None)
        return self._example_distances(run, zip(list(cols), list(rows)), targets, examples)

    # ------------------------------------------------------------------------------------------
    # Which pairs, which of them stored, in which units

    def _pair_list(self, pairs: tuple[np.ndarray, np.ndarray], n_t: int, n_e: int
                   ) -> tuple[np.ndarray, np.ndarray]:
        """The given (target, example) pairs, checked, deduplicated and sorted by example."""
        r = np.asarray(pairs[0], dtype=np.int64)
        c = np.asarray(pairs[1], dtype=np.int64)
        if r.shape != c.shape or (r.size and (r.min() < 0 or r.max() >= n_t or c.min() < 0
                                               or c.max() >= n_e)):
            raise ValueError("pair rows and columns must be equal-length index arrays in range")
        both = np.unique(np.stack([c, r], axis=1), axis=0) if r.size else np.zeros((0, 2), np.int64)
        return both[:, 0], both[:, 1]

    def _stored_plain(self, store: PairStore | None, space: int, t_keys: list[bytes]
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Plain distances found in the store (NaN elsewhere) and the distinct targets to compute
        (the first row of each content)."""
        d = np.full(len(t_keys), np.nan)
        found = store.get_plain(space, t_keys) if store else {}
        first = _first_index(t_keys)
        for i, k in enumerate(t_keys):
            if k in found:
                d[i] = found[k]
        todo = np.flatnonzero(np.isnan(d) & (first == np.arange(len(t_keys))))
        return d, todo

    def _stored_pairs(self, store: PairStore | None, space: int, t_keys: list[bytes],
                      e_keys: list[bytes], cols: np.ndarray, rows: np.ndarray
                      ) -> tuple[np.ndarray, _Plan]:
        """Pair distances found in the store (NaN elsewhere) and the plan of what to compute."""
        t_id, e_id = _first_index(t_keys), _first_index(e_keys)
        code = t_id[rows] * max(len(e_keys), 1) + e_id[cols]
        _, first_pos, inverse = np.unique(code, return_index=True, return_inverse=True)
        first = first_pos[inverse]  # each pair's first position with the same content
        d = np.full(len(cols), np.nan)
        if store and len(cols):
            found = store.get_pairs(space, [t_keys[i] for i in np.unique(t_id[rows])],
                                    set(e_keys[j] for j in np.unique(e_id[cols])))
            for k in first_pos.tolist():
                v = found.get((t_keys[rows[k]], e_keys[cols[k]]))
                if v is not None:
                    d[k] = v
        todo = np.sort(first_pos[np.isnan(d[first_pos])])
        plan = _Plan(cols, rows, first, todo)
        bs = self.settings.block_size
        blocks = cols // bs
        plan.blocks_total = int(len(np.unique(blocks)))
        todo_blocks = blocks[todo]
        plan.blocks_reused = plan.blocks_total - int(len(np.unique(todo_blocks)))
        edges = np.flatnonzero(np.diff(todo_blocks)) + 1
        for part in np.split(todo, edges) if len(todo) else []:
            for s in range(0, len(part), UNIT_PAIRS):
                plan.units.append(part[s: s + UNIT_PAIRS])
        return d, plan

    # ------------------------------------------------------------------------------------------
    # Running them

    def _start(self, t_resps: Sequence[str], total: int, progress: ProgressFn | None,
               cancel: threading.Event | None) -> _Run:
        """Tokenise the targets' responses and set up the scorer: what every computation starts
        with."""
        s = self.settings
        tok = SegmentTokens(self.lm, s.max_field_tokens, s.max_response_tokens, s.score_eos)
        resp = [tok.response_ids(r) for r in t_resps]
        if self.lm.device.type == "cpu":
            torch.set_num_threads(cpu_threads())
        self.pairs_computed_ = 0
        run = _Run(tok, resp, Scorer(self.lm), total, progress, cancel)
        run.check()
        return run

    def _plain_units(self, run: _Run, targets: TextRows, todo: np.ndarray) -> Any:
        """d(i, plain) for the targets ``todo``, yielded as (targets, distances) in units of at
        most about :data:`UNIT_PAIRS` targets, so the caller can store each as it ends.

        The template head runs once per unit, prompts + responses behind it. Units follow the
        suffixes' length order and hold whole batches, so they make the same batches (and the
        same values) as one call over every target would."""
        heads, suffixes = [], []
        for i in todo.tolist():
            head, rest = split_prompt(run.tok, self.settings.plain_template,
                                      {"prompt": targets.prompts[i]})
            heads.append(head)
            suffixes.append(rest + run.resp[i])
        order = sorted(range(len(todo)), key=lambda k: len(suffixes[k]))  # stable, as in a batch
        batch = max(1, self.settings.batch_size)
        step = max(1, UNIT_PAIRS // batch) * batch
        for s in range(0, len(order), step):
            part = order[s: s + step]
            unit = todo[part]
            yield unit, self._grouped(run, [heads[k] for k in part], [suffixes[k] for k in part],
                                      [len(run.resp[i]) for i in unit.tolist()])

    def _run_local(self, run: _Run, plan: _Plan, targets: TextRows, examples: TextRows
                   ) -> Any:
        """Each work unit in this process, yielded as (positions, distances) when done."""
        for unit in plan.units:
            yield unit, self._example_distances(
                run, zip(plan.cols[unit].tolist(), plan.rows[unit].tolist()), targets, examples)

    def _run_ray(self, run: _Run, plan: _Plan, targets: TextRows, examples: TextRows) -> Any:
        """The work units on Ray actors, yielded as they arrive (see :mod:`.ray_backend`)."""
        from delift_core.kernels.ray_backend import run_units

        yield from run_units(self, plan.units, plan.cols, plan.rows, targets, examples,
                             tick=run.tick, check=run.check)

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

    def _truncation(self, targets: TextRows, examples: TextRows) -> tuple[int, int]:
        """(field values, responses) longer than their limits, counted per row of the kernel."""
        s = self.settings
        tok = SegmentTokens(self.lm, s.max_field_tokens, s.max_response_tokens, s.score_eos)
        fields = [*targets.prompts, *examples.prompts, *examples.responses]
        return (sum(len(tok.ids(t)) > s.max_field_tokens for t in fields),
                sum(len(tok.ids(r)) > s.max_response_tokens for r in targets.responses))

    def model_record(self) -> dict:
        """How this engine values a pair (model, precision, templates, tokenisation): what every
        kernel it serves records, exact or learned."""
        s, lm = self.settings, self.lm
        return {
            "model": lm.name, "model_source": lm.source,
            "model_fingerprint": lm.fingerprint, "dtype": str(lm.dtype).replace("torch.", ""),
            "device": str(lm.device),
            "plain_template": s.plain_template, "example_template": s.example_template,
            "chat_template": s.chat_template,
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
            "distance": "d = ||1 - p||_2 / sqrt(T) over the scored positions",
            "utility": "UF(i, j) = d(i, plain) - d(i, with example j)"}

    def _meta(self, run: _Run, targets: TextRows, examples: TextRows, start: float,
              d_plain: np.ndarray) -> dict:
        """What a kernel result records about how it was made."""
        n_t, n_e = len(targets.prompts), len(examples.prompts)
        trunc_fields, trunc_resps = self._truncation(targets, examples)
        return {
            "kind": "utility", **self.model_record(),
            "truncated_field_values": trunc_fields,
            "truncated_responses": trunc_resps,
            "truncation_counts": "rows whose target prompt, example prompt or example response "
                                 "(field values) or target response was cut at its limit",
            "rows": "targets i (items helped)", "columns": "in-context examples j",
            "row_ids": list(targets.ids), "col_ids": list(examples.ids),
            "shape": [n_t, n_e],
            "tokens_processed": run.scorer.tokens_processed,
            "positions_scored": run.scorer.positions_scored,
            "store": "pair store: SQLite, one entry per (target row, example row) content pair",
            "seconds": round(time.time() - start, 3),
            "d_plain": [float(x) for x in d_plain],
        }


def _norm(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def _first_index(keys: Sequence[bytes]) -> np.ndarray:
    """For each key, the index of its first occurrence (rows of equal content share values)."""
    seen: dict[bytes, int] = {}
    return np.array([seen.setdefault(k, i) for i, k in enumerate(keys)], dtype=np.int64)
