"""What the ``delift`` commands share: progress bars, data/model/output options, loading the sets and models the options name."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from delift_core.data.dataset import ColumnMapping, Dataset, load_dataset
from delift_core.errors import DeliftError
from delift_core.selection import objectives
from delift_core.kernels.builder import TARGET_DIRECTIONS, kernel_report
from delift_core.kernels.utility import (DEFAULT_EXAMPLE_TEMPLATE, DEFAULT_PLAIN_TEMPLATE,
                                         UtilitySettings)

logger = logging.getLogger(__name__)


class _Bars:
    """tqdm progress bars (with ETA) keyed by the stage label the engine reports."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.bars: dict[str, Any] = {}

    def __call__(self, label: str, done: int, total: int) -> None:
        bar = self.bars.get(label)
        if bar is None and total == 0:
            return
        if bar is None:
            bar = self.bars[label] = self._tqdm(total=total, desc=label, unit="seq",
                                                file=sys.stderr, dynamic_ncols=True)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()


def _add_data_args(p: argparse.ArgumentParser, with_target: bool = True) -> None:
    p.add_argument("--pool", required=True,
                   help="pool file (.jsonl .json .csv .parquet), save_to_disk folder, hub id, or "
                        "demo:pool")
    if with_target:
        g = p.add_mutually_exclusive_group()
        g.add_argument("--target", help="target set for task-specific selection (flmi, flqmi)")
        g.add_argument("--existing", help="data the model was already tuned on (flcg)")
    p.add_argument("--prompt-col", action="append",
                   help="column holding the prompt (repeat to join several)")
    p.add_argument("--response-col", help="column holding the response")
    p.add_argument("--id-col", help="column holding a unique id (default: 'id' if present)")
    p.add_argument("--split", help="split of a hub or save_to_disk dataset")
    p.add_argument("--limit", type=int, help="use only the first N pool rows (reported)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    """The utility kernel's settings (--model, --device ... come from options.model_options)."""
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-field-tokens", type=int, default=256)
    p.add_argument("--max-response-tokens", type=int, default=256)
    p.add_argument("--plain-template", default=DEFAULT_PLAIN_TEMPLATE)
    p.add_argument("--example-template", default=DEFAULT_EXAMPLE_TEMPLATE)
    p.add_argument("--no-score-eos", action="store_true", help="do not score an EOS after the "
                                                               "response")
    p.add_argument("--chat-template", action="store_true",
                   help="wrap each prompt in the model's chat template (a user turn and the "
                        "assistant prompt): for chat-tuned models such as smollm2-135m-instruct")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the kernel "
                                                           "cache")
    p.add_argument("--neighbours", type=int, default=None, metavar="K",
                   help="sparse kernel: compute each row only for its K nearest columns by "
                        "sentence embedding (plus --neighbour-random random ones)")
    p.add_argument("--neighbour-random", type=int, default=4,
                   help="with --neighbours: seeded random columns added per row (default 4)")
    p.add_argument("--target-direction", choices=TARGET_DIRECTIONS, default=None,
                   help="utility target kernel: helps-target (default; UF(q | i), how much pool "
                        "item i helps target q) or reference (UF(i | q), the official DELIFT "
                        "code); embedding kernels are symmetric")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="where the utility pairs the pair store lacks are computed: this process "
                        "(default) or Ray workers (pip install \"delift-studio[ray]\")")
    p.add_argument("--ray-address", default=None, metavar="auto|HOST:PORT",
                   help="with --backend ray: join a running cluster (`ray start --head`); "
                        "without it a local cluster is started")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="with --backend ray: worker actors of one thread each (default: one per "
                        "CPU of the cluster)")


def _report(kernels: Any) -> None:
    """Say what the kernel computation did (computed, reused, damaged and recomputed)."""
    for line in kernel_report(kernels):
        logger.info(line)


def _add_out_args(p: argparse.ArgumentParser) -> None:
    """--out and --overwrite: the folder is checked before any work and written whole."""
    p.add_argument("--out", required=True,
                   help="output folder: written whole when the run succeeds (an earlier delift "
                        "output there is replaced; a failed run leaves it as it was)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out even when it is a non-empty folder delift did not write")


def _add_objective_params(p: argparse.ArgumentParser) -> None:
    """One option per objective parameter in the registry (``--eta``, ``--nu``, ``--lam``, ...)."""
    for name, users in objectives.param_specs().items():
        first = users[0][1]
        p.add_argument(f"--{name}", type=float, default=None,
                       help=f"{first.help or first.label} (for {', '.join(o for o, _ in users)}; "
                            f"default {first.default:g}, range {first.low:g}..{first.high:g})")


