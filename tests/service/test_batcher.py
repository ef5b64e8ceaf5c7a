"""The bundle batcher (service.runtime) on a real bundle: single queries go before
/retrieve/batch items, bulk items run in slices of ``bulk_slice``, every job gets its own answer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.runtime import BundleRuntime


@pytest.fixture()
def runtime(tiny_bundle: Path) -> Any:
    sizes: list[int] = []
    # one slot: batches run one after another, so their order and sizes are deterministic
    rt = BundleRuntime(tiny_bundle, max_batch=8, bulk_slice=2, on_batch=sizes.append, batch_slots=1)
    rt.warm_up(2)
    rt.sizes = sizes  # type: ignore[attr-defined]
    yield rt
    rt.stop()


JOBS = [(f"bulk {i}", True) for i in range(6)] + [(f"single {i}", False) for i in range(3)]


async def _queue_all_then_wait(rt: BundleRuntime) -> tuple[list[str], list[Any]]:
    """Queue 6 bulk items then 3 singles before the batcher runs any; record the order they finish."""
    from service.runtime import Job

    loop = asyncio.get_running_loop()
    done: list[str] = []
    futs = []
    for q, bulk in JOBS:
        fut = loop.create_future()
        rt._q.put(Job(q, None, None, fut, loop, 0.0, bulk))  # the thread starts after all are queued
        fut.add_done_callback(lambda _f, q=q: done.append(q))
        futs.append(fut)
    rt.start()
    return done, list(await asyncio.gather(*futs))


def test_singles_go_first_and_bulk_runs_in_slices(runtime: BundleRuntime) -> None:
    runtime.sizes.clear()  # type: ignore[attr-defined]
    done, results = asyncio.run(_queue_all_then_wait(runtime))
    # first batch: the 3 singles + a slice of 2 bulk items; then the other bulk items 2 at a time
    assert runtime.sizes == [5, 2, 2]  # type: ignore[attr-defined]
    assert set(done[:3]) == {"single 0", "single 1", "single 2"}
    assert done[3:] == [f"bulk {i}" for i in range(6)]
    for r in results:
        assert len(r.ids) == 100 and r.scores == sorted(r.scores, reverse=True)
        assert np.isfinite(r.vector).all()


async def _queue_with_deadlines(rt: BundleRuntime, deadlines: list[float]) -> list[Any]:
    from service.runtime import Job

    loop = asyncio.get_running_loop()
    futs = []
    for i, d in enumerate(deadlines):
        fut = loop.create_future()
        rt._q.put(Job(f"query {i}", None, None, fut, loop, 0.0, False, d))
        futs.append(fut)
    rt.start()
    return list(await asyncio.gather(*futs, return_exceptions=True))


def test_batches_fit_their_deadlines_and_doomed_jobs_are_not_computed(runtime: BundleRuntime) -> None:
    """A batch answers all its items at its end: it is cut to what meets the earliest deadline in it,
    and a job that would miss its deadline even alone gets DEADLINE_EXCEEDED without being computed."""
    import time

    from core.errors import CropsError, ErrorKind

    runtime.sizes.clear()  # type: ignore[attr-defined]
    runtime.cost_s = 1.0  # as if measured: 1 s a query, so the deadlines below are in units of it
    now = time.perf_counter()
    # job 0 is doomed (0.5 s left < one query's cost); jobs 1-2 have 2.5 s (two queries' worth fit,
    # not three; 0.5 s of slack for a slow start); jobs 3-5 have no deadline
    deadlines = [now + 0.5, now + 2.5, now + 2.5] + [float("inf")] * 3
    results = asyncio.run(_queue_with_deadlines(runtime, deadlines))
    assert isinstance(results[0], CropsError) and results[0].kind is ErrorKind.DEADLINE_EXCEEDED
    assert all(len(r.ids) == 100 for r in results[1:]), results
    # 5 computed, never 6; the first batch was cut to the 2 queries that fit the 2.5 s deadline
    assert sum(runtime.sizes) == 5 and runtime.sizes[0] == 2, runtime.sizes  # type: ignore[attr-defined]


async def _slow_then_fast(rt: BundleRuntime) -> list[str]:
    loop = asyncio.get_running_loop()
    done: list[str] = []
    slow = rt.submit("slow query", None, None)
    slow.future.add_done_callback(lambda _f: done.append("slow"))
    await asyncio.sleep(0.05)  # the slow batch is running
    fast = rt.submit("fast query", None, None)
    fast.future.add_done_callback(lambda _f: done.append("fast"))
    await asyncio.gather(slow.future, fast.future)
    assert loop.is_running()
    return done


@pytest.mark.parametrize("slots, order", [(1, ["slow", "fast"]), (2, ["fast", "slow"])])
def test_a_query_does_not_wait_behind_a_running_batch_while_a_slot_is_free(
    tiny_bundle: Path, slots: int, order: list[str]
) -> None:
    """With two slots a query that arrives while a batch runs is computed at once on the other slot;
    with one it waits for that batch. The encoder is wrapped to take 0.5 s on the slow query."""
    import time

    rt = BundleRuntime(tiny_bundle, batch_slots=slots)
    encode = rt.retriever.encode

    def slow_encode(queries: list[str]) -> Any:  # wrapper around the real encoder, named as such
        if "slow query" in queries:
            time.sleep(0.5)
        return encode(queries)

    rt.retriever.encode = slow_encode  # type: ignore[method-assign]
    rt.start()
    try:
        assert asyncio.run(_slow_then_fast(rt)) == order
    finally:
        rt.stop()


async def _many(rt: BundleRuntime, work: list[tuple[str, int]]) -> list[list[str]]:
    jobs = [rt.submit(q, None, nprobe) for q, nprobe in work]
    return [list(r.ids) for r in await asyncio.gather(*(j.future for j in jobs))]


def test_two_slots_answer_exactly_what_one_slot_answers_with_mixed_nprobe(ivf_bundle: Path) -> None:
    """Both slots search one index at once, with per-call nprobe (arms differ): every answer must be
    the one a single slot gives, or a search point set by one thread leaked into the other's call."""
    work = [(f"query {i % 37} video", (1, 4, 16)[i % 3]) for i in range(240)]
    answers = {}
    for slots in (1, 2):
        rt = BundleRuntime(ivf_bundle, max_batch=4, batch_slots=slots)
        rt.start()
        try:
            answers[slots] = asyncio.run(_many(rt, work))
        finally:
            rt.stop()
    assert answers[1] == answers[2]
    # work[0] and work[74]: the same query at nprobe 1 and 16. nprobe matters on this index, so a
    # leaked search point would change answers and the comparison above can fail
    assert work[0][0] == work[74][0] and (work[0][1], work[74][1]) == (1, 16)
    assert answers[1][0] != answers[1][74]


