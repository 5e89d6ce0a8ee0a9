"""What a long-running command needs from its process: logging and waiting for a signal."""

from __future__ import annotations

import logging
import signal
import threading

__all__ = ["configure_logging", "wait_for_signal"]


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("amqtt", "transitions", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
