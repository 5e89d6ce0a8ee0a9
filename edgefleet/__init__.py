"""edgefleet: deploy ML models to fleets of edge devices.

The distribution is split by part, each under this namespace:

- ``edgefleet.contract``: what agent and controller agree on (topics, messages, bundles, errors).
- ``edgefleet.agent``: the device daemon (verify, install, serve, buffer telemetry).
- ``edgefleet.controller``: registry, signing, deployments, ingest, HTTP API.
- ``edgefleet.optimizer``: int8 quantization, pruning, evaluation gates.
- ``edgefleet.simulations``: fleets of real agents in one process for demos and tests.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
