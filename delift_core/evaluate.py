"""Evaluating selected subsets: in-context learning (ICL) and LoRA fine-tuning on a held-out set.

For every subset (plus, on request, random subsets of the same size over several seeds, the full
pool and no examples at all) each test item is scored with the same causal LM and settings:

- ``icl``: the ``shots`` subset items whose *prompts* are most similar to the test prompt (cosine
  of sentence embeddings, ties broken by subset order) become the in-context examples, the most
  similar one last, nearest to the query. With one shot the prompt is exactly the engine's
  :data:`~delift_core.utility.DEFAULT_EXAMPLE_TEMPLATE`; with none it is
  :data:`~delift_core.utility.DEFAULT_PLAIN_TEMPLATE`; with k shots the example block repeats
  (see :func:`icl_template`). Prompts are tokenised in template segments as the utility kernel
  does (each literal and each field value on its own, fields cut at ``max_field_tokens``).
- ``lora``: LoRA adapters (``peft``) are trained on the subset (plain template, loss on the
  response tokens only) with the same settings for every subset, then scored zero-shot.

Scores per item: teacher-forced mean negative log-likelihood per reference token and the DELIFT
distance ``||1 - p||_2 / sqrt(T)`` (reference cut at ``max_reference_tokens``, EOS scored when the
model has one); greedy generation of at most ``max_new_tokens`` tokens, cut at the first blank-line
block (``"\\n\\n\\n"``, the template's separator) or a new ``Query:``/``Example:`` header, then
ROUGE-L F1 (``rouge-score``, no stemming), embedding cosine to the reference and, where the
reference has a final answer (GSM8K ``#### 18``), exact match (see :func:`extract_final_answer`).

Item results are cached on disk (``BlockStore``) under a key made of the model fingerprint, the
dtype, the settings and the exact model input (so the subset's chosen examples and the test item);
LoRA adapters are cached under the subset content, the model and the training settings.
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .cache import BlockStore, content_key
from .data import Dataset, load_dataset
from .errors import DeliftError
from .models import CausalLM, cache_dir
from .scorer import response_distance
from .tokens import SegmentTokens, padded_batch, scored_positions
from .utility import DEFAULT_PLAIN_TEMPLATE

EVAL_VERSION = "evaluate-v1"
MODES = ("icl", "lora")
BASELINES = ("random", "full", "none")
METRICS = ("nll", "distance", "rouge_l", "cosine", "exact_match")
LOWER_IS_BETTER = {"nll", "distance"}
METRIC_LABELS = {"nll": "NLL/token ↓", "distance": "DELIFT distance ↓", "rouge_l": "ROUGE-L F1 ↑",
                 "cosine": "embedding cosine ↑", "exact_match": "exact match ↑"}
ICL_HEADER = ("Instruction:\nUse the following {noun} as a guide to answer the query in the same "
              "format and style, providing a clear and concise response.\n\n\n")
ICL_EXAMPLE = "Example:\n{{example_prompt_{i}}}\n{{example_response_{i}}}\n\n\n"
ICL_QUERY = "Query:\n{prompt}\n"
STOP_MARKERS = ("\n\n\n", "\nQuery:", "\nExample:", "\nInstruction:")
ProgressFn = Callable[[str, int, int], None]


class EvaluationError(DeliftError, ValueError):
    """An evaluation cannot run as asked (inputs, settings, missing pool for baselines)."""


# ----------------------------------------------------------------------------------------------
# Settings and templates


@dataclass(frozen=True)
class EvalSettings:
    """Everything besides data and model that changes evaluation numbers (batching excepted)."""

    shots: int = 2
    max_field_tokens: int = 160
    max_reference_tokens: int = 96
    generate: bool = True
    max_new_tokens: int = 32
    batch_size: int = 4
    lora_steps: int = 12
    lora_batch_size: int = 4
    lora_lr: float = 1e-3
    lora_r: int = 8
    lora_alpha: int = 16
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj"
    lora_max_tokens: int = 192
    lora_seed: int = 0

    def validate(self) -> None:
        """Raise :class:`EvaluationError` for settings that cannot run."""
        ints = {"shots": (self.shots, 0), "max_field_tokens": (self.max_field_tokens, 1),
                "max_reference_tokens": (self.max_reference_tokens, 1),
                "max_new_tokens": (self.max_new_tokens, 1), "batch_size": (self.batch_size, 1),
                "lora_steps": (self.lora_steps, 0), "lora_batch_size": (self.lora_batch_size, 1),
                "lora_r": (self.lora_r, 1), "lora_max_tokens": (self.lora_max_tokens, 8)}
        for name, (value, low) in ints.items():
            if value < low:
                raise EvaluationError(f"{name.replace('_', '-')} must be at least {low} "
                                      f"(got {value})")
        if not self.lora_lr > 0:
            raise EvaluationError("lora-lr must be positive")
        if not [t for t in self.lora_targets.split(",") if t.strip()]:
            raise EvaluationError("lora-targets names no module")

    def icl_key(self) -> dict:
        """The settings that change ICL item scores."""
        return {"shots": self.shots, "max_field_tokens": self.max_field_tokens,
                "max_reference_tokens": self.max_reference_tokens, "generate": self.generate,
                "max_new_tokens": self.max_new_tokens}

    def lora_key(self) -> dict:
        """The settings that change a trained adapter."""
        return {k: v for k, v in asdict(self).items() if k.startswith("lora_")} | {
            "max_field_tokens": self.max_field_tokens,
            "max_reference_tokens": self.max_reference_tokens}


def icl_template(shots: int) -> str:
    """The ICL prompt template for ``shots`` examples (fields ``example_prompt_i`` etc.)."""
    if shots == 0:
        return DEFAULT_PLAIN_TEMPLATE
    noun = "example" if shots == 1 else "examples"
    return (ICL_HEADER.format(noun=noun) + "".join(ICL_EXAMPLE.format(i=i) for i in range(shots))
            + ICL_QUERY)


class _Tok(SegmentTokens):
    """The engine's segment-wise tokenisation, so evaluation sees exactly the kernel's tokens."""

    def __init__(self, lm: CausalLM, max_field: int, max_reference: int) -> None:
        super().__init__(lm, max_field, max_reference, score_eos=True)

    @property
    def truncated(self) -> int:
        return self.truncated_fields

    def prompt(self, template: str, values: Mapping[str, str]) -> list[int]:
        return self.prompt_ids(template, dict(values))

    def reference(self, text: str) -> list[int]:
        return self.response_ids(text)


# ----------------------------------------------------------------------------------------------
# Text metrics


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
        try:
            from rouge_score import rouge_scorer
        except ImportError:
            raise EvaluationError("ROUGE-L needs the rouge-score package: pip install "
                                  "rouge-score") from None
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


# ----------------------------------------------------------------------------------------------
# Example choice


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


# ----------------------------------------------------------------------------------------------
# Scoring with the LM


def _body_head(model: Any) -> tuple[Any, Any, float | None]:
    inner = model
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    body = getattr(inner, inner.base_model_prefix)
    return body, inner.get_output_embeddings(), getattr(inner.config, "final_logit_softcapping",
                                                        None)


def _pad_id(lm: CausalLM) -> int:
    pad = lm.tokenizer.pad_token_id
    if pad is None:
        pad = lm.eos_token_id
    return int(pad if pad is not None else 0)


def scored_logprobs(model: Any, seqs: Sequence[list[int]], n_scored: Sequence[int], pad: int,
                    device: Any) -> list[torch.Tensor]:
    """Log-probabilities of each sequence's last ``n_scored`` tokens (right-padded batch).

    Logits are computed only at the scored positions; gradients flow when enabled.
    """
    body, head, softcap = _body_head(model)
    ids, mask, lengths = padded_batch(seqs, pad)
    hidden = body(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    rows_t, pos_t = scored_positions(lengths, n_scored)
    targets = ids[rows_t, pos_t + 1].to(device)
    logits = head(hidden[rows_t.to(device), pos_t.to(device)]).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return list(torch.split(logp, list(n_scored)))


def nll_and_distance(logp: torch.Tensor) -> tuple[float, float]:
    """Mean negative log-likelihood per token and the DELIFT distance of one scored response."""
    lp = logp.detach().double().cpu()
    return float(-lp.mean()), response_distance(lp.exp())


@torch.inference_mode()
def _generate(model: Any, lm: CausalLM, prompts: Sequence[list[int]], max_new: int) -> list[list[int]]:
    """Greedy continuations (left-padded batch), each cut after its first EOS."""
    pad = _pad_id(lm)
    ids, mask, _ = padded_batch(prompts, pad, left=True)
    width = ids.shape[1]
    kwargs: dict[str, Any] = {"max_new_tokens": max_new, "do_sample": False, "pad_token_id": pad}
    if lm.eos_token_id is not None:
        kwargs["eos_token_id"] = lm.eos_token_id
    out = model.generate(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device),
                         **kwargs)[:, width:].cpu().tolist()
    result = []
    for row in out:
        if lm.eos_token_id is not None and lm.eos_token_id in row:
            row = row[: row.index(lm.eos_token_id)]
        result.append(row)
    return result


@dataclass
class _Item:
    """One model input to score: prompt tokens, reference tokens and where its result goes."""

    key: str
    prompt: list[int]
    reference: list[int]
    result: np.ndarray | None = None


def _score_items(model: Any, lm: CausalLM, items: list[_Item], settings: EvalSettings,
                 store: BlockStore | None, progress: Callable[[int], None] | None) -> None:
    """Fill ``item.result`` = [nll, distance, T, n_generated, *generated ids] (cached)."""
    todo = []
    for it in items:
        hit = store.get(it.key) if store is not None else None
        if hit is not None and hit.ndim == 1 and hit.shape[0] >= 4:
            it.result = hit
            if progress:
                progress(1)
        else:
            todo.append(it)
    # the same input may appear twice (e.g. two subsets choose the same examples): score it once
    unique: dict[str, list[_Item]] = {}
    for it in todo:
        unique.setdefault(it.key, []).append(it)
    keys = sorted(unique, key=lambda k: len(unique[k][0].prompt) + len(unique[k][0].reference))
    pad = _pad_id(lm)
    model.eval()
    for start in range(0, len(keys), settings.batch_size):
        group = [unique[k][0] for k in keys[start: start + settings.batch_size]]
        with torch.inference_mode():
            logps = scored_logprobs(model, [g.prompt + g.reference for g in group],
                                    [len(g.reference) for g in group], pad, lm.device)
        gens = (_generate(model, lm, [g.prompt for g in group], settings.max_new_tokens)
                if settings.generate else [[] for _ in group])
        for g, lp, gen in zip(group, logps, gens):
            nll, dist = nll_and_distance(lp)
            res = np.array([nll, dist, len(g.reference), len(gen), *gen], dtype=np.float64)
            if store is not None:
                store.put(g.key, res)
            for twin in unique[g.key]:
                twin.result = res
            if progress:
                progress(len(unique[g.key]))


# ----------------------------------------------------------------------------------------------
# Subsets and results


@dataclass
class Subset:
    """A training subset to evaluate: ``kind`` is 'subset', 'random', 'full' or 'none'."""

    name: str
    data: Dataset | None
    kind: str = "subset"
    seed: int | None = None
    info: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return 0 if self.data is None else len(self.data)


def load_subset(path: str | Path, name: str | None = None) -> tuple[Subset, Dataset | None]:
    """A subset from a data file or a ``delift select`` output folder, and that folder's pool.

    The pool comes back only when the folder's manifest names a pool file that still exists and
    hashes to the same text; random baselines are drawn from it.
    """
    p = Path(path).expanduser()
    pool = None
    info: dict[str, Any] = {"source": str(path)}
    if p.is_dir() and (p / "selection.json").exists():
        picks = sorted(p.glob("selected.*"))
        if not picks:
            raise EvaluationError(f"{path}: a `delift select` folder without a selected.* file")
        data = load_dataset(picks[0])
        try:
            sel = json.loads((p / "selection.json").read_text())
            manifest = json.loads((p / "manifest.json").read_text()) if (
                p / "manifest.json").exists() else {}
        except (OSError, json.JSONDecodeError) as e:
            raise EvaluationError(f"{path}: unreadable selection.json/manifest.json ({e})") from None
        info.update({"objective": sel.get("objective"), "budget": sel.get("budget"),
                     "selection_seed": (sel.get("params") or {}).get("seed"),
                     "kernel": (sel.get("params") or {}).get("kernel")})
        pool_rec = ((manifest.get("inputs") or {}).get("pool") or {})
        src = pool_rec.get("source")
        if src:
            try:
                cand = load_dataset(src)
                if cand.text_sha256 == pool_rec.get("text_sha256"):
                    pool = cand
            except DeliftError:
                pool = None
        label = name or p.name
    elif p.is_dir():
        raise EvaluationError(f"{path}: a folder, but not a `delift select` output (no "
                              "selection.json)")
    else:
        data = load_dataset(str(path))
        label = name or (p.stem if p.suffix else str(path))
    if len(data) == 0:
        raise EvaluationError(f"{path}: the subset has no usable rows")
    return Subset(label, data, "subset", info.get("selection_seed"), info), pool


def baseline_subsets(pool: Dataset | None, sizes: Sequence[int], baselines: Sequence[str],
                     seeds: Sequence[int]) -> list[Subset]:
    """Random subsets of each size for each seed, the full pool and the empty subset, as asked.

    ``pool`` may be None when only the "none" baseline is asked for."""
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise EvaluationError(f"unknown baseline(s) {unknown}; use {', '.join(BASELINES)}")
    if pool is None and any(b != "none" for b in baselines):
        raise EvaluationError("the random and full baselines need a pool (the data the subset was "
                              "chosen from; on the command line --pool FILE, or a `delift "
                              "select` folder whose manifest names its pool)")
    out = []
    if "random" in baselines:
        if not sizes:
            raise EvaluationError("random baselines need a size: give a subset (or, on the "
                                  "command line, --random-size N)")
        if not seeds:
            raise EvaluationError("random baselines need at least one seed")
        for size in sorted(set(sizes)):
            if size > len(pool):
                raise EvaluationError(f"a random subset of {size} rows needs a pool that large "
                                      f"(the pool has {len(pool)})")
            for seed in seeds:
                idx = np.sort(np.random.default_rng(seed).choice(len(pool), size, replace=False))
                out.append(Subset(f"random-{size}", pool.subset(idx), "random", int(seed)))
    if "full" in baselines:
        out.append(Subset("full", pool, "full"))
    if "none" in baselines:
        out.append(Subset("none", None, "none"))
    return out


def _dataset_key(ds: Dataset | None) -> str:
    return "empty" if ds is None else content_key([ds.prompts, ds.responses])


@dataclass
class EvalReport:
    """Per-run rows (one per subset, seed and mode), per-item scores, and what produced them."""

    rows: list[dict]
    items: list[dict]
    settings: dict
    meta: dict

    def summary(self) -> list[dict]:
        """Rows with random seeds folded into mean and sample standard deviation."""
        out, groups = [], {}
        for r in self.rows:
            if r["kind"] == "random":
                groups.setdefault((r["subset"], r["mode"]), []).append(r)
            else:
                out.append(dict(r, n_seeds=1))
        for (name, mode), rs in groups.items():
            s = {"subset": name, "kind": "random", "mode": mode, "size": rs[0]["size"],
                 "seed": ",".join(str(r["seed"]) for r in rs), "n_seeds": len(rs),
                 "n_test": rs[0]["n_test"], "n_exact": rs[0].get("n_exact", 0)}
            for m in METRICS:
                vals = [r[m] for r in rs if r.get(m) is not None]
                s[m] = float(np.mean(vals)) if vals else None
                s[m + "_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
            if "train_loss_first" in rs[0]:
                for k in ("train_loss_first", "train_loss_last"):
                    s[k] = float(np.mean([r[k] for r in rs if r.get(k) is not None] or [np.nan]))
            out.append(s)
        order = {"subset": 0, "random": 1, "full": 2, "none": 3}
        return sorted(out, key=lambda r: (r["mode"], order.get(r["kind"], 9)))

    def to_json(self) -> dict:
        """Everything: settings, model, per-run rows, the summary and per-item scores."""
        return {"settings": self.settings, "meta": self.meta, "rows": self.rows,
                "summary": self.summary(), "items": self.items}

    def to_markdown(self) -> str:
        """A markdown table of the summary; random rows show mean ± sd over seeds."""
        has_em = any(r.get("exact_match") is not None for r in self.rows)
        metrics = [m for m in METRICS if m != "exact_match" or has_em]
        if not self.settings.get("generate", True):
            metrics = [m for m in metrics if m in ("nll", "distance")]
        head = ["mode", "subset", "size", "seed(s)", *[METRIC_LABELS[m] for m in metrics], "n test"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.summary():
            cells = [r["mode"], r["subset"], str(r["size"]), str(r["seed"] if r["seed"] is not None
                                                                  else "–")]
            for m in metrics:
                v, sd = r.get(m), r.get(m + "_sd")
                cells.append("–" if v is None else (f"{v:.4f} ± {sd:.4f}" if sd is not None
                                                      else f"{v:.4f}"))
            cells.append(str(r["n_test"]) + (f" ({r.get('n_exact', 0)} with a final answer)"
                                             if has_em else ""))
            lines.append("| " + " | ".join(cells) + " |")
        s = self.settings
        lines.append("")
        lines.append(f"Model {self.meta.get('model')} ({self.meta.get('model_fingerprint')}), "
                     f"embedder {self.meta.get('embedder')}; settings: "
                     + ", ".join(f"{k}={v}" for k, v in s.items()) + ".")
        return "\n".join(lines) + "\n"

    def figure(self, title: str | None = None) -> Any:
        """A plotly bar chart: one panel per metric, random bars with ± sd error bars."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        summ = self.summary()
        metrics = [m for m in METRICS if any(r.get(m) is not None for r in summ)]
        modes = sorted({r["mode"] for r in summ})
        fig = make_subplots(rows=1, cols=max(1, len(metrics)),
                            subplot_titles=[METRIC_LABELS[m] for m in metrics])
        colours = {"icl": "#4C78A8", "lora": "#F58518"}
        for c, m in enumerate(metrics, start=1):
            for mode in modes:
                rs = [r for r in summ if r["mode"] == mode and r.get(m) is not None]
                fig.add_trace(go.Bar(
                    x=[f"{r['subset']} (n={r['size']})" for r in rs], y=[r[m] for r in rs],
                    error_y={"type": "data", "array": [r.get(m + "_sd") or 0 for r in rs]},
                    name=mode, legendgroup=mode, showlegend=c == 1,
                    marker_color=colours.get(mode),
                    hovertext=[f"seed(s) {r['seed']}, {r['n_test']} test items" for r in rs]),
                    row=1, col=c)
        fig.update_layout(barmode="group", title=title or "Evaluation of selected subsets",
                          height=420, width=max(600, 330 * len(metrics)))
        return fig

    def write(self, out_dir: str | Path, title: str | None = None) -> dict[str, Path]:
        """Write ``results.json``, ``results.md`` and ``chart.html`` (and ``chart.png`` if kaleido)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "results.json", "markdown": out / "results.md",
                 "chart": out / "chart.html"}
        paths["json"].write_text(json.dumps(self.to_json(), indent=1, default=str))
        paths["markdown"].write_text(self.to_markdown())
        fig = self.figure(title)
        fig.write_html(paths["chart"], include_plotlyjs="cdn")
        try:
            import kaleido  # noqa: F401

            fig.write_image(out / "chart.png")
            paths["png"] = out / "chart.png"
        except Exception:
            pass
        return paths


# ----------------------------------------------------------------------------------------------
# LoRA


def _lora_model(lm: CausalLM, settings: EvalSettings) -> Any:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise EvaluationError("LoRA evaluation needs the peft package: pip install peft") from None
    torch.manual_seed(settings.lora_seed)
    base = copy.deepcopy(lm.model)
    targets = [t.strip() for t in settings.lora_targets.split(",") if t.strip()]
    config = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=0.0,
                        target_modules=targets, bias="none")
    try:
        return get_peft_model(base, config)
    except ValueError as e:
        raise EvaluationError(f"LoRA could not be attached ({e}); set --lora-targets to module "
                              "names of this model") from None


def lora_state(model: Any) -> dict[str, torch.Tensor]:
    """The trainable LoRA tensors of a peft model, by name (detached copies)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def train_lora(lm: CausalLM, data: Dataset, settings: EvalSettings, *,
               progress: Callable[[int, int], None] | None = None,
               store: BlockStore | None = None) -> tuple[Any, dict]:
    """A copy of ``lm``'s model with LoRA adapters trained on ``data``, and its training record.

    Sequences are the plain template with the prompt, then the response and EOS; the loss is the
    mean NLL of the response tokens. Batches are drawn with ``lora_seed``. Adapters are cached.
    """
    model = _lora_model(lm, settings)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if store is not None and store.get("losses") is not None and all(
            store.get(f"w{k}") is not None for k in range(len(names))):
        with torch.no_grad():
            params = dict(model.named_parameters())
            for k, n in enumerate(names):
                params[n].copy_(torch.from_numpy(store.get(f"w{k}")))
        losses = store.get("losses").tolist()
        if progress:
            progress(settings.lora_steps, settings.lora_steps)
        model.eval()
        return model, {"losses": losses, "cached": True, "trainable_params": _count(model)}
    tok = _Tok(lm, settings.max_field_tokens, settings.max_reference_tokens)
    seqs, n_scored = [], []
    for p, r in zip(data.prompts, data.responses):
        prompt = tok.prompt(DEFAULT_PLAIN_TEMPLATE, {"prompt": p})
        ref = tok.reference(r)
        keep_ref = min(len(ref), max(1, settings.lora_max_tokens // 2))
        ref = ref[:keep_ref]
        prompt = prompt[-max(1, settings.lora_max_tokens - len(ref)):]
        seqs.append(prompt + ref)
        n_scored.append(len(ref))
    rng = np.random.default_rng(settings.lora_seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                            lr=settings.lora_lr, weight_decay=0.0)
    pad = _pad_id(lm)
    model.train()
    losses = []
    order: list[int] = []
    for step in range(settings.lora_steps):
        batch = []
        while len(batch) < min(settings.lora_batch_size, len(seqs)):
            if not order:
                order = list(rng.permutation(len(seqs)))
            batch.append(order.pop())
        logps = scored_logprobs(model, [seqs[k] for k in batch], [n_scored[k] for k in batch],
                                pad, lm.device)
        loss = -torch.cat(logps).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress:
            progress(step + 1, settings.lora_steps)
    model.eval()
    if store is not None:
        params = dict(model.named_parameters())
        for k, n in enumerate(names):
            store.put(f"w{k}", params[n].detach().float().cpu().numpy())
        store.put("losses", np.asarray(losses, dtype=np.float64))
    return model, {"losses": losses, "cached": False, "trainable_params": _count(model)}


def _count(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


# ----------------------------------------------------------------------------------------------
# The evaluation


def evaluate(subsets: Sequence[Subset], test: Dataset, *, lm: CausalLM | None = None,
             embedder: Any = None, settings: EvalSettings | None = None,
             modes: Sequence[str] = ("icl",), progress: ProgressFn | None = None,
             use_cache: bool = True, cache_root: str | Path | None = None,
             keep_items: bool = True) -> EvalReport:
    """Score every subset on ``test`` in each mode; see the module docstring for the measures."""
    settings = settings or EvalSettings()
    settings.validate()
    if not subsets:
        raise EvaluationError("nothing to evaluate: give a subset or ask for a baseline")
    if len(test) == 0:
        raise EvaluationError("the test set has no usable rows")
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise EvaluationError(f"unknown mode(s) {bad or modes}; use icl, lora or both")
    names = [s.name + (f"#{s.seed}" if s.seed is not None else "") for s in subsets]
    if len(set(names)) != len(names):
        raise EvaluationError("two subsets have the same name; name them NAME=PATH")
    if lm is None:
        from .models import load_causal_lm

        lm = load_causal_lm()
    if embedder is None:
        from .models import load_embedder

        embedder = load_embedder()
    from .embedding import embed_texts

    started = time.time()
    root = Path(cache_root) if cache_root else cache_dir() / "evaluations"
    test_emb = embed_texts(embedder, test.prompts, use_cache=use_cache)
    ref_emb = embed_texts(embedder, test.responses, use_cache=use_cache) if settings.generate \
        else None
    tok = _Tok(lm, settings.max_field_tokens, settings.max_reference_tokens)
    refs = [tok.reference(r) for r in test.responses]
    gold = [extract_final_answer(r, reference=True) for r in test.responses]
    rows: list[dict] = []
    items_out: list[dict] = []
    base_key = {"version": EVAL_VERSION, "model": lm.fingerprint, "dtype": str(lm.dtype),
                "bos": lm.bos_token_id, "eos": lm.eos_token_id}
    for mode in modes:
        for sub in subsets:
            label = f"{mode} {sub.name}" + (f" seed {sub.seed}" if sub.seed is not None else "")
            t0 = time.time()
            extra: dict[str, Any] = {}
            if mode == "icl":
                model = lm.model
                shots = settings.shots if sub.size else 0
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
                    prompts.append(tok.prompt(template, values))
                run_key = content_key({**base_key, "mode": "icl", "settings": settings.icl_key()})
                example_ids = [[sub.data.ids[j] for j in row] for row in chosen]
            else:
                chosen = None
                if sub.size:
                    ad_key = {**base_key, "train": _dataset_key(sub.data),
                              "settings": settings.lora_key()}
                    ad_store = (BlockStore(root / "adapters", content_key(ad_key), ad_key)
                                if use_cache else None)
                    cb = (lambda d, t, _l=label: progress(f"{_l}: LoRA training", d, t)) \
                        if progress else None
                    model, rec = train_lora(lm, sub.data, settings, progress=cb, store=ad_store)
                    losses = rec["losses"]
                    extra = {"train_loss_first": float(np.mean(losses[:2])) if losses else None,
                             "train_loss_last": float(np.mean(losses[-2:])) if losses else None,
                             "adapter_cached": rec["cached"],
                             "trainable_params": rec["trainable_params"]}
                    adapter = content_key(ad_key)
                else:
                    model, adapter = lm.model, "none"
                prompts = [tok.prompt(DEFAULT_PLAIN_TEMPLATE, {"prompt": p}) for p in test.prompts]
                run_key = content_key({**base_key, "mode": "lora", "adapter": adapter,
                                       "settings": settings.icl_key() | {"shots": 0}})
                example_ids = [[] for _ in test.prompts]
            store = BlockStore(root / "items", run_key, {**base_key, "mode": mode}) \
                if use_cache else None
            items = [_Item(content_key([prompts[i], refs[i]]), prompts[i], refs[i])
                     for i in range(len(test))]
            done = 0

            def tick(k: int, _label: str = label) -> None:
                nonlocal done
                done += k
                if progress:
                    progress(_label, done, len(items))

            _score_items(model, lm, items, settings, store, tick)
            if mode == "lora" and model is not lm.model:
                del model
            gens = [lm.tokenizer.decode([int(t) for t in it.result[4:]], skip_special_tokens=True)
                    if settings.generate else "" for it in items]
            gens = [cut_generation(g) for g in gens]
            nll = [float(it.result[0]) for it in items]
            dist = [float(it.result[1]) for it in items]
            row: dict[str, Any] = {"subset": sub.name, "kind": sub.kind, "mode": mode,
                                   "size": sub.size, "seed": sub.seed, "n_test": len(test),
                                   "nll": float(np.mean(nll)), "distance": float(np.mean(dist)),
                                   "rouge_l": None, "cosine": None, "exact_match": None,
                                   "n_exact": sum(g is not None for g in gold)}
            rl = cos = em = None
            if settings.generate:
                rl = [rouge_l(g, r) for g, r in zip(gens, test.responses)]
                gen_emb = embed_texts(embedder, gens, use_cache=False)
                cos = [float(x) for x in np.sum(gen_emb * ref_emb, axis=1)]
                em = [None if g is None else float(extract_final_answer(p) == g)
                      for p, g in zip(gens, gold)]
                row["rouge_l"] = float(np.mean(rl))
                row["cosine"] = float(np.mean(cos))
                scored = [x for x in em if x is not None]
                row["exact_match"] = float(np.mean(scored)) if scored else None
            row.update(extra)
            row["subset_info"] = sub.info
            row["seconds"] = round(time.time() - t0, 2)
            rows.append(row)
            if keep_items:
                for i in range(len(test)):
                    items_out.append({
                        "mode": mode, "subset": sub.name, "seed": sub.seed, "test_id": test.ids[i],
                        "examples": example_ids[i], "nll": nll[i], "distance": dist[i],
                        "generated": gens[i], "rouge_l": rl[i] if rl else None,
                        "cosine": cos[i] if cos else None, "exact_match": em[i] if em else None})
    s = asdict(settings)
    if "lora" not in modes:
        s = {k: v for k, v in s.items() if not k.startswith("lora_")}
    meta = {"model": lm.name, "model_fingerprint": lm.fingerprint,
            "dtype": str(lm.dtype).replace("torch.", ""), "device": str(lm.device),
            "embedder": getattr(embedder, "delift_name", type(embedder).__name__),
            "test": {"source": test.source, "rows": len(test), "text_sha256": test.text_sha256},
            "templates": {"icl": icl_template(settings.shots), "lora": DEFAULT_PLAIN_TEMPLATE},
            "example_choice": "k nearest subset prompts to the test prompt by cosine of "
                              "sentence embeddings; the most similar last",
            "exact_match": "reference answer after '####'; prediction: first number after its "
                           "last '####', else its last number; commas/$ dropped, numbers compared "
                           "as normalised numbers",
            "generation": f"greedy, at most {settings.max_new_tokens} new tokens, cut at "
                          f"{list(STOP_MARKERS)}",
            "truncated_fields": tok.truncated, "seconds": round(time.time() - started, 2)}
    return EvalReport(rows=rows, items=items_out, settings=s, meta=meta)


# ----------------------------------------------------------------------------------------------
# Command line (``delift evaluate``; the parser and handler in cli.py call these)


def add_cli_arguments(p: Any) -> None:
    """Options of ``delift evaluate``."""
    p.add_argument("subsets", nargs="*", metavar="SUBSET",
                   help="subset file or `delift select` output folder; NAME=PATH names it")
    p.add_argument("--test", required=True, help="held-out test set (file, hub id or demo:...)")
    p.add_argument("--pool", help="pool for the random and full baselines (default: the pool "
                                  "named in a select folder's manifest)")
    p.add_argument("--baselines", default="",
                   help="comma list of random, full, none (e.g. random,full,none)")
    p.add_argument("--seeds", default="0,1,2", help="seeds of the random baselines")
    p.add_argument("--random-size", type=int, action="append", default=[],
                   help="size of random subsets when no subset is given (repeatable)")
    p.add_argument("--mode", choices=["icl", "lora", "both"], default="icl")
    p.add_argument("--shots", type=int, default=EvalSettings.shots,
                   help="in-context examples per test item")
    p.add_argument("--test-limit", type=int, help="use only the first N test rows")
    p.add_argument("--max-new-tokens", type=int, default=EvalSettings.max_new_tokens)
    p.add_argument("--max-field-tokens", type=int, default=EvalSettings.max_field_tokens)
    p.add_argument("--max-reference-tokens", type=int, default=EvalSettings.max_reference_tokens)
    p.add_argument("--no-generate", action="store_true",
                   help="teacher-forced scores only (no ROUGE-L, cosine, exact match)")
    p.add_argument("--batch-size", type=int, default=EvalSettings.batch_size)
    p.add_argument("--lora-steps", type=int, default=EvalSettings.lora_steps)
    p.add_argument("--lora-batch-size", type=int, default=EvalSettings.lora_batch_size)
    p.add_argument("--lora-lr", type=float, default=EvalSettings.lora_lr)
    p.add_argument("--lora-r", type=int, default=EvalSettings.lora_r)
    p.add_argument("--lora-alpha", type=int, default=EvalSettings.lora_alpha)
    p.add_argument("--lora-targets", default=EvalSettings.lora_targets)
    p.add_argument("--lora-max-tokens", type=int, default=EvalSettings.lora_max_tokens)
    p.add_argument("--lora-seed", type=int, default=EvalSettings.lora_seed)
    p.add_argument("--model", help="causal LM: hub id or local folder (default: packaged "
                                   "Gemma 3 270M)")
    p.add_argument("--embedder", help="sentence embedder (default: packaged all-MiniLM-L6-v2)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.add_argument("--out", required=True, help="folder for results.json, results.md, chart.html")


def parse_int_list(text: str, what: str) -> list[int]:
    """Whole numbers from a comma list such as "0,1,2" (the seeds of the random baselines)."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise EvaluationError(f"{what} must be a comma list of whole numbers, got '{text}'") from None


def run_cli(args: Any, progress: ProgressFn | None = None) -> int:
    """Run ``delift evaluate`` from parsed arguments; user errors raise :class:`DeliftError`."""
    import sys

    from .models import load_causal_lm, load_embedder

    settings = EvalSettings(
        shots=args.shots, max_field_tokens=args.max_field_tokens,
        max_reference_tokens=args.max_reference_tokens, generate=not args.no_generate,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        lora_steps=args.lora_steps, lora_batch_size=args.lora_batch_size, lora_lr=args.lora_lr,
        lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_targets=args.lora_targets,
        lora_max_tokens=args.lora_max_tokens, lora_seed=args.lora_seed)
    settings.validate()
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    seeds = parse_int_list(args.seeds, "--seeds")
    subsets: list[Subset] = []
    pool = None
    for spec in args.subsets:
        name, _, path = spec.partition("=") if "=" in spec and not Path(spec).exists() else (
            None, "", spec)
        sub, sub_pool = load_subset(path, name)
        subsets.append(sub)
        pool = pool or sub_pool
    if args.pool:
        pool = load_dataset(args.pool)
    test = load_dataset(args.test)
    if args.test_limit is not None:
        if args.test_limit < 1:
            raise EvaluationError("--test-limit must be at least 1")
        test = test.subset(range(min(args.test_limit, len(test))))
    print(test.summary(), file=sys.stderr)
    if baselines:
        subsets += baseline_subsets(pool, [s.size for s in subsets] + list(args.random_size),
                                    baselines, seeds)
    if not subsets:
        raise EvaluationError("nothing to evaluate: give a subset or --baselines")
    modes = ("icl", "lora") if args.mode == "both" else (args.mode,)
    print(f"loading {args.model or 'the packaged Gemma 3 270M'} ...", file=sys.stderr)
    lm = load_causal_lm(args.model, device=args.device, dtype=args.dtype,
                        progress=lambda msg: print(f"  {msg}", file=sys.stderr))
    embedder = load_embedder(args.embedder, device=args.device)
    report = evaluate(subsets, test, lm=lm, embedder=embedder, settings=settings, modes=modes,
                      progress=progress, use_cache=not args.no_cache)
    report.meta["command"] = list(sys.argv)
    paths = report.write(args.out)
    print(report.to_markdown())
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0
