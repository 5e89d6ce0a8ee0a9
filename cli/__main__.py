"""``python -m edgefleet.cli``."""

from . import main

main()
