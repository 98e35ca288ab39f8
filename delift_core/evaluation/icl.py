"""In-context learning inputs: which subset items become a test item's examples, and the prompt.

The ``shots`` subset items whose *prompts* are most similar to the test prompt (cosine of
sentence embeddings, ties broken by subset order) become the examples, the most similar one
last, nearest to the query. With one shot the prompt is exactly the utility kernel's
:data:`~delift_core.kernels.utility.DEFAULT_EXAMPLE_TEMPLATE`, with none its
:data:`~delift_core.kernels.utility.DEFAULT_PLAIN_TEMPLATE`; with k shots the example block repeats.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from delift_core.data.dataset import Dataset
from delift_core.lm.tokens import SegmentTokens
from delift_core.kernels.utility_settings import DEFAULT_PLAIN_TEMPLATE
from delift_core.evaluation.subsets import Subset

__all__ = ["ICL_HEADER", "ICL_EXAMPLE", "ICL_QUERY", "icl_template", "nearest_examples",
           "icl_prompts"]

ICL_HEADER = ("Instruction:\nUse the following {noun} as a guide to answer the query in the same "
              "format and style, providing a clear and concise response.\n\n\n")
ICL_EXAMPLE = "Example:\n{{example_prompt_{i}}}\n{{example_response_{i}}}\n\n\n"
ICL_QUERY = "Query:\n{prompt}\n"


def icl_template(shots: int) -> str:
    """The ICL prompt template for ``shots`` examples (fields ``example_prompt_i`` etc.)."""
    if shots == 0:
        return DEFAULT_PLAIN_TEMPLATE
    noun = "example" if shots == 1 else "examples"
    return (ICL_HEADER.format(noun=noun) + "".join(ICL_EXAMPLE.format(i=i) for i in range(shots))
            + ICL_QUERY)


def nearest_examples(query_emb: np.ndarray, subset_emb: np.ndarray, k: int) -> np.ndarray:
    """For each query row, the indices of its ``k`` most similar subset rows, least similar first.

    Similarity is the dot product of unit vectors (cosine); ties go to the earlier subset row.
    """
    n = subset_emb.shape[0] if subset_emb.ndim == 2 else 0
    k = min(k, n)
    if k == 0:
        return np.zeros((len(query_emb), 0), dtype=np.int64)
    sim = np.asarray(query_emb, np.float64) @ np.asarray(subset_emb, np.float64).T
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return order[:, ::-1].copy()


def icl_prompts(tok: SegmentTokens, sub: Subset, test: Dataset, test_emb: np.ndarray,
                embedder: Any, shots: int, use_cache: bool = True
                ) -> tuple[list[list[int]], list[list[str]]]:
    """Each test item's prompt tokens with its nearest subset examples, and those examples' ids."""
    from delift_core.kernels.embedding import embed_texts

    shots = shots if sub.size else 0
    template = icl_template(min(shots, sub.size))
    if sub.size and shots:
        sub_emb = embed_texts(embedder, sub.data.prompts, use_cache=use_cache)
        chosen = nearest_examples(test_emb, sub_emb, shots)
    else:
        chosen = np.zeros((len(test), 0), dtype=np.int64)
    prompts = []
    for i in range(len(test)):
        values = {"prompt": test.prompts[i]}
        for slot, j in enumerate(chosen[i]):
            values[f"example_prompt_{slot}"] = sub.data.prompts[j]
            values[f"example_response_{slot}"] = sub.data.responses[j]
        prompts.append(tok.prompt_ids(template, values))
    return prompts, [[sub.data.ids[j] for j in row] for row in chosen]
