"""``python -m delift_core`` runs the ``delift`` command line."""

import sys

from .cli import main

sys.exit(main())
