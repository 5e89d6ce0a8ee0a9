"""The waits of a retry loop: exponential growth up to a cap, with jitter.

Each loop that retries (provisioning, chunk fetches, reconnects, webhook posts) keeps
a ``Backoff`` and asks it how long to wait after each failure: ``next(backoff)``. The
delay before jitter starts at ``initial_s`` and is multiplied by ``factor`` after each
wait, up to ``max_s``; each wait is that delay times a factor drawn uniformly from
``jitter``, so devices that lost the same broker do not come back in step. ``reset``
after a success starts over.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

__all__ = ["Backoff"]


class Backoff(Iterator[float]):
    """Delays in seconds for successive retries: an endless iterator.

    Args:
        initial_s: the delay, before jitter, of the first wait (not capped).
        max_s: the largest delay before jitter that growth reaches.
        factor: how much the delay grows after each wait (≥ 1).
        jitter: ``(low, high)``; each wait is the delay times a number within it.
        uniform: draws that number, ``random.uniform``'s signature (a seeded
            ``random.Random().uniform`` for a reproducible run or a test).

    Raises:
        ValueError: a negative delay, a factor below 1, or jitter not ``0 ≤ low ≤ high``.
    """

    def __init__(self, initial_s: float, max_s: float, *, factor: float = 2.0,
                 jitter: tuple[float, float] = (0.5, 1.0),
                 uniform: Callable[[float, float], float] = random.uniform) -> None:
        if initial_s < 0 or max_s < 0 or factor < 1 or not 0 <= jitter[0] <= jitter[1]:
            raise ValueError(f"backoff needs delays ≥ 0, a factor ≥ 1 and 0 ≤ low ≤ high "
                             f"jitter (got {initial_s}, {max_s}, {factor}, {jitter})")
        self.initial_s, self.max_s, self.factor = initial_s, max_s, factor
        self.jitter = jitter
        self._uniform = uniform
        self.delay_s = initial_s  # the next wait's delay before jitter

    def __next__(self) -> float:
        wait = self.delay_s * self._uniform(*self.jitter)
        self.delay_s = min(self.delay_s * self.factor, self.max_s)
        return wait

    def reset(self) -> None:
        """Start over from ``initial_s`` (after a success)."""
        self.delay_s = self.initial_s
