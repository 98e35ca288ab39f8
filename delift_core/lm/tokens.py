"""Token sequences exactly as the utility kernel and the evaluation give them to the model.

A prompt is tokenised in segments split at its template's fields: [BOS if the model uses one],
then each literal piece and each field value tokenised on its own (no special tokens) and
concatenated in template order. A response is tokenised alone, cut at a maximum length, then EOS
is appended when it is scored. One builder (:class:`SegmentTokens`) serves kernels and
evaluation, so both see the same tokens; the batching helpers pad those sequences and find the
positions whose logits predict the scored tokens.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Sequence

import torch

from delift_core.lm.models import CausalLM

__all__ = ["template_segments", "SegmentTokens", "chat_wrapped_template", "split_prompt",
           "padded_batch", "scored_positions"]


def template_segments(template: str) -> list[tuple[str, str | None]]:
    """Split a format string into (literal, field) pieces, in order."""
    return [(lit, fld) for lit, fld, _, _ in string.Formatter().parse(template)]


_CHAT_SLOT = "DELIFTPROMPTSLOT7F3A"


def chat_wrapped_template(lm: CausalLM, template: str) -> str:
    """``template`` as the user turn of the tokenizer's chat template, followed by the assistant's
    generation prompt: the chat template's text before and after the user's content becomes
    literal pieces, so the prompt is still tokenised in segments. A leading BOS text is dropped
    when the model puts BOS first anyway (it would appear twice). A template already wrapped is
    returned as it is."""
    tok = lm.tokenizer
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"the tokenizer of '{lm.name}' has no chat template; turn the chat "
                         "template option off for this model")
    text = tok.apply_chat_template([{"role": "user", "content": _CHAT_SLOT}], tokenize=False,
                                   add_generation_prompt=True)
    if not isinstance(text, str) or text.count(_CHAT_SLOT) != 1:
        raise ValueError(f"the chat template of '{lm.name}' does not render the user's message "
                         "once; it cannot wrap the prompt")
    head, tail = text.split(_CHAT_SLOT)
    if lm.bos_token_id is not None and tok.bos_token and head.startswith(tok.bos_token):
        head = head[len(tok.bos_token):]

    def literal(s: str) -> str:
        return s.replace("{", "{{").replace("}", "}}")

    head, tail = literal(head), literal(tail)
    if template.startswith(head) and template.endswith(tail) and (head or tail):
        return template  # already wrapped (settings passed on to a worker)
    return head + template + tail


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
        """The token ids of ``text`` alone (no special tokens), cached per text."""
        if text not in self.cache:
            self.cache[text] = list(self.lm.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self.cache[text]

    def field_ids(self, text: str) -> list[int]:
        """A field value's ids, cut at ``max_field`` (counted in ``truncated_fields``)."""
        ids = self.ids(text)
        if len(ids) > self.max_field:
            self.truncated_fields += 1
            return ids[: self.max_field]
        return ids

    def response_ids(self, text: str) -> list[int]:
        """A response's ids cut at ``max_response``, then EOS when the model has one and it is
        scored."""
        ids = self.ids(text)
        if len(ids) > self.max_response:
            self.truncated_responses += 1
            ids = ids[: self.max_response]
        eos = self.lm.eos_token_id
        return ids + [eos] if eos is not None and self.score_eos else ids

    def prompt_ids(self, template: str, values: dict[str, str]) -> list[int]:
        """[BOS] + the template's literals and field values, each tokenised on its own."""
        bos = self.lm.bos_token_id
        out = [bos] if bos is not None else []
        for literal, fld in template_segments(template):
            if literal:
                out += self.ids(literal)
            if fld is not None:
                out += self.field_ids(values[fld])
        return out


def split_prompt(tok: SegmentTokens, template: str, values: dict[str, str]) -> tuple[list[int], list[int]]:
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
