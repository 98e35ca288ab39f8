"""The DELIFT pairwise utility kernel, computed with the causal LM itself.

For a target i and an in-context example j, the response y_i is teacher-forced after the plain
prompt and after a prompt that first shows (x_j, y_j). With p_t the probability of the true token
at each of the T scored positions, the distance is d = ||1 - p||_2 / sqrt(T), and the utility is
UF(i, j) = d(i, plain) - d(i, with j). Rows are targets i, columns are examples j.

Token sequences: [BOS if the model uses one] + prompt tokens + response tokens [+ EOS if scored].
The prompt is tokenised in segments split at the template's fields: each literal piece and each
field value is tokenised on its own (no special tokens) and the pieces are concatenated. Every
choice is recorded in ``meta`` so another implementation can rebuild the same sequences.
"""

from __future__ import annotations

import copy
import os
import string
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .cache import BlockStore, content_key
from .matrices import scale_to_unit
from .models import CausalLM, cache_dir

ENGINE_VERSION = "utility-v1"
DEFAULT_PLAIN_TEMPLATE = ("Instruction: Please generate a response to the following query.\n\n\n"
                          "Query: {prompt}\n")
DEFAULT_EXAMPLE_TEMPLATE = ("Instruction:\nUse the following example as a guide to answer the query "
                            "in the same format and style, providing a clear and concise response."
                            "\n\n\nExample:\n{example_prompt}\n{example_response}\n\n\nQuery:\n"
                            "{prompt}\n")
ProgressFn = Callable[[int, int], None]


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


def template_segments(template: str) -> list[tuple[str, str | None]]:
    """Split a format string into (literal, field) pieces, in order."""
    return [(lit, fld) for lit, fld, _, _ in string.Formatter().parse(template)]


