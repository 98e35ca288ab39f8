"""``python -m delift_core`` runs the ``delift`` command line."""

import sys

from delift_core.cli import main

sys.exit(main())
