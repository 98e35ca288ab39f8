"""What the ``delift`` commands share: progress bars, data/model/output options, loading the sets and models the options name."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from delift_core import settings as spec
from delift_core.data.formats import SUFFIXES
from delift_core.data.layouts import ColumnMapping
from delift_core.data.dataset import Dataset, load_dataset
from delift_core.errors import DeliftError
from delift_core.selection import objectives
from delift_core.kernels.builder import kernel_report
from delift_core.kernels.request import kernels_from_settings

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
                   help=f"pool file ({SUFFIXES}), save_to_disk folder, hub id, or "
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


def _add_engine_args(p: argparse.ArgumentParser, *groups: str, skip: tuple[str, ...] = ()) -> None:
    """One option per engine setting of ``groups`` (:mod:`delift_core.settings`)."""
    spec.add_cli_options(p, *groups, skip=skip)


def _add_kernel_args(p: argparse.ArgumentParser) -> None:
    """The options of every command that computes kernels: the kernel and utility settings but
    ``--kernel`` (each command says what its ``--kernel`` takes)."""
    _add_engine_args(p, "kernel", "utility", skip=("kernel",))


def _engine_values(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """The engine settings the command line gives (checked), with the kernel kind."""
    return {**spec.from_args(args, "model", "kernel", "utility", skip=("kernel",)), "kernel": kind}


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


def _compute(args: argparse.Namespace, kind: str, pool: Dataset, target: Dataset | None = None,
             existing: Dataset | None = None, models: dict | None = None) -> Any:
    """Compute the kernels the options describe, with progress bars, and say what was done."""
    kernels = kernels_from_settings(pool, _engine_values(args, kind), target=target,
                                    existing=existing, progress=_Bars(), models=models)
    _report(kernels)
    return kernels