async def _queue_then_stop(rt: BundleRuntime, n: int) -> list[Any]:
    jobs = [rt.submit(f"query {i}", None, None) for i in range(n)]
    rt.stop()  # the stop marker lands behind the n jobs
    late = rt.submit("after the stop", None, None)  # runs inline, off the slots
    return [r.ids for r in await asyncio.gather(*(j.future for j in [*jobs, late]))]


def test_stop_finishes_what_is_queued_then_ends_every_slot_thread(tiny_bundle: Path) -> None:
    rt = BundleRuntime(tiny_bundle, max_batch=2, batch_slots=2)
    rt.start()
    threads = list(rt._threads)
    assert len(threads) == 2 and all(t.is_alive() for t in threads)
    answers = asyncio.run(_queue_then_stop(rt, 9))
    assert len(answers) == 10 and all(len(ids) == 100 for ids in answers)
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)


def test_a_slot_survives_a_failure_after_its_batch_is_computed(tiny_bundle: Path) -> None:
    """A failure while answering (here the batch-size callback, failing once) is logged and the slot
    goes on: the next query is still answered by the same single slot."""
    calls: list[int] = []

    def on_batch(n: int) -> None:  # raises on the first batch only
        calls.append(n)
        if len(calls) == 1:
            raise RuntimeError("metrics backend down")

    rt = BundleRuntime(tiny_bundle, batch_slots=1, on_batch=on_batch)
    rt.start()

    async def go() -> list[str]:
        first = rt.submit("first query", None, None)
        with pytest.raises(asyncio.TimeoutError):  # its answer was lost with the failure
            await asyncio.wait_for(asyncio.shield(first.future), 2.0)
        second = rt.submit("second query", None, None)
        return list((await asyncio.wait_for(second.future, 10.0)).ids)

    try:
        assert len(asyncio.run(go())) == 100 and calls == [1, 1]
    finally:
        rt.stop()
