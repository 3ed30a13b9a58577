"""``python -m sgdlab``: the ``sgdlab`` command, as ``python -m sgdlab.cli`` runs it."""

import sys

from sgdlab.cli import main

sys.exit(main())