@dataclass
class SegmentTokens:
    """Segment-wise tokenisation (BOS, template literals and field values tokenised separately),
    with per-text caching and truncation counts: the one token builder of kernels and evaluation."""

    lm: CausalLM
    max_field: int
    max_response: int
    score_eos: bool = True
    cache: dict = field(default_factory=dict)
    truncated_fields: int = 0
    truncated_responses: int = 0

    def ids(self, text: str) -> list[int]:
        if text not in self.cache:
            self.cache[text] = list(self.lm.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self.cache[text]

    def field_ids(self, text: str) -> list[int]:
        ids = self.ids(text)
        if len(ids) > self.max_field:
            self.truncated_fields += 1
            return ids[: self.max_field]
        return ids

    def response_ids(self, text: str) -> list[int]:
        ids = self.ids(text)
        if len(ids) > self.max_response:
            self.truncated_responses += 1
            ids = ids[: self.max_response]
        eos = self.lm.eos_token_id
        return ids + [eos] if eos is not None and self.score_eos else ids

    def prompt_ids(self, template: str, values: dict[str, str]) -> list[int]:
        bos = self.lm.bos_token_id
        out = [bos] if bos is not None else []
        for literal, fld in template_segments(template):
            if literal:
                out += self.ids(literal)
            if fld is not None:
                out += self.field_ids(values[fld])
        return out


def padded_batch(seqs: Sequence[list[int]], pad: int, *, left: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(ids, attention mask, lengths) of token sequences padded to one width, on the right or,
    with ``left``, on the left (so every sequence ends at the last column)."""
    lengths = [len(s) for s in seqs]
    width = max(lengths)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        span = slice(width - len(s), width) if left else slice(0, len(s))
        ids[b, span] = torch.tensor(s, dtype=torch.long)
        mask[b, span] = 1
    return ids, mask, lengths


def scored_positions(lengths: Sequence[int], n_scored: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch row, position) of the logits that predict each sequence's last ``n_scored`` tokens."""
    rows = [torch.full((n,), b) for b, n in enumerate(n_scored)]
    pos = [torch.arange(length - n - 1, length - 1) for length, n in zip(lengths, n_scored)]
    return torch.cat(rows), torch.cat(pos)


def response_distance(probs: torch.Tensor) -> float:
    """d = ||1 - p||_2 / sqrt(T) for the true-token probabilities p of one response."""
    t = probs.numel()
    return float(torch.linalg.vector_norm(1.0 - probs.double()) / np.sqrt(t))


def split_prompt(tok: "SegmentTokens", template: str, values: dict[str, str]) -> tuple[list[int], list[int]]:
    """The prompt tokens split before the ``{prompt}`` field value: (shared head, the rest).

    ``head + rest`` is exactly ``tok.prompt_ids(template, values)``; the head does not depend on
    the target, so one run of it serves every target (its key/value cache is reused).
    """
    bos = tok.lm.bos_token_id
    head = [bos] if bos is not None else []
    rest: list[int] = []
    out = head
    for literal, fld in template_segments(template):
        if literal:
            out += tok.ids(literal)
        if fld == "prompt" and out is head:
            out = rest
        if fld is not None:
            out += tok.field_ids(values[fld])
    return head, rest


def _cache_rows(cache: Any, rows: torch.Tensor | None, batch: int) -> Any:
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


class _Scorer:
    """Batched teacher forcing that computes logits only at the scored positions.

    :meth:`run_groups` runs each shared prefix once and reuses its key/value cache for batches of
    suffixes behind it (right-padded; positions continue from the prefix, and the causal mask keeps
    suffix padding out of every real token's view; when several prefixes share a batch, they are
    left-padded and a 2-D attention mask hides each row's prefix padding). The hidden states at scored positions
    wait in a queue, so the vocabulary head runs on many of them at once.
    """

    head_rows = 1024  # scored positions per head call: large enough for an efficient matmul
    vocab_chunk = 2048  # logits computed a vocabulary slice at a time, small enough to stay in cache
    prefix_batch = 8  # prefixes run together, their suffixes batched across them by length

    def __init__(self, lm: CausalLM) -> None:
        self.lm = lm
        model = lm.model
        self.body = getattr(model, model.base_model_prefix)
        self.head = model.get_output_embeddings()
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        cfg = model.config
        text_config = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        # several prefixes share a batch left-padded, so each row's cache index differences equal
        # its position differences (sliding windows stay exact); chunked local attention counts
        # absolute cache indices, so there each prefix runs on its own
        self.share_prefixes = not getattr(text_config, "attention_chunk_size", None)
        # a plain linear output layer is applied a vocabulary slice at a time; any other head
        # (a quantised one, say) is called as it is, on the whole vocabulary
        self.sliced_head = isinstance(self.head, torch.nn.Linear)
        pad = lm.tokenizer.pad_token_id
        self.pad = int(pad if pad is not None else 0)
        if lm.device.type == "cpu":
            torch.set_num_threads(cpu_threads())
        self.tokens_processed = 0  # real (not padding) tokens run through the transformer body
        self.positions_scored = 0  # rows the vocabulary head was applied to

    @property
    def vocab_size(self) -> int:
        """Rows of the output layer (the ids it scores)."""
        if self.sliced_head:
            return self.head.weight.shape[0]
        return int(self.head.out_features if hasattr(self.head, "out_features")
                   else self.lm.model.config.get_text_config().vocab_size)

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

    @torch.inference_mode()
    def p_true(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Probability of each target token given its hidden state (fp32 softmax over the vocabulary).

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
            out.append((true - lse).exp())
        return torch.cat(out).cpu()

    def _padded(self, seqs: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        return padded_batch(seqs, self.pad)

    @torch.inference_mode()
    def prefix_cache(self, prefix: Sequence[int]) -> Any:
        """The key/value cache of one shared prefix (batch 1), or None for an empty prefix."""
        if not prefix:
            return None
        ids = torch.tensor([list(prefix)], dtype=torch.long, device=self.lm.device)
        out = self.body(input_ids=ids, use_cache=True)
        self.tokens_processed += len(prefix)
        return out.past_key_values

    @torch.inference_mode()
    def scored_hidden(self, cache: Any, prefix_len: int, suffixes: Sequence[list[int]],
                      n_scored: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states at the scored positions of suffixes run behind a cached prefix of
        ``prefix_len`` tokens (no prefix when ``cache`` is None), and the tokens they predict."""
        ids, mask, lengths = self._padded(suffixes)
        dev = self.lm.device
        if cache is None:
            hidden = self.body(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                               use_cache=False).last_hidden_state
        else:
            b, width = ids.shape
            position_ids = torch.arange(prefix_len, prefix_len + width, device=dev).expand(b, width)
            hidden = self.body(input_ids=ids.to(dev), past_key_values=_cache_rows(cache, None, b),
                               use_cache=True, position_ids=position_ids).last_hidden_state
        self.tokens_processed += sum(lengths)
        rows_t, pos_t = scored_positions(lengths, n_scored)
        return hidden[rows_t.to(dev), pos_t.to(dev)], ids[rows_t, pos_t + 1].to(dev)

    @torch.inference_mode()
    def prefix_caches(self, prefixes: Sequence[list[int]]) -> Any:
        """One key/value cache for several non-empty prefixes, left-padded (row g = prefix g).

        The attention mask hides the padding and positions count from each prefix's first real
        token, so each row's last len(prefix) entries are exactly that prefix's keys and values.
        """
        ids, mask, lengths = padded_batch(prefixes, self.pad, left=True)
        width = ids.shape[1]
        pad = torch.tensor([width - n for n in lengths], dtype=torch.long)
        position_ids = (torch.arange(width)[None, :] - pad[:, None]).clamp(min=0)
        dev = self.lm.device
        out = self.body(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                        position_ids=position_ids.to(dev), use_cache=True)
        self.tokens_processed += sum(lengths)
        return out.past_key_values

    @torch.inference_mode()
    def scored_hidden_multi(self, cache: Any, width_p: int, rows: torch.Tensor,
                            prefix_lens: Sequence[int], suffixes: Sequence[list[int]],
                            n_scored: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`scored_hidden`, each suffix behind its own row of a left-padded prefix cache.

        The attention mask hides each row's prefix padding (the first ``width_p - prefix_lens[b]``
        entries) and positions continue from the real prefix length, so values equal the
        one-prefix path.
        """
        ids, _, lengths = self._padded(suffixes)
        dev = self.lm.device
        b, width = ids.shape
        mask = torch.zeros((b, width_p + width), dtype=torch.long)
        for k, (lp, ls) in enumerate(zip(prefix_lens, lengths)):
            mask[k, width_p - lp: width_p + ls] = 1
        lens = torch.tensor(list(prefix_lens), dtype=torch.long)
        position_ids = (lens[:, None] + torch.arange(width)[None, :]).to(dev)
        hidden = self.body(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                           past_key_values=_cache_rows(cache, rows.to(dev), b), use_cache=True,
                           position_ids=position_ids).last_hidden_state
        self.tokens_processed += sum(lengths)
        rows_t, pos_t = scored_positions(lengths, n_scored)
        return hidden[rows_t.to(dev), pos_t.to(dev)], ids[rows_t, pos_t + 1].to(dev)

    def run_groups(self, groups: Sequence[tuple[list[int], list[int]]], suffixes: Sequence[list[int]],
                   n_scored: Sequence[int], batch_size: int,
                   on_done: Callable[[int], None] | None = None,
                   before_batch: Callable[[], None] | None = None) -> np.ndarray:
        """Distances of ``prefix + suffixes[k]`` for every (prefix, members) group and member k.

        Each prefix runs once; its last token moves into every suffix, so the position that
        predicts the first scored token is always in the suffix. Up to ``prefix_batch`` prefixes
        run together (left-padded) and their suffixes are batched across them by length (less
        padding, larger batches); with chunked local attention each prefix runs on its own.
        ``on_done(n)`` reports sequences finished (after the head has scored them).
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
            if on_done:
                on_done(sum(len(m) for _, _, m in pending))
            pending, n_pending = [], 0

        def queue(hidden: torch.Tensor, targets: torch.Tensor, idx: list[int]) -> None:
            nonlocal n_pending
            pending.append((hidden, targets, idx))
            n_pending += hidden.shape[0]
            if n_pending >= self.head_rows:
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


@dataclass
class KernelResult:
    """A raw kernel (rows = items helped, columns = in-context examples) and how it was made."""

    values: np.ndarray
    row_ids: list[str]
    col_ids: list[str]
    meta: dict

    @property
    def scaled(self) -> np.ndarray:
        return scale_to_unit(self.values)


@dataclass
class _Run:
    """One kernel computation's cache store, tokens, scorer, progress count and cancel event."""

    store: BlockStore | None
    tok: SegmentTokens
    resp: list[list[int]]
    scorer: "_Scorer"
    total: int
    progress: ProgressFn | None
    cancel: threading.Event | None
    done: int = 0
    blocks_reused: int = 0

    def tick(self, k: int) -> None:
        self.done += k
        if self.progress:
            self.progress(self.done, self.total)

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise KernelCancelled("kernel computation cancelled")


class UtilityKernel:
    """Computes UF(i, j) for targets i and examples j, in cached, resumable blocks of examples.

    ``compute`` returns a :class:`KernelResult`; ``progress(done_pairs, total_pairs)`` is called
    as work finishes, and setting ``cancel`` stops the run between batches.
    """

    def __init__(self, lm: CausalLM, settings: UtilitySettings | None = None,
                 cache_root: str | None = None, use_cache: bool = True) -> None:
        self.lm = lm
        self.settings = settings or UtilitySettings()
        self.settings.validate()
        self.cache_root = cache_root
        self.use_cache = use_cache
        self.pairs_computed_ = 0
        self.tokens_processed_ = 0
        self.positions_scored_ = 0

    def _key(self, t_prompts, t_resps, e_prompts, e_resps) -> dict:
        return {"engine": ENGINE_VERSION, "model": self.lm.fingerprint, "dtype": str(self.lm.dtype),
                "settings": self.settings.value_key(), "bos": self.lm.bos_token_id,
                "eos": self.lm.eos_token_id,
                "targets": content_key([t_prompts, t_resps]),
                "examples": content_key([e_prompts, e_resps]),
                "block_size": self.settings.block_size}

    def token_sequences(self, t_prompts: Sequence[str], t_resps: Sequence[str],
                        e_prompts: Sequence[str], e_resps: Sequence[str]):
        """Plain and with-example token sequences (exactly what the model is given)."""
        s = self.settings
        tok = SegmentTokens(self.lm, s.max_field_tokens, s.max_response_tokens, s.score_eos)
        plain = [tok.prompt_ids(s.plain_template, {"prompt": p}) for p in t_prompts]
        resp = [tok.response_ids(r) for r in t_resps]
        return tok, plain, resp

    def _plain_distances(self, scorer: _Scorer, tok: SegmentTokens, t_prompts: Sequence[str],
                         resp: list[list[int]], tick: Callable[[int], None],
                         check: Callable[[], None]) -> np.ndarray:
        """d(i, plain) for every target: the template head runs once, prompts + responses behind it."""
        s = self.settings
        heads, suffixes = [], []
        for p, r in zip(t_prompts, resp):
            head, rest = split_prompt(tok, s.plain_template, {"prompt": p})
            heads.append(head)
            suffixes.append(rest + r)
        return self._grouped(scorer, heads, suffixes, [len(r) for r in resp], tick, check)

    def _example_distances(self, scorer: _Scorer, tok: SegmentTokens, pairs: Sequence[tuple[int, int]],
                           t_prompts: Sequence[str], resp: list[list[int]],
                           e_prompts: Sequence[str], e_resps: Sequence[str],
                           tick: Callable[[int], None], check: Callable[[], None]) -> np.ndarray:
        """d(i, with example j) for each (j, i) pair: each example's prefix runs once."""
        s = self.settings
        heads, suffixes = [], []
        for j, i in pairs:
            head, rest = split_prompt(tok, s.example_template, {
                "example_prompt": e_prompts[j], "example_response": e_resps[j],
                "prompt": t_prompts[i]})
            heads.append(head)
            suffixes.append(rest + resp[i])
        return self._grouped(scorer, heads, suffixes, [len(resp[i]) for _, i in pairs], tick, check)

    def _grouped(self, scorer: _Scorer, heads: list[list[int]], suffixes: list[list[int]],
                 n_scored: list[int], tick: Callable[[int], None],
                 check: Callable[[], None]) -> np.ndarray:
        """Distances of ``heads[k] + suffixes[k]``, each distinct head run once."""
        groups: dict[tuple, list[int]] = {}
        for k, h in enumerate(heads):
            groups.setdefault(tuple(h), []).append(k)
        return scorer.run_groups([(list(h), m) for h, m in groups.items()], suffixes, n_scored,
                                 self.settings.batch_size, tick, check)

    def _start(self, key: dict, t_prompts: Sequence[str], t_resps: Sequence[str], n_pairs: int,
               progress: ProgressFn | None, cancel: threading.Event | None) -> "_Run":
        """Open the cache for ``key`` and tokenise the targets: what every computation starts with."""
        root = Path(self.cache_root) if self.cache_root else cache_dir() / "kernels"
        store = BlockStore(root, content_key(key), key) if self.use_cache else None
        s = self.settings
        tok = SegmentTokens(self.lm, s.max_field_tokens, s.max_response_tokens, s.score_eos)
        resp = [tok.response_ids(r) for r in t_resps]
        self.pairs_computed_ = 0
        return _Run(store, tok, resp, _Scorer(self.lm), n_pairs + len(t_prompts), progress, cancel)

    def _plain(self, run: "_Run", t_prompts: Sequence[str]) -> np.ndarray:
        """d(i, plain) for every target, from the cache when it holds them."""
        n_t = len(t_prompts)
        d_plain = run.store.get("plain") if run.store else None
        if d_plain is None or d_plain.shape != (n_t,):
            d_plain = self._plain_distances(run.scorer, run.tok, t_prompts, run.resp, run.tick,
                                            run.check)
            self.pairs_computed_ += n_t
            if run.store:
                run.store.put("plain", d_plain)
        else:
            run.tick(n_t)
        return d_plain

    def _meta(self, run: "_Run", row_ids, col_ids, n_t: int, n_e: int, n_blocks: int,
              start: float, d_plain: np.ndarray) -> dict:
        """What a kernel result records about how it was made."""
        s = self.settings
        tok, store, blocks_reused = run.tok, run.store, run.blocks_reused
        return {
            "kind": "utility",
            "model": self.lm.name, "model_source": self.lm.source,
            "model_fingerprint": self.lm.fingerprint, "dtype": str(self.lm.dtype).replace("torch.", ""),
            "device": str(self.lm.device),
            "plain_template": s.plain_template, "example_template": s.example_template,
            "bos_token_id": self.lm.bos_token_id, "bos_first": self.lm.bos_token_id is not None,
            "eos_token_id": self.lm.eos_token_id,
            "score_eos": bool(s.score_eos and self.lm.eos_token_id is not None),
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
            "row_ids": list(row_ids) if row_ids is not None else None,
            "col_ids": list(col_ids) if col_ids is not None else None,
            "shape": [n_t, n_e], "pairs_computed": self.pairs_computed_,
            "tokens_processed": run.scorer.tokens_processed,
            "positions_scored": run.scorer.positions_scored,
            "blocks_reused": blocks_reused, "blocks_total": n_blocks,
            "blocks_damaged_recomputed": list(store.damaged) if store else [],
            "cache_dir": str(store.path) if store else None,
            "seconds": round(time.time() - start, 3),
            "d_plain": [float(x) for x in d_plain],
        }

    def compute(self, t_prompts: Sequence[str], t_resps: Sequence[str],
                e_prompts: Sequence[str], e_resps: Sequence[str], *,
                row_ids: Sequence[str] | None = None, col_ids: Sequence[str] | None = None,
                progress: ProgressFn | None = None,
                cancel: threading.Event | None = None) -> KernelResult:
        """UF for every (target, example) pair; blocks already in the cache are not recomputed."""
        s = self.settings
        start = time.time()
        n_t, n_e = len(t_prompts), len(e_prompts)
        key = self._key(list(t_prompts), list(t_resps), list(e_prompts), list(e_resps))
        run = self._start(key, t_prompts, t_resps, n_t * n_e, progress, cancel)
        store, tok, resp, scorer, tick, check = (run.store, run.tok, run.resp, run.scorer,
                                                 run.tick, run.check)
        n_blocks = (n_e + s.block_size - 1) // s.block_size
        d_plain = self._plain(run, t_prompts)
        d_with = np.empty((n_t, n_e), dtype=np.float64)
        for blk in range(n_blocks):
            cols = range(blk * s.block_size, min(n_e, (blk + 1) * s.block_size))
            name = f"examples_{blk:06d}"
            cached = store.get(name) if store else None
            if cached is not None and cached.shape == (n_t, len(cols)):
                d_with[:, cols.start: cols.stop] = cached
                run.blocks_reused += 1
                tick(n_t * len(cols))
                continue
            pairs = [(j, i) for j in cols for i in range(n_t)]
            block = self._example_distances(scorer, tok, pairs, t_prompts, resp, e_prompts,
                                            e_resps, tick, check).reshape(len(cols), n_t).T
            self.pairs_computed_ += n_t * len(cols)
            d_with[:, cols.start: cols.stop] = block
            if store:
                store.put(name, block)
        self.tokens_processed_ = scorer.tokens_processed
        self.positions_scored_ = scorer.positions_scored
        values = (d_plain[:, None] - d_with).astype(np.float32)
        meta = self._meta(run, row_ids, col_ids, n_t, n_e, n_blocks, start, d_plain)
        return KernelResult(values=values, row_ids=list(row_ids or range(n_t)),
                            col_ids=list(col_ids or range(n_e)), meta=meta)

    def compute_pairs(self, t_prompts: Sequence[str], t_resps: Sequence[str],
                      e_prompts: Sequence[str], e_resps: Sequence[str],
                      rows: Sequence[int], cols: Sequence[int], *,
                      row_ids: Sequence[str] | None = None, col_ids: Sequence[str] | None = None,
                      progress: ProgressFn | None = None,
                      cancel: threading.Event | None = None) -> KernelResult:
        """UF only for the given (target, example) pairs, as a scipy CSR float32 kernel.

        The same engine and cache as :meth:`compute`: pairs are grouped by example (its prefix run
        once), in cached, resumable blocks of ``block_size`` examples. Pairs not listed are absent.
        """
        import scipy.sparse as sp

        s = self.settings
        start = time.time()
        n_t, n_e = len(t_prompts), len(e_prompts)
        r = np.asarray(rows, dtype=np.int64)
        c = np.asarray(cols, dtype=np.int64)
        if r.shape != c.shape or (r.size and (r.min() < 0 or r.max() >= n_t or c.min() < 0
                                               or c.max() >= n_e)):
            raise ValueError("pair rows and columns must be equal-length index arrays in range")
        pairs = np.unique(np.stack([c, r], axis=1), axis=0) if r.size else np.zeros((0, 2), np.int64)
        c, r = pairs[:, 0], pairs[:, 1]
        key = self._key(list(t_prompts), list(t_resps), list(e_prompts), list(e_resps))
        key["pairs"] = content_key([c.tolist(), r.tolist()])
        run = self._start(key, t_prompts, t_resps, len(c), progress, cancel)
        store, tok, resp, scorer, tick, check = (run.store, run.tok, run.resp, run.scorer,
                                                 run.tick, run.check)
        n_blocks = (n_e + s.block_size - 1) // s.block_size
        d_plain = self._plain(run, t_prompts)
        d_with = np.empty(len(c), dtype=np.float64)
        bounds = np.searchsorted(c, np.arange(0, n_e + s.block_size, s.block_size))
        for blk in range(n_blocks):
            lo, hi = int(bounds[blk]), int(bounds[min(blk + 1, len(bounds) - 1)])
            if hi <= lo:
                continue
            name = f"pairs_{blk:06d}"
            cached = store.get(name) if store else None
            if cached is not None and cached.shape == (hi - lo,):
                d_with[lo:hi] = cached
                run.blocks_reused += 1
                tick(hi - lo)
                continue
            block = self._example_distances(scorer, tok, list(zip(c[lo:hi].tolist(),
                                                                  r[lo:hi].tolist())),
                                            t_prompts, resp, e_prompts, e_resps, tick, check)
            self.pairs_computed_ += hi - lo
            d_with[lo:hi] = block
            if store:
                store.put(name, block)
        self.tokens_processed_ = scorer.tokens_processed
        self.positions_scored_ = scorer.positions_scored
        values = sp.csr_matrix(((d_plain[r] - d_with).astype(np.float32), (r, c)), shape=(n_t, n_e),
                               dtype=np.float32)
        values.sort_indices()
        meta = self._meta(run, row_ids, col_ids, n_t, n_e, n_blocks, start, d_plain)
        meta.update({"sparse": True, "format": "scipy CSR float32, absent pairs not computed",
                     "nnz": int(values.nnz)})
        return KernelResult(values=values, row_ids=list(row_ids or range(n_t)),
                            col_ids=list(col_ids or range(n_e)), meta=meta)
