"""The small demo dataset shipped with the package (a pool, a target set and an existing set)."""

from __future__ import annotations

from pathlib import Path

from delift_core.errors import DataError

__all__ = ["DEMO_DIR", "DEMO_SETS", "demo_path"]

DEMO_DIR = Path(__file__).resolve().parent / "demo_data"
DEMO_SETS = ("pool", "target", "existing")


def demo_path(name: str) -> Path:
    """Path of a shipped demo file: ``pool``, ``target`` or ``existing``."""
    if name not in DEMO_SETS:
        raise DataError(f"demo:{name}: unknown demo set; use one of "
                        + ", ".join(f"demo:{s}" for s in DEMO_SETS))
    return DEMO_DIR / f"{name}.jsonl"
