"""``python -m edgefleet.simulations.bench [--only NAME] [--size SIZE] [--json] [--out FILE]``."""

import sys

from . import main

sys.exit(main())
