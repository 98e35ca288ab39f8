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

import string
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .cache import BlockStore, content_key
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
class _Tokens:
    """Per-text token ids for one tokenizer, with truncation counts."""

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


def response_distance(probs: torch.Tensor) -> float:
    """d = ||1 - p||_2 / sqrt(T) for the true-token probabilities p of one response."""
    t = probs.numel()
    return float(torch.linalg.vector_norm(1.0 - probs.double()) / np.sqrt(t))


class _Scorer:
    """Batched teacher forcing that computes logits only at the scored positions."""

    def __init__(self, lm: CausalLM) -> None:
        self.lm = lm
        model = lm.model
        self.body = getattr(model, model.base_model_prefix)
        self.head = model.get_output_embeddings()
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        pad = lm.tokenizer.pad_token_id
        self.pad = int(pad if pad is not None else 0)

    @torch.inference_mode()
    def distances(self, seqs: Sequence[list[int]], n_scored: Sequence[int]) -> np.ndarray:
        """Distance of each sequence's last ``n_scored`` tokens; sequences are right-padded."""
        dev = self.lm.device
        lengths = [len(s) for s in seqs]
        width = max(lengths)
        ids = torch.full((len(seqs), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[b, : len(s)] = 1
        hidden = self.body(input_ids=ids.to(dev), attention_mask=mask.to(dev)).last_hidden_state
        rows, pos, tgt, owner = [], [], [], []
        for b, (length, n) in enumerate(zip(lengths, n_scored)):
            p = torch.arange(length - n - 1, length - 1)
            rows.append(torch.full((n,), b))
            pos.append(p)
            tgt.append(ids[b, p + 1])
            owner += [b] * n
        rows_t, pos_t = torch.cat(rows).to(dev), torch.cat(pos).to(dev)
        logits = self.head(hidden[rows_t, pos_t]).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        logp = torch.log_softmax(logits, dim=-1)
        p_true = logp.gather(-1, torch.cat(tgt).to(dev).unsqueeze(-1)).squeeze(-1).exp().cpu()
        out = np.empty(len(seqs), dtype=np.float64)
        start = 0
        for b, n in enumerate(n_scored):
            out[b] = response_distance(p_true[start: start + n])
            start += n
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
        return minmax_scale(self.values)


def minmax_scale(values: np.ndarray) -> np.ndarray:
    """Scale a matrix to [0, 1] by its own min and max (the reference DELIFT behaviour)."""
    v = np.asarray(values, dtype=np.float32)
    lo, hi = float(v.min()), float(v.max())
    if hi - lo <= 0:
        return np.zeros_like(v)
    return (v - lo) / (hi - lo)


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
        tok = _Tokens(self.lm, s.max_field_tokens, s.max_response_tokens, s.score_eos)
        plain = [tok.prompt_ids(s.plain_template, {"prompt": p}) for p in t_prompts]
        resp = [tok.response_ids(r) for r in t_resps]
        return tok, plain, resp

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
        root = Path(self.cache_root) if self.cache_root else cache_dir() / "kernels"
        store = BlockStore(root, content_key(key), key) if self.use_cache else None
        tok, plain, resp = self.token_sequences(t_prompts, t_resps, e_prompts, e_resps)
        scorer = _Scorer(self.lm)
        n_blocks = (n_e + s.block_size - 1) // s.block_size
        total = n_t * n_e + n_t
        done = 0
        self.pairs_computed_ = 0
        blocks_reused = 0

        def tick(k: int) -> None:
            nonlocal done
            done += k
            if progress:
                progress(done, total)

        def run(seqs: list[list[int]], n_scored: list[int]) -> np.ndarray:
            order = np.argsort([len(x) for x in seqs], kind="stable")
            out = np.empty(len(seqs))
            for b in range(0, len(order), s.batch_size):
                if cancel is not None and cancel.is_set():
                    raise KernelCancelled("kernel computation cancelled")
                idx = order[b: b + s.batch_size]
                out[idx] = scorer.distances([seqs[k] for k in idx], [n_scored[k] for k in idx])
                tick(len(idx))
            return out

        d_plain = store.get("plain") if store else None
        if d_plain is None:
            d_plain = run([p + r for p, r in zip(plain, resp)], [len(r) for r in resp])
            self.pairs_computed_ += n_t
            if store:
                store.put("plain", d_plain)
        else:
            tick(n_t)
        d_with = np.empty((n_t, n_e), dtype=np.float64)
        for blk in range(n_blocks):
            cols = range(blk * s.block_size, min(n_e, (blk + 1) * s.block_size))
            name = f"examples_{blk:06d}"
            cached = store.get(name) if store else None
            if cached is not None and cached.shape == (n_t, len(cols)):
                d_with[:, cols.start: cols.stop] = cached
                blocks_reused += 1
                tick(n_t * len(cols))
                continue
            seqs, n_scored = [], []
            for j in cols:
                for i in range(n_t):
                    prompt = tok.prompt_ids(s.example_template, {
                        "example_prompt": e_prompts[j], "example_response": e_resps[j],
                        "prompt": t_prompts[i]})
                    seqs.append(prompt + resp[i])
                    n_scored.append(len(resp[i]))
            flat = run(seqs, n_scored)
            block = flat.reshape(len(cols), n_t).T
            self.pairs_computed_ += n_t * len(cols)
            d_with[:, cols.start: cols.stop] = block
            if store:
                store.put(name, block)
        values = (d_plain[:, None] - d_with).astype(np.float32)
        meta = {
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
            "blocks_reused": blocks_reused, "blocks_total": n_blocks,
            "blocks_damaged_recomputed": list(store.damaged) if store else [],
            "cache_dir": str(store.path) if store else None,
            "seconds": round(time.time() - start, 3),
            "d_plain": [float(x) for x in d_plain],
        }
        return KernelResult(values=values, row_ids=list(row_ids or range(n_t)),
                            col_ids=list(col_ids or range(n_e)), meta=meta)
