"""Pacing of simulated callers (no locust import: importing locust monkey-patches the process)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable


class PoissonPacer:
    """Wait times that make one caller's requests a Poisson process of ``rate`` per second.

    Send times are drawn ahead on the caller's own schedule (exponential gaps), not from when the
    last answer came back, so a slow answer does not shift later sends. A caller that fell behind
    its schedule sends at once and restarts the schedule from now: it never bursts to catch up.
    """

    def __init__(self, rate: float, rng: random.Random, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0, not {rate}")
        self.rate, self.rng, self.clock = rate, rng, clock
        self._next: float | None = None

    def __call__(self) -> float:
        now = self.clock()
        # _next is the send time just used; the next one is an exponential gap after it (not after now)
        self._next = (now if self._next is None else self._next) + self.rng.expovariate(self.rate)
        if self._next < now:  # behind schedule: send at once, the schedule restarts from now
            self._next = now
        return self._next - now
