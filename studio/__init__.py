"""DELIFT Studio's Streamlit helpers: session state, background kernel jobs, shared widgets.

:data:`IMPORT_LOCK` serialises the first import of the engine and the studio's modules: Streamlit
runs each browser session's script in its own thread, and two sessions (or two reruns) importing
the package for the first time at once can deadlock on Python's per-module import locks (seen in
CI: ``_DeadlockError`` on ``delift_core.outputs.review``, then "partially initialized module").
"""

import threading

IMPORT_LOCK = threading.Lock()