def _objective_params(args: argparse.Namespace) -> dict:
    """The objective parameters the user gave (unset ones take the registry's defaults)."""
    return {name: getattr(args, name) for name in objectives.param_specs()
            if getattr(args, name, None) is not None}


def _mapping(args: argparse.Namespace) -> ColumnMapping | None:
    if not args.prompt_col and not args.response_col:
        if getattr(args, "id_col", None):
            raise DeliftError("--id-col needs --prompt-col and --response-col")
        return None
    if not (args.prompt_col and args.response_col):
        raise DeliftError("give both --prompt-col and --response-col")
    return ColumnMapping(prompt=args.prompt_col, response=args.response_col, id=args.id_col)


def _load_sets(args: argparse.Namespace) -> tuple[Dataset, Dataset | None, Dataset | None]:
    mapping = _mapping(args)
    pool = load_dataset(args.pool, mapping=mapping, split=args.split)
    if args.limit is not None:
        if args.limit < 1:
            raise DeliftError("--limit must be at least 1")
        if args.limit < len(pool):
            logger.info("using the first %d of %d pool rows (--limit)", args.limit, len(pool))
            pool = pool.subset(range(args.limit))
    target = load_dataset(args.target, mapping=mapping) if getattr(args, "target", None) else None
    existing = (load_dataset(args.existing, mapping=mapping)
                if getattr(args, "existing", None) else None)
    for ds in (pool, target, existing):
        if ds is not None:
            logger.info(ds.summary())
            for s in ds.skipped[:5]:
                logger.info("  skipped %s: %s", s.location, s.reason)
            if len(ds.skipped) > 5:
                logger.info("  ... and %d more skipped rows", len(ds.skipped) - 5)
    return pool, target, existing


def _models(args: argparse.Namespace, kind: str) -> dict:
    backend = _backend_args(args)  # a bad --backend combination fails before any model loads
    extra = _sparse_args(args)
    if extra and kind != "embedding":
        from delift_core.lm.models import load_embedder

        extra["embedder"] = load_embedder(args.embedder, device=args.device)
    return {**_models_dense(args, kind), **extra, **backend}


def _backend_args(args: argparse.Namespace) -> dict:
    """compute_kernels arguments for --backend ray (none for the local default)."""
    backend = getattr(args, "backend", "local")
    if backend == "local":
        if getattr(args, "ray_address", None) or getattr(args, "workers", None):
            raise DeliftError("--ray-address and --workers need --backend ray")
        return {}
    if args.workers is not None and args.workers < 1:
        raise DeliftError(f"--workers must be at least 1, got {args.workers}")
    return {"backend": backend, "ray_address": args.ray_address, "workers": args.workers}


def _sparse_args(args: argparse.Namespace) -> dict:
    """compute_kernels arguments for --neighbours (none without it)."""
    k = getattr(args, "neighbours", None)
    if not k:
        return {}
    if k < 1:
        raise DeliftError("--neighbours must be at least 1")
    return {"neighbours": k, "neighbour_random": max(0, getattr(args, "neighbour_random", 4)),
            "neighbour_seed": getattr(args, "seed", 0) or 0}


def _load_lm(args: argparse.Namespace) -> Any:
    """The causal LM the options name (default: the packaged Gemma 3 270M), loading said."""
    from delift_core.lm.models import load_causal_lm

    logger.info("loading %s ...", args.model or "the packaged Gemma 3 270M")
    return load_causal_lm(args.model, device=args.device, dtype=args.dtype,
                          progress=lambda msg: logger.info("  %s", msg))


def _models_dense(args: argparse.Namespace, kind: str) -> dict:
    from delift_core.lm.models import load_embedder

    if kind == "embedding":
        return {"embedder": load_embedder(args.embedder, device=args.device)}
    lm = _load_lm(args)
    settings = UtilitySettings(plain_template=args.plain_template,
                               example_template=args.example_template,
                               score_eos=not args.no_score_eos,
                               max_field_tokens=args.max_field_tokens,
                               max_response_tokens=args.max_response_tokens,
                               batch_size=args.batch_size,
                               chat_template=args.chat_template)
    try:
        settings.validate()
        if settings.chat_template:  # a model without a chat template fails now, clearly
            from delift_core.lm.tokens import chat_wrapped_template

            chat_wrapped_template(lm, settings.plain_template)
    except ValueError as e:
        raise DeliftError(f"--chat-template: {e}" if settings.chat_template else str(e)) from None
    return {"lm": lm, "settings": settings}
