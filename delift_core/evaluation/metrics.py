"""Text metrics of a generation against its reference: exact match of the final answer, ROUGE-L,
and where a generation is cut. The metric names, labels and directions live here too, so the
report, the CLI and the Evaluate page label and sort them the same way.
"""

from __future__ import annotations

import math
import re
from typing import Any

from delift_core.errors import optional_import

__all__ = ["METRICS", "LOWER_IS_BETTER", "METRIC_LABELS", "STOP_MARKERS", "extract_final_answer",
           "exact_match", "rouge_l", "cut_generation"]

METRICS = ("nll", "distance", "rouge_l", "cosine", "exact_match")
LOWER_IS_BETTER = {"nll", "distance"}
METRIC_LABELS = {"nll": "NLL/token ↓", "distance": "DELIFT distance ↓", "rouge_l": "ROUGE-L F1 ↑",
                 "cosine": "embedding cosine ↑", "exact_match": "exact match ↑"}
STOP_MARKERS = ("\n\n\n", "\nQuery:", "\nExample:", "\nInstruction:")

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _norm_number(text: str) -> str | None:
    text = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        value = float(text)
    except ValueError:
        return text.lower() or None
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return repr(value)


def extract_final_answer(text: str, *, reference: bool = False) -> str | None:
    """The final answer of a text, normalised (commas, ``$`` and a trailing ``.`` dropped).

    A reference has one only when it contains ``####`` (GSM8K): the text after the last ``####``.
    A prediction: the first number after its last ``####`` if it has one, else its last number.
    """
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        if reference:
            first = tail.splitlines()[0] if tail else ""
            m = _NUMBER.search(first)
            return _norm_number(m.group(0)) if m else (_norm_number(first) if first else None)
        m = _NUMBER.search(tail)
        return _norm_number(m.group(0)) if m else None
    if reference:
        return None
    found = _NUMBER.findall(text)
    return _norm_number(found[-1]) if found else None


def exact_match(prediction: str, reference: str) -> float | None:
    """1.0/0.0 when the reference has a final answer (see :func:`extract_final_answer`), else None."""
    gold = extract_final_answer(reference, reference=True)
    if gold is None:
        return None
    return float(extract_final_answer(prediction) == gold)


_ROUGE: Any = None


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of ``rouge-score`` (its default tokenizer: lower case, alphanumeric tokens)."""
    global _ROUGE
    if _ROUGE is None:
        rouge_scorer = optional_import("rouge_score.rouge_scorer", "eval", "ROUGE-L",
                                       package="rouge-score")
        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return float(_ROUGE.score(reference, prediction)["rougeL"].fmeasure)


def cut_generation(text: str) -> str:
    """A generation cut at the first stop marker (the template's separators), stripped."""
    cut = len(text)
    for marker in STOP_MARKERS:
        k = text.find(marker)
        if k != -1:
            cut = min(cut, k)
    return text[:cut].strip()
