"""Utility-kernel engine vs a straightforward per-pair implementation, side by side in one run.

    python benchmarks/bench_kernel.py [--source demo:pool] [--rows 6] [--batch 8] [--no-bf16]
                                      [--model gemma-3-270m,smollm2-135m-instruct]

For each model (default: both packaged ones), prints pairs/s of each and their ratio, the largest
absolute difference of the kernels, the engine's tokens/s against the transformer body alone on
the same tokens, and the bfloat16 error against float32. Then, side by side, the output layer of
each model timed alone (full-vocabulary logits and log-softmax for 512 positions): SmolLM2's
49,152-token vocabulary against Gemma's 262,144. The machine is shared: compare the ratios, not
the absolute figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from delift_core.data.dataset import load_dataset
from delift_core.lm.models import load_causal_lm
from delift_core.lm.scorer import Scorer, cpu_threads
from delift_core.lm.tokens import SegmentTokens
from delift_core.kernels.utility_settings import Texts, UtilitySettings
from delift_core.kernels.utility import UtilityKernel


def per_pair_kernel(lm, s: UtilitySettings, tp, tr, ep, er, batch: int) -> tuple[np.ndarray, int]:
    """The straightforward way: every sequence (plain and with-example) run in full, full logits,
    log-softmax over the whole vocabulary at every position, batches of right-padded pairs."""
    tok = SegmentTokens(lm, s.max_field_tokens, s.max_response_tokens, s.score_eos)
    seqs, n_sc = [], []
    for i in range(len(tp)):
        r = tok.response_ids(tr[i])
        seqs.append(tok.prompt_ids(s.plain_template, {"prompt": tp[i]}) + r)
        n_sc.append(len(r))
        for j in range(len(ep)):
            seqs.append(tok.prompt_ids(s.example_template, {
                "example_prompt": ep[j], "example_response": er[j], "prompt": tp[i]}) + r)
            n_sc.append(len(r))
    d = np.empty(len(seqs))
    pad = lm.tokenizer.pad_token_id or 0
    tokens = 0
    with torch.inference_mode():
        for b in range(0, len(seqs), batch):
            chunk = seqs[b: b + batch]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for k, x in enumerate(chunk):
                ids[k, : len(x)] = torch.tensor(x)
                mask[k, : len(x)] = 1
            logits = lm.model(input_ids=ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits, dim=-1)
            tokens += int(mask.sum())
            for k, x in enumerate(chunk):
                n = n_sc[b + k]
                pos = torch.arange(len(x) - n - 1, len(x) - 1)
                p = logp[k, pos, ids[k, pos + 1]].exp().double()
                d[b + k] = float(torch.linalg.vector_norm(1 - p) / np.sqrt(n))
    m = len(ep) + 1
    d = d.reshape(len(tp), m)
    return (d[:, :1] - d[:, 1:]).astype(np.float32), tokens


def body_only_tokens_per_s(lm, batch: int = 32, width: int = 128, reps: int = 3) -> float:
    """Transformer body alone (no head, no cache, no padding): the issue's practical limit,
    measured on batches of ``batch`` x ``width`` tokens."""
    scorer = Scorer(lm)
    ids = torch.randint(1000, 20000, (batch, width), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        scorer.body(input_ids=ids, use_cache=False)
        t0 = time.perf_counter()
        for _ in range(reps):
            scorer.body(input_ids=ids, use_cache=False)
    return reps * batch * width / (time.perf_counter() - t0)


def flops_per_token(lm) -> tuple[float, float]:
    """(body, head) multiply-add FLOPs per token: 2 x parameters of the transformer body without
    the embedding table, and 2 x vocabulary x hidden for one row of the output layer."""
    body = getattr(lm.model, lm.model.base_model_prefix)
    emb = body.get_input_embeddings().weight.numel()
    n_body = sum(p.numel() for p in body.parameters()) - emb
    head = lm.model.get_output_embeddings().weight
    return 2.0 * n_body, 2.0 * head.numel()


def head_seconds_per_position(lm, positions: int = 512, reps: int = 5) -> float:
    """The output layer alone: full-vocabulary logits and log-softmax for ``positions`` hidden
    states (what every scored position costs on top of the body), seconds per position."""
    head = lm.model.get_output_embeddings()
    h = torch.randn(positions, head.weight.shape[1], generator=torch.Generator().manual_seed(0),
                    dtype=head.weight.dtype)
    with torch.inference_mode():
        torch.log_softmax(head(h).float(), dim=-1)  # warm up
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.log_softmax(head(h).float(), dim=-1)
    return (time.perf_counter() - t0) / (reps * positions)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default="demo:pool")
    ap.add_argument("--rows", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--no-bf16", action="store_true")
    ap.add_argument("--model", default="gemma-3-270m,smollm2-135m-instruct",
                    help="comma list of causal LMs (packaged aliases, hub ids or folders)")
    args = ap.parse_args()
    ds = load_dataset(args.source)
    torch.set_num_threads(cpu_threads())  # the same threads for both arms
    heads = {}
    for name in [m.strip() for m in args.model.split(",") if m.strip()]:
        lm = bench_model(name, ds, args)
        vocab, hidden = lm.model.get_output_embeddings().weight.shape
        heads[lm.name] = (vocab, hidden, head_seconds_per_position(lm))
    if len(heads) > 1:
        print("output layer alone (512 positions, full logits + log-softmax), side by side:")
        (base, (v0, h0, t0)), *others = heads.items()
        print(f"  {base}: vocabulary {v0:,} x hidden {h0}: {t0 * 1e3:.3f} ms per position")
        for name, (v, h, t) in others:
            print(f"  {name}: vocabulary {v:,} x hidden {h}: {t * 1e3:.3f} ms per position -> "
                  f"{t0 / t:.2f}x cheaper than {base} (multiply-adds {v0 * h0 / (v * h):.2f}x "
                  "fewer)")


def bench_model(name: str, ds, args) -> object:
    """The engine against the per-pair way on one model; prints the figures, returns the model."""
    n = args.rows
    tp, tr = ds.prompts[:n], ds.responses[:n]
    rows, first = Texts(tp, tr), Texts(tp[:1], tr[:1])
    lm = load_causal_lm(name)
    s = UtilitySettings(batch_size=16)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}; model {lm.name} "
          f"{lm.dtype}; data {args.source} first {n} rows -> {n * n} pairs (+{n} plain)")

    # warm up (pages the weights in, including the output layer) before anything is timed
    UtilityKernel(lm, s, use_cache=False).compute(first, first)
    eng = UtilityKernel(lm, s, use_cache=False)
    t0 = time.perf_counter()
    res = eng.compute(rows, rows)
    t_eng = time.perf_counter() - t0
    eng_tokens, eng_rows = eng.tokens_processed_, eng.positions_scored_

    t0 = time.perf_counter()
    ref, base_tokens = per_pair_kernel(lm, s, tp, tr, tp, tr, args.batch)
    t_base = time.perf_counter() - t0

    body_tps = body_only_tokens_per_s(lm)
    f_body, f_head = flops_per_token(lm)
    work_eng = eng_tokens * f_body + eng_rows * f_head
    work_base = base_tokens * (f_body + f_head)
    pairs = n * n
    diff = float(np.abs(res.values - ref).max())
    print(f"engine:   {pairs / t_eng:8.2f} pairs/s ({t_eng:.1f} s, {eng_tokens} tokens through the "
          f"body, {eng_tokens / t_eng:.0f} tokens/s incl. head)")
    print(f"per-pair: {pairs / t_base:8.2f} pairs/s ({t_base:.1f} s, {base_tokens} tokens, full "
          f"logits)")
    print(f"SPEEDUP engine / per-pair: {t_base / t_eng:.2f}x   max |diff| = {diff:.2e}")
    print(f"body-only (32 x 128 tokens, no head): {body_tps:.0f} tokens/s -> engine at "
          f"{eng_tokens / t_eng / body_tps:.0%} of body-only throughput for its {eng_tokens} body "
          f"tokens (its time also covers the {lm.model.get_output_embeddings().weight.shape[0]:,}"
          f"-vocab head at {eng_rows} scored positions)")
    print(f"work (model FLOPs from the counted tokens): per-pair {work_base / 1e12:.2f} TFLOP, engine "
          f"{work_eng / 1e12:.2f} TFLOP -> the engine does {work_base / work_eng:.2f}x less work; "
          f"measured speedup {t_base / t_eng:.2f}x; engine {work_eng / t_eng / 1e9:.0f} GFLOP/s, "
          f"per-pair {work_base / t_base / 1e9:.0f} GFLOP/s, body-only "
          f"{body_tps * f_body / 1e9:.0f} GFLOP/s")
    if not args.no_bf16:
        lm16 = load_causal_lm(name, dtype="bfloat16")
        UtilityKernel(lm16, s, use_cache=False).compute(first, first)
        t0 = time.perf_counter()
        r16 = UtilityKernel(lm16, s, use_cache=False).compute(rows, rows)
        t16 = time.perf_counter() - t0
        e16 = float(np.abs(r16.values - res.values).max())
        spread = float(res.values.max() - res.values.min())
        print(f"bf16: {pairs / t16:.2f} pairs/s ({t_eng / t16:.2f}x fp32 engine); max |bf16 - fp32| "
              f"= {e16:.3e} (kernel spread {spread:.3e}, {e16 / spread:.1%} of it)")
    return lm


if __name__ == "__main__":
    main()
