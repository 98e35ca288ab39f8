"""Evaluating selected subsets: in-context learning (ICL) and LoRA fine-tuning on a held-out set.

For every subset (plus, on request, random subsets of the same size over several seeds, the full
pool and no examples at all) each test item is scored with the same causal LM and settings:

- ``icl``: the ``shots`` subset items whose *prompts* are most similar to the test prompt (cosine
  of sentence embeddings, ties broken by subset order) become the in-context examples, the most
  similar one last, nearest to the query. With one shot the prompt is exactly the engine's
  :data:`~delift_core.kernels.utility.DEFAULT_EXAMPLE_TEMPLATE`; with none it is
  :data:`~delift_core.kernels.utility.DEFAULT_PLAIN_TEMPLATE`; with k shots the example block repeats
  (see :func:`~delift_core.evaluation.icl.icl_template`). Prompts are tokenised in template
  segments as the utility kernel does (:class:`delift_core.lm.tokens.SegmentTokens`: each literal
  and each field value on its own, fields cut at ``max_field_tokens``).
- ``lora``: LoRA adapters (``peft``) are trained on the subset (plain template, loss on the
  response tokens only) with the same settings for every subset, then scored zero-shot.

Scores per item: teacher-forced mean negative log-likelihood per reference token and the DELIFT
distance ``||1 - p||_2 / sqrt(T)`` (reference cut at ``max_reference_tokens``, EOS scored when the
model has one); greedy generation of at most ``max_new_tokens`` tokens, cut at the first blank-line
block (``"\\n\\n\\n"``, the template's separator) or a new ``Query:``/``Example:`` header, then
ROUGE-L F1 (``rouge-score``, no stemming), embedding cosine to the reference and, where the
reference has a final answer (GSM8K ``#### 18``), exact match (see
:func:`~delift_core.evaluation.metrics.extract_final_answer`).

Item results are cached on disk (``BlockStore``) under a key made of the model fingerprint, the
dtype, the settings and the exact model input (so the subset's chosen examples and the test item);
LoRA adapters are cached under the subset content, the model and the training settings.

Modules: ``settings`` (EvalSettings, EvaluationError), ``subsets`` (the subset and baselines),
``icl`` (example choice and prompts), ``lora`` (adapter training), ``scoring`` (teacher-forced
scores through :class:`delift_core.lm.scorer.Scorer` and generation), ``metrics`` (text metrics),
``report`` (EvalReport) and ``run`` (:func:`evaluate`). The ``delift evaluate`` command lives in
:mod:`delift_core.cli`; this package logs (``logging``) and never prints.
"""

from __future__ import annotations

from delift_core.evaluation.icl import icl_template, nearest_examples
from delift_core.evaluation.lora import attach_lora, lora_state, train_lora
from delift_core.evaluation.metrics import (LOWER_IS_BETTER, METRIC_LABELS, METRICS, STOP_MARKERS,
                                            cut_generation, exact_match, extract_final_answer,
                                            rouge_l)
from delift_core.evaluation.report import EvalReport
from delift_core.evaluation.run import ProgressFn, evaluate
from delift_core.evaluation.scoring import nll_and_distance
from delift_core.evaluation.settings import (EVAL_VERSION, MODES, EvalSettings,
                                             EvaluationCancelled, EvaluationError)
from delift_core.evaluation.subsets import (BASELINES, Subset, baseline_subsets, load_subset,
                                            method_subsets, parse_int_list)

__all__ = ["EVAL_VERSION", "MODES", "BASELINES", "METRICS", "LOWER_IS_BETTER", "METRIC_LABELS",
           "STOP_MARKERS", "EvaluationCancelled", "EvaluationError", "EvalSettings", "Subset", "load_subset",
           "baseline_subsets", "method_subsets", "parse_int_list", "icl_template", "nearest_examples",
           "attach_lora", "lora_state", "train_lora", "nll_and_distance", "extract_final_answer",
           "exact_match", "rouge_l", "cut_generation", "EvalReport", "ProgressFn", "evaluate"]
