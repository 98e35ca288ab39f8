"""DELIFT Studio's Streamlit helpers: session state, background kernel jobs, shared widgets.

Importing this package imports the engine (``delift_core``) once, before anything else of the
studio. Streamlit runs each browser session's script in its own thread, and a session opened on a
page's URL may run that page before ``app.py``; two threads entering the engine's import graph at
different modules at once deadlocked on Python's per-module import locks (CI:
``_DeadlockError`` on ``delift_core.outputs.review``, then "partially initialized module"). Every
page and ``app.py`` import ``studio`` first, so the engine is imported under this package's own
import lock, by one thread, and every other thread waits for it whole.
"""

import importlib
import threading

IMPORT_LOCK = threading.Lock()
"""Held while the engine is first imported (also by ``app.py``)."""

with IMPORT_LOCK:
    importlib.import_module("delift_core")
