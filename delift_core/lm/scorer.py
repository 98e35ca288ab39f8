"""Teacher-forced scoring with a causal LM: the one place that turns hidden states into the
probability of the true next token, for the utility kernel and for evaluation alike.

The output head is applied only at the positions that predict scored tokens, and a vocabulary
slice at a time: each slice's log-sum-exp and the true tokens that fall in it are kept, so no
rows x vocabulary logit matrix is ever written out (Gemma's final logit soft-capping is applied
per slice). :meth:`Scorer.log_p_true` runs under the caller's gradient mode (LoRA training
differentiates through it); :meth:`Scorer.p_true` is its inference-mode form.

For the kernel, :meth:`Scorer.run_groups` runs each shared prompt prefix once and reuses its
key/value cache for batches of suffixes behind it. The cache is passed to the transformer body
under the keyword the installed transformers documents (``cache`` since 5.x, ``past_key_values``
before), so no deprecation warning is raised.
"""

from __future__ import annotations

import copy
import inspect
import os
from typing import Any, Callable, Sequence

import numpy as np
import torch

from delift_core.lm.models import CausalLM
from delift_core.lm.tokens import padded_batch, scored_positions

__all__ = ["Scorer", "response_distance", "cpu_threads", "cache_rows", "cache_keyword"]


def response_distance(probs: torch.Tensor) -> float:
    """d = ||1 - p||_2 / sqrt(T) for the true-token probabilities p of one response."""
    t = probs.numel()
    return float(torch.linalg.vector_norm(1.0 - probs.double()) / np.sqrt(t))


