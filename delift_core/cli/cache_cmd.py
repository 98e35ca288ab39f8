"""``delift cache info|prune|clear``."""

from __future__ import annotations

import argparse
import logging

from delift_core.cli.options import Command
from delift_core.errors import DeliftError

logger = logging.getLogger(__name__)


def _cache_arguments(p: argparse.ArgumentParser) -> None:
    """``cache info|prune|clear``."""
    act = p.add_subparsers(dest="cache_action", required=True)
    act.add_parser("info", help="size, entries per model, last used")
    pr = act.add_parser("prune", help="delete the values of one model, or those not used lately")
    pr.add_argument("--model", help="delete the values computed with models whose name or "
                                    "fingerprint contains this")
    pr.add_argument("--older-than", type=float, metavar="DAYS",
                    help="delete the values of settings not used for DAYS days")
    act.add_parser("clear", help="delete the pair store, the embedding store and the old block "
                                 "cache folder")


def cmd_cache(args: argparse.Namespace) -> int:
    from delift_core.stores import cache

    if args.cache_action == "info":
        print("\n".join(cache.info_lines(cache.cache_info())))
    elif args.cache_action == "prune":
        if not args.model and args.older_than is None:
            raise DeliftError("delift cache prune: give --model NAME or --older-than DAYS")
        if args.older_than is not None and args.older_than < 0:
            raise DeliftError(f"--older-than must be at least 0 days, got {args.older_than}")
        gone = cache.prune(model=args.model, older_than_days=args.older_than)
        print(f"pruned {gone['spaces']} value spaces ({gone['entries']} entries)")
    else:
        removed = cache.clear()
        print("removed " + (", ".join(removed) if removed else "nothing (the cache was empty)"))
    return 0


COMMANDS = [
    Command("cache", "the pair store of utility values: info, prune, clear", _cache_arguments,
            cmd_cache, json=False),
]
