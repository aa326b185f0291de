"""``python -m qpolicy.cli`` (what ``torchrun -m qpolicy.cli`` runs)."""

import sys

from . import main

sys.exit(main())
