"""The utility engine on CUDA against the CPU, side by side in one run (a lent GPU machine).

    python benchmarks/bench_cuda.py --rows 48 --json-out /tmp/cuda.json
    python benchmarks/bench_cuda.py --model-dir DIR --random-weights   # weights cannot travel

Checks the CUDA path of the product's engine (``UtilityKernel``, pair store off): that the
device is chosen without being asked (``resolve_device``), which precisions load there
(``resolve_dtype``: float32, bfloat16, float16), each one's speed on the same rows, and how far
each one's kernel is from the CPU's float32 kernel (largest difference, as a share of the
kernel's spread, and the Spearman correlation of all pairs). The CPU arm runs first, on the
same rows, so the ratio is measured side by side.

``--random-weights`` builds the model from ``DIR/config.json`` with seeded random weights (the
packaged 270M model's weights, 1 GB, cannot be carried to a device machine; its configuration
and tokenizer can), trained for ``--train-steps`` on the source rows on the GPU so that its
predictions depend on the text. The architecture, the shapes and so the speed are the real
model's; the values are that model's, so the equality figures check the arithmetic of the CUDA
path, not the real model's utilities.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from delift_core.data.dataset import load_dataset  # noqa: E402
from delift_core.kernels.utility import UtilityKernel  # noqa: E402
from delift_core.kernels.utility_settings import Texts, UtilitySettings  # noqa: E402
from delift_core.lm.models import load_causal_lm, resolve_device, resolve_dtype  # noqa: E402


def random_model_dir(src: Path, seed: int, texts: list[str], train_steps: int) -> Path:
    """A model folder with ``src``'s configuration and tokenizer and seeded random weights,
    then ``train_steps`` steps of next-token training on ``texts`` on the GPU: a random model
    gives every response token a probability near zero, so its utilities are all about zero and
    would compare nothing; a briefly trained one has peaked, text-dependent predictions."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src),
                                             torch_dtype=torch.float32)
    if train_steps and torch.cuda.is_available():
        model.to("cuda").train()
        opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
        enc = tok(texts, truncation=True, max_length=128, padding=True, return_tensors="pt")
        ids, mask = enc["input_ids"].cuda(), enc["attention_mask"].cuda()
        gen = torch.Generator().manual_seed(seed)
        for step in range(train_steps):
            pick = torch.randint(0, len(texts), (32,), generator=gen).cuda()
            labels = ids[pick].masked_fill(mask[pick] == 0, -100)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(input_ids=ids[pick], attention_mask=mask[pick], labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step % 50 == 0 or step == train_steps - 1:
                print(f"training step {step}: loss {loss.item():.3f}", flush=True)
        model.to("cpu").eval()
    out = Path(tempfile.mkdtemp(prefix="delift-random-model-"))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def run_arm(model: str, device: str, dtype: str, rows: Texts, batch: int) -> dict:
    """One engine run on ``device`` in ``dtype``: pairs/s (after a warm-up) and its values."""
    lm = load_causal_lm(model, device=device, dtype=dtype)
    s = UtilitySettings(batch_size=batch)
    first = Texts(rows.prompts[:2], rows.responses[:2])
    UtilityKernel(lm, s, use_cache=False).compute(first, first)  # warm-up: weights, kernels
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = UtilityKernel(lm, s, use_cache=False).compute(rows, rows)
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    n = len(rows.prompts)
    return {"device": str(lm.device), "dtype": str(lm.dtype).replace("torch.", ""),
            "batch": batch, "pairs": n * n, "seconds": round(secs, 3),
            "pairs_per_s": round(n * n / secs, 1), "values": np.asarray(res.values)}


def compare(values: np.ndarray, ref: np.ndarray) -> dict:
    """How far a kernel is from the reference: max |diff|, as a share of the spread, Spearman."""
    from scipy.stats import spearmanr

    diff = float(np.abs(values - ref).max())
    spread = float(ref.max() - ref.min())
    return {"max_abs_diff": diff, "spread": spread, "diff_share_of_spread": diff / spread,
            "spearman": float(spearmanr(values.ravel(), ref.ravel()).statistic)}


def main() -> int:
    """Command line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="demo:pool")
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--model", default="gemma-3-270m", help="packaged alias, hub id or folder")
    ap.add_argument("--model-dir", help="a model folder (config.json and tokenizer at least)")
    ap.add_argument("--random-weights", action="store_true",
                    help="seeded random weights on --model-dir's configuration")
    ap.add_argument("--train-steps", type=int, default=300,
                    help="with --random-weights: steps of training on the source rows (GPU)")
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 64],
                    help="engine batch sizes tried on CUDA (the CPU arm uses the first)")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    model = args.model
    ds = load_dataset(args.source)
    if args.model_dir:
        model = str(random_model_dir(Path(args.model_dir), 0, [
            p + "\n" + r for p, r in zip(ds.prompts, ds.responses)], args.train_steps)
            if args.random_weights else Path(args.model_dir))
    rows = Texts(ds.prompts[: args.rows], ds.responses[: args.rows])
    auto = resolve_device(None)
    out: dict = {"machine": f"{platform.processor() or platform.machine()}, "
                            f"{os.cpu_count()} CPUs, torch {torch.__version__}",
                 "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                 "auto_device": str(auto), "random_weights": bool(args.random_weights),
                 "train_steps": args.train_steps if args.random_weights else 0,
                 "rows": args.rows, "command": " ".join(sys.argv), "arms": []}
    print(f"auto device: {auto}; GPU: {out['gpu']}", flush=True)
    if auto.type != "cuda":
        print("no CUDA device: nothing to compare", flush=True)
        return 1
    out["dtypes_on_cuda"] = {d: str(resolve_dtype(d, auto)) for d in
                             ("float32", "bfloat16", "float16")}
    ref = run_arm(model, "cpu", "float32", rows, args.batches[0])
    arms = [ref] + [run_arm(model, "cuda", dt, rows, b) for dt in ("float32", "bfloat16",
                                                                   "float16")
                    for b in args.batches]
    for arm in arms:
        rec = {k: v for k, v in arm.items() if k != "values"}
        rec["vs_cpu_float32"] = compare(arm["values"], ref["values"])
        rec["speedup_vs_cpu_float32"] = round(ref["seconds"] / arm["seconds"], 2)
        out["arms"].append(rec)
        print(f"{rec['device']:6} {rec['dtype']:9} batch {rec['batch']:3}: "
              f"{rec['pairs_per_s']:9.1f} pairs/s ({rec['speedup_vs_cpu_float32']:7.2f}x the CPU);"
              f" max |diff| vs CPU float32 {rec['vs_cpu_float32']['max_abs_diff']:.2e} "
              f"({rec['vs_cpu_float32']['diff_share_of_spread']:.2%} of the spread), Spearman "
              f"{rec['vs_cpu_float32']['spearman']:.5f}", flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
