"""``python -m sgdlab.cli``: the ``sgdlab`` command (and what ``torchrun -m sgdlab.cli`` runs)."""

import sys

from sgdlab.cli import main

sys.exit(main())
