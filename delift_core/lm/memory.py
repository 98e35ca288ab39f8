"""Giving the C allocator's free memory back to the system during long model runs.

glibc's malloc keeps what tensors free inside its heaps (anything under its mmap threshold, which
grows to 32 MiB as large blocks come and go), and returns it only from a heap's top. Over the
thousands of differently sized batches of a utility kernel, those free holes add up: in a
16,248-row learned kernel the process held 4.0 GB after 3,066 of its 6,000 exact passes, and
``malloc_trim(0)`` gave 1.27 GB of it back at once (benchmarks/README.md). Calling it now and
then (at most every few seconds) bounds that, at the cost of faulting the pages in again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import threading
import time

__all__ = ["release_free_memory", "TRIM_INTERVAL_S"]

logger = logging.getLogger(__name__)

TRIM_INTERVAL_S = 5.0
"""The least time between two trims in a process (each walks every heap of the process)."""

_lock = threading.Lock()
_last = 0.0
_trim = None
_looked = False


def _malloc_trim():  # the libc function, or None where there is none (not Linux/glibc)
    global _trim, _looked
    if not _looked:
        _looked = True
        if sys.platform.startswith("linux"):
            try:
                fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
                fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
                _trim = fn
            except (OSError, AttributeError):
                logger.debug("no malloc_trim in this C library: free memory stays in its heaps")
    return _trim


def release_free_memory(min_interval: float = TRIM_INTERVAL_S) -> bool:
    """Return the allocator's free heap memory to the system (glibc ``malloc_trim(0)``), unless
    this process did so less than ``min_interval`` seconds ago. True when it trimmed."""
    global _last
    trim = _malloc_trim()
    if trim is None:
        return False
    with _lock:
        now = time.monotonic()
        if now - _last < min_interval:
            return False
        _last = now
    trim(0)
    return True
