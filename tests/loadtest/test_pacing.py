"""Locust users' pacing: independent callers must add up to Poisson arrivals at the target rate.

The users are simulated on a fake clock the way locust drives them (spawned one by one at the spawn
rate; each sends, waits for its answer, then sleeps ``wait_time()``), so these tests are exact and fast.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable

import pytest

from loadtest.pacing import PoissonPacer

USERS, RATE_PER_USER, SPAWN_EVERY, ANSWER_S, SECONDS = 40, 10.0, 0.125, 0.005, 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _sends(make_pacer: Callable[[int, Clock], Callable[[], float]], answer_s: float = ANSWER_S) -> list[float]:
    """Send times of USERS simulated users over SECONDS, each answer taking ``answer_s``."""
    clock = Clock()
    pacers = [make_pacer(u, clock) for u in range(USERS)]
    events = [(u * SPAWN_EVERY, u) for u in range(USERS)]  # first send at spawn
    heapq.heapify(events)
    sends = []
    while events:
        t, u = heapq.heappop(events)
        if t > SECONDS:
            continue
        sends.append(t)
        clock.now = t + answer_s  # locust asks for the wait once the task (the request) returned
        wait = pacers[u]()
        assert wait >= 0
        heapq.heappush(events, (clock.now + wait, u))
    return sorted(sends)


def _held(sends: list[float]) -> list[float]:
    return [t for t in sends if t >= USERS * SPAWN_EVERY + 1]  # after the ramp


def _tiny_gap_share(sends: list[float], rate: float) -> float:
    gaps = [b - a for a, b in itertools.pairwise(sends)]
    return sum(g < 0.1 / rate for g in gaps) / len(gaps)


def _poisson(u: int, clock: Clock) -> PoissonPacer:
    return PoissonPacer(RATE_PER_USER, random.Random(u), clock)


def test_users_add_up_to_poisson_arrivals_at_the_target_rate() -> None:
    sends = _held(_sends(_poisson))
    span = SECONDS - (USERS * SPAWN_EVERY + 1)
    target = USERS * RATE_PER_USER
    assert len(sends) / span == pytest.approx(target, rel=0.03)
    # Poisson: P(gap < a tenth of the mean gap) = 1 - e^-0.1 = 0.095
    assert 0.07 < _tiny_gap_share(sends, target) < 0.12
    # and no phase lock: sends are spread evenly over any 25 ms cycle
    bins = [0] * 10
    for t in sends:
        bins[int((t % 0.025) / 0.0025)] += 1
    assert max(bins) / (len(sends) / 10) < 1.15, bins


def test_the_check_catches_phase_locked_bursts() -> None:
    """The old pacing (constant throughput) kept the spawn phases: 4 bursts of 10 users every 25 ms."""

    def constant(u: int, clock: Clock) -> Callable[[], float]:
        def wait() -> float:  # locust's constant_throughput: the period minus the task's own time
            return max(0.0, 1 / RATE_PER_USER - ANSWER_S)

        return wait

    sends = _held(_sends(constant))
    assert _tiny_gap_share(sends, USERS * RATE_PER_USER) > 0.8


def test_a_late_answer_sends_at_once_and_does_not_burst_to_catch_up() -> None:
    clock = Clock()
    pacer = PoissonPacer(10.0, random.Random(0), clock)
    pacer()  # schedule from t = 0
    clock.now = 5.0  # an answer that took 5 s, 50 mean gaps
    waits = [pacer()]
    for _ in range(20):
        clock.now += waits[-1] + 0.001
        waits.append(pacer())
    assert waits[0] == 0.0  # behind: the next request goes at once
    assert sum(w == 0.0 for w in waits[1:]) <= 2  # then the schedule restarts from now: no catch-up run
    assert sum(waits[1:]) == pytest.approx(2.0, rel=0.6)  # ~20 gaps of 0.1 s


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rate must be > 0"):
        PoissonPacer(0.0, random.Random(0))
