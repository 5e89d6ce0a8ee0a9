"""``python -m edgefleet.simulations.bench [NAME...] [--quick] …``: ``edgefleet bench``."""

import sys

from . import main

sys.exit(main())
