"""DELIFT Studio (run: streamlit run app.py): the pages, in the order of the work.

Each page does one job and is a thin layer over ``delift_core``; ``studio.ui.PAGES`` lists them.
"""

from __future__ import annotations

import streamlit as st

from studio.ui import PAGES

st.navigation([st.Page(path, title=title, icon=icon, default=key == "home")
               for key, (path, title, icon) in PAGES.items()]).run()