def cpu_threads() -> int:
    """Threads for CPU inference: all cores this process may use, or ``DELIFT_NUM_THREADS``.

    On a machine shared with other busy processes, fewer threads than cores can be faster
    (oversubscribed OpenMP threads wait on each other); the variable lets a user choose.
    """
    env = os.environ.get("DELIFT_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cache_keyword(body: Any) -> str:
    """The name under which ``body`` takes and returns its key/value cache: ``cache`` where its
    forward has that parameter (transformers 5.x, where ``past_key_values`` is deprecated), else
    ``past_key_values``."""
    try:
        params = inspect.signature(body.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - a forward without a signature
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def cache_rows(cache: Any, rows: torch.Tensor | None, batch: int) -> Any:
    """A shallow copy of a key/value cache holding, for each of ``batch`` rows, one row of it.

    ``rows`` None: the cache has one row, expanded (not copied) to ``batch``; otherwise the given
    rows are gathered. Layers are copied so the shared prefix cache is never mutated: ``update``
    concatenates into new tensors, and sliding-window layers keep their own ``cumulative_length``.
    """
    new = copy.copy(cache)
    layers = []
    for layer in cache.layers:
        lay = copy.copy(layer)
        if getattr(layer, "is_initialized", False) and layer.keys is not None and layer.keys.numel():
            if rows is None:
                lay.keys = layer.keys.expand(batch, *layer.keys.shape[1:])
                lay.values = layer.values.expand(batch, *layer.values.shape[1:])
            else:
                lay.keys = layer.keys.index_select(0, rows)
                lay.values = layer.values.index_select(0, rows)
        layers.append(lay)
    new.layers = layers
    return new


class Scorer:
    """Batched teacher forcing that computes logits only at the scored positions.

    ``model`` defaults to ``lm.model``; evaluation passes a LoRA (peft) copy, whose base model is
    unwrapped so its adapters run inside the body. :meth:`run_groups` runs each shared prefix
    once and reuses its key/value cache for batches of suffixes behind it (right-padded;
    positions continue from the prefix, and the causal mask keeps suffix padding out of every
    real token's view; when several prefixes share a batch, they are left-padded and a 2-D
    attention mask hides each row's prefix padding). The vocabulary head scores each body
    batch's scored positions as soon as the batch is done.
    """

    head_rows = 1024  # at most this many scored positions per head matmul
    vocab_chunk = 2048  # logits computed a vocabulary slice at a time, small enough to stay in cache
    prefix_batch = 8  # prefixes run together, their suffixes batched across them by length

    def __init__(self, lm: CausalLM, model: Any = None) -> None:
        self.lm = lm
        model = lm.model if model is None else model
        if hasattr(model, "get_base_model"):  # a peft model: its adapters live in the base model
            model = model.get_base_model()
        self.body = getattr(model, model.base_model_prefix)
        self.head = model.get_output_embeddings()
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        cfg = model.config
        text_config = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        self.text_config = text_config
        # several prefixes share a batch left-padded, so each row's cache index differences equal
        # its position differences (sliding windows stay exact); chunked local attention counts
        # absolute cache indices, so there each prefix runs on its own
        self.share_prefixes = not getattr(text_config, "attention_chunk_size", None)
        # a plain linear output layer is applied a vocabulary slice at a time; any other head
        # (a quantised one, say) is called as it is, on the whole vocabulary
        self.sliced_head = isinstance(self.head, torch.nn.Linear)
        self.cache_kw = cache_keyword(self.body)
        pad = lm.tokenizer.pad_token_id
        self.pad = int(pad if pad is not None else 0)
        self.tokens_processed = 0  # real (not padding) tokens run through the transformer body
        self.positions_scored = 0  # rows the vocabulary head was applied to

    @property
    def vocab_size(self) -> int:
        """Rows of the output layer (the ids it scores)."""
        if self.sliced_head:
            return self.head.weight.shape[0]
        return int(self.head.out_features if hasattr(self.head, "out_features")
                   else self.text_config.vocab_size)

    # ------------------------------------------------------------------------------------------
    # The head

    def _logits(self, hidden: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """float32 logits over vocabulary ids lo..hi-1 (softcapped when the model caps them)."""
        if self.sliced_head:
            bias = self.head.bias
            logits = torch.nn.functional.linear(hidden, self.head.weight[lo:hi],
                                                None if bias is None else bias[lo:hi]).float()
        else:
            logits = self.head(hidden)[:, lo:hi].float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def log_p_true(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Log-probability of each target token given its hidden state (fp32 log-softmax over the
        vocabulary), on the hidden states' device; gradients flow when the caller enables them.

        The logits are made a vocabulary slice at a time: each slice's log-sum-exp and the true
        tokens that fall in it are kept, so no rows x 262k logit matrix is ever written out.
        """
        vocab = self.vocab_size
        if targets.numel() and int(targets.max()) >= vocab:
            raise ValueError(f"token id {int(targets.max())} is outside the model's output layer "
                             f"({vocab} ids): the tokenizer does not match the model")
        step = self.vocab_chunk if self.sliced_head else vocab
        self.positions_scored += hidden.shape[0]
        out = []
        for s in range(0, hidden.shape[0], self.head_rows):
            h, t = hidden[s: s + self.head_rows], targets[s: s + self.head_rows]
            parts, true = [], torch.full((h.shape[0],), float("nan"), device=h.device)
            for lo in range(0, vocab, step):
                hi = min(vocab, lo + step)
                logits = self._logits(h, lo, hi)
                parts.append(torch.logsumexp(logits, dim=-1))
                # the true token's logit, from this slice when it falls in it (no device sync)
                inside = (t >= lo) & (t < hi)
                picked = logits.gather(1, (t - lo).clamp(0, hi - lo - 1).unsqueeze(1)).squeeze(1)
                true = torch.where(inside, picked, true)
            lse = torch.logsumexp(torch.stack(parts, dim=-1), dim=-1)
            out.append(true - lse)
        return torch.cat(out) if out else hidden.new_zeros((0,), dtype=torch.float32)

    @torch.inference_mode()
    def p_true(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Probability of each target token given its hidden state, on the CPU (no gradients)."""
        return self.log_p_true(hidden, targets).exp().cpu()

    def log_probs(self, seqs: Sequence[list[int]], n_scored: Sequence[int]) -> list[torch.Tensor]:
        """Log-probabilities of each sequence's last ``n_scored`` tokens (one right-padded batch,
        no cache); gradients flow when enabled. Evaluation and LoRA training score with this."""
        hidden, targets = self.scored_hidden(None, 0, seqs, n_scored)
        return list(torch.split(self.log_p_true(hidden, targets), list(n_scored)))

    # ------------------------------------------------------------------------------------------
    # The body, with and without a cached prefix (under the caller's gradient mode)

    def _forward(self, ids: torch.Tensor, *, mask: torch.Tensor | None = None,
                 positions: torch.Tensor | None = None, cache: Any = None,
                 keep_cache: bool = False) -> Any:
        """One run of the transformer body; the cache goes in under :attr:`cache_kw`."""
        dev = self.lm.device
        args: dict[str, Any] = {"input_ids": ids.to(dev), "use_cache": keep_cache or cache is not None}
        if mask is not None:
            args["attention_mask"] = mask.to(dev)
        if positions is not None:
            args["position_ids"] = positions.to(dev)
        if cache is not None:
            args[self.cache_kw] = cache
        return self.body(**args)

    def prefix_cache(self, prefix: Sequence[int]) -> Any:
        """The key/value cache of one shared prefix (batch 1), or None for an empty prefix."""
        if not prefix:
            return None
        out = self._forward(torch.tensor([list(prefix)], dtype=torch.long), keep_cache=True)
        self.tokens_processed += len(prefix)
        return getattr(out, self.cache_kw)

    def scored_hidden(self, cache: Any, prefix_len: int, suffixes: Sequence[list[int]],
                      n_scored: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states at the scored positions of suffixes run behind a cached prefix of
        ``prefix_len`` tokens (no prefix when ``cache`` is None), and the tokens they predict."""
        ids, mask, lengths = padded_batch(suffixes, self.pad)
        if cache is None:
            hidden = self._forward(ids, mask=mask).last_hidden_state
        else:
            b, width = ids.shape
            positions = torch.arange(prefix_len, prefix_len + width).expand(b, width)
            hidden = self._forward(ids, positions=positions,
                                   cache=cache_rows(cache, None, b)).last_hidden_state
        return self._at_scored(hidden, ids, lengths, n_scored)

    def prefix_caches(self, prefixes: Sequence[list[int]]) -> Any:
        """One key/value cache for several non-empty prefixes, left-padded (row g = prefix g).

        The attention mask hides the padding and positions count from each prefix's first real
        token, so each row's last len(prefix) entries are exactly that prefix's keys and values.
        """
        ids, mask, lengths = padded_batch(prefixes, self.pad, left=True)
        width = ids.shape[1]
        pad = torch.tensor([width - n for n in lengths], dtype=torch.long)
        positions = (torch.arange(width)[None, :] - pad[:, None]).clamp(min=0)
        out = self._forward(ids, mask=mask, positions=positions, keep_cache=True)
        self.tokens_processed += sum(lengths)
        return getattr(out, self.cache_kw)

    def scored_hidden_multi(self, cache: Any, width_p: int, rows: torch.Tensor,
                            prefix_lens: Sequence[int], suffixes: Sequence[list[int]],
                            n_scored: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`scored_hidden`, each suffix behind its own row of a left-padded prefix cache.

        The attention mask hides each row's prefix padding (the first ``width_p - prefix_lens[b]``
        entries) and positions continue from the real prefix length, so values equal the
        one-prefix path.
        """
        ids, _, lengths = padded_batch(suffixes, self.pad)
        b, width = ids.shape
        mask = torch.zeros((b, width_p + width), dtype=torch.long)
        for k, (lp, ls) in enumerate(zip(prefix_lens, lengths)):
            mask[k, width_p - lp: width_p + ls] = 1
        lens = torch.tensor(list(prefix_lens), dtype=torch.long)
        positions = lens[:, None] + torch.arange(width)[None, :]
        hidden = self._forward(ids, mask=mask, positions=positions,
                               cache=cache_rows(cache, rows.to(self.lm.device), b)).last_hidden_state
        return self._at_scored(hidden, ids, lengths, n_scored)

    def _at_scored(self, hidden: torch.Tensor, ids: torch.Tensor, lengths: list[int],
                   n_scored: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states at the scored positions, the tokens they predict), counting the tokens."""
        dev = self.lm.device
        self.tokens_processed += sum(lengths)
        rows_t, pos_t = scored_positions(lengths, n_scored)
        return hidden[rows_t.to(dev), pos_t.to(dev)], ids[rows_t, pos_t + 1].to(dev)

    # ------------------------------------------------------------------------------------------
    # Many prefixes, each with its suffixes

    @torch.inference_mode()
    def run_groups(self, groups: Sequence[tuple[list[int], list[int]]], suffixes: Sequence[list[int]],
                   n_scored: Sequence[int], batch_size: int,
                   on_done: Callable[[int], None] | None = None,
                   before_batch: Callable[[], None] | None = None) -> np.ndarray:
        """Distances of ``prefix + suffixes[k]`` for every (prefix, members) group and member k.

        Each prefix runs once; its last token moves into every suffix, so the position that
        predicts the first scored token is always in the suffix. Up to ``prefix_batch`` prefixes
        run together (left-padded) and their suffixes are batched across them by length (less
        padding, larger batches); with chunked local attention each prefix runs on its own.
        ``on_done(n)`` reports sequences once they are scored: the head scores each body batch
        as soon as it is done (in pieces of at most ``head_rows`` positions), so progress counts
        finished work, head included, and moves every body batch.
        """
        out = np.empty(len(suffixes))
        pending: list[tuple[torch.Tensor, torch.Tensor, list[int]]] = []
        n_pending = 0

        def flush() -> None:
            nonlocal pending, n_pending
            if not pending:
                return
            p = self.p_true(torch.cat([h for h, _, _ in pending]), torch.cat([t for _, t, _ in pending]))
            start = 0
            for _, _, members in pending:
                for k in members:
                    out[k] = response_distance(p[start: start + n_scored[k]])
                    start += n_scored[k]
            if on_done:  # scored, head included: the bar never waits at 100 % for the head
                on_done(sum(len(members) for _, _, members in pending))
            pending, n_pending = [], 0

        def queue(hidden: torch.Tensor, targets: torch.Tensor, idx: list[int]) -> None:
            nonlocal n_pending
            pending.append((hidden, targets, idx))
            n_pending += hidden.shape[0]
            # each body batch is scored at once: the grouping (on which the values' last bits
            # depend) follows the work order only, never the machine's speed
            flush()

        for g0 in range(0, len(groups), self.prefix_batch):
            chunk = groups[g0: g0 + self.prefix_batch]
            keeps = [prefix[:-1] for prefix, _ in chunk]
            seqs = {k: prefix[-1:] + list(suffixes[k]) for prefix, members in chunk for k in members}
            width_p = max(len(keep) for keep in keeps)
            if len(chunk) > 1 and self.share_prefixes and all(keeps):
                cache = self.prefix_caches(keeps)
                owner = {k: g for g, (_, members) in enumerate(chunk) for k in members}
                order = sorted(seqs, key=lambda k: len(seqs[k]))
                for s in range(0, len(order), batch_size):
                    if before_batch:
                        before_batch()
                    idx = order[s: s + batch_size]
                    rows = torch.tensor([owner[k] for k in idx], dtype=torch.long)
                    queue(*self.scored_hidden_multi(cache, width_p, rows,
                                                    [len(keeps[owner[k]]) for k in idx],
                                                    [seqs[k] for k in idx],
                                                    [n_scored[k] for k in idx]), idx)
                continue
            for keep, (_, members) in zip(keeps, chunk):
                if before_batch:
                    before_batch()
                cache = self.prefix_cache(keep)
                order = sorted(members, key=lambda k: len(seqs[k]))
                for s in range(0, len(order), batch_size):
                    if before_batch:
                        before_batch()
                    idx = order[s: s + batch_size]
                    queue(*self.scored_hidden(cache, len(keep), [seqs[k] for k in idx],
                                              [n_scored[k] for k in idx]), idx)
        flush()
        return out
