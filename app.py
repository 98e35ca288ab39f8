"""DELIFT Studio (run: streamlit run app.py): the pages, in the order of the work.

Each page does one job and is a thin layer over ``delift_core``; ``studio.ui.PAGES`` lists them.
"""

from __future__ import annotations

import importlib

import streamlit as st

import studio

with studio.IMPORT_LOCK:  # the first import of the engine, one session at a time
    for _module in ("delift_core", "studio.state", "studio.ui", "studio.jobs"):
        importlib.import_module(_module)

from studio.served import require_sign_in  # noqa: E402
from studio.ui import PAGES  # noqa: E402

require_sign_in()  # with an [auth] section in .streamlit/secrets.toml: no page before sign-in

st.navigation([st.Page(path, title=title, icon=icon, default=key == "home")
               for key, (path, title, icon) in PAGES.items()]).run()
