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
    rt = BundleRuntime(tiny_bundle, max_batch=8, bulk_slice=2, on_batch=sizes.append)
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
