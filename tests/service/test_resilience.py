"""What on-call cares about: Redis outages, overload, deadlines and bundle reloads, on a live server."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.conftest import LiveServer, RedisProcess, relabel_bundle

TOKEN = "ops-token"
ADMIN = {"x-crops-admin-token": TOKEN}


class Hammer:
    """Sends requests in a background thread and records every status code."""

    def __init__(self, url: str, prefix: str = "q") -> None:
        self.url, self.prefix = url, prefix
        self.statuses: list[int] = []
        self.bodies: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            i = 0
            while not self._stop.is_set():
                # distinct queries: every request misses the cache and goes to Redis and the encoder
                r = client.post("/retrieve", json={"query": f"{self.prefix} cat video {i}", "top_k": 5,
                                                   "user_id": f"u{i % 97}"})
                self.statuses.append(r.status_code)
                if r.status_code == 200:
                    self.bodies.append(r.json())
                i += 1

    def __enter__(self) -> Hammer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def wait_for(self, n: int, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        while len(self.statuses) < n:
            assert time.time() < deadline, f"only {len(self.statuses)} requests in {timeout}s"
            time.sleep(0.02)


@pytest.mark.redis
def test_redis_killed_and_restarted_mid_traffic_fails_no_request(
    tiny_bundle: Path, redis_process: RedisProcess, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.WARNING, logger="service.redis")
    with LiveServer(bundle=tiny_bundle, redis_url=redis_process.url, redis_retry_s=0.2, config_poll_s=0.1,
                    exposure_stream=True, admin_token=TOKEN) as srv, Hammer(srv.url) as hammer:
        hammer.wait_for(20)
        assert srv.metric("crops_redis_up") == 1
        redis_process.kill()
        n_at_kill = len(hammer.statuses)
        hammer.wait_for(n_at_kill + 30)
        deadline = time.time() + 10
        while srv.metric("crops_redis_up") != 0:
            assert time.time() < deadline
            time.sleep(0.05)
        assert srv.client.get("/info", headers=ADMIN).json()["redis"]["up"] is False
        redis_process.start()  # same port, empty
        deadline = time.time() + 15
        while srv.metric("crops_redis_up") != 1:
            assert time.time() < deadline, "service never noticed Redis came back"
            time.sleep(0.05)
        n_back = len(hammer.statuses)
        hammer.wait_for(n_back + 20)
        assert srv.metric("crops_redis_errors_total") >= 1
    assert hammer.statuses and set(hammer.statuses) == {200}, {s: hammer.statuses.count(s) for s in hammer.statuses}
    messages = [r.getMessage() for r in caplog.records]
    assert any("unavailable" in m for m in messages) and any("is back" in m for m in messages), messages
    # after the restart the cache and the exposure stream write to the new Redis again
    import redis

    client = redis.Redis(port=redis_process.port)
    deadline = time.time() + 5
    while client.xlen("crops:exposures") == 0:
        assert time.time() < deadline, "exposure stream not written after Redis came back"
        time.sleep(0.05)
    client.close()


def test_overload_is_shed_fast_with_retry_after(tiny_bundle: Path) -> None:
    import asyncio

    with LiveServer(bundle=tiny_bundle, max_queue=2, cache="none") as srv:

        async def burst() -> list[tuple[int, float, str | None]]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=30,
                                         limits=httpx.Limits(max_connections=64)) as client:
                async def one(i: int) -> tuple[int, float, str | None]:
                    t = time.perf_counter()
                    r = await client.post("/retrieve", json={"query": f"overload {i} " * 8})
                    return r.status_code, time.perf_counter() - t, r.headers.get("retry-after")

                return list(await asyncio.gather(*(one(i) for i in range(48))))

        results = asyncio.run(burst())
        n_shed_metric = srv.metric("crops_shed_total", reason="queue_full")
    shed = [(dt, ra) for code, dt, ra in results if code == 503]
    ok = [dt for code, dt, _ in results if code == 200]
    assert shed, "48 simultaneous requests with max_queue=2 shed nothing"
    assert ok, "nothing was served"
    assert {code for code, _, _ in results} <= {200, 503}
    assert all(ra == "1" for _, ra in shed)
    # shedding is cheap: a refused request answers faster than a served one (no queueing behind them)
    shed_times = sorted(dt for dt, _ in shed)
    assert shed_times[len(shed_times) // 2] < max(ok), (shed_times, ok)
    assert n_shed_metric == len(shed)


def test_a_request_that_cannot_make_its_deadline_is_refused_at_once(tiny_bundle: Path) -> None:
    import asyncio

    with LiveServer(bundle=tiny_bundle, deadline_ms=2000, cache="none") as srv:
        # the admission believes one query costs 1 s (as after slow batches): with one query queued, the
        # next cannot finish inside 2 s... and neither can any request asking for 500 ms
        admission = srv.app.state.retrieve.admission
        admission.cost_s = 1.0
        admission.observe = lambda *_: None  # keep it there for this test

        async def burst() -> list[tuple[int, float, str]]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
                async def one(i: int) -> tuple[int, float, str]:
                    t = time.perf_counter()
                    r = await client.post("/retrieve", json={"query": f"predicted shed {i}"})
                    return r.status_code, time.perf_counter() - t, r.json()["error"] if r.status_code != 200 else ""

                return list(await asyncio.gather(*(one(i) for i in range(8))))

        results = asyncio.run(burst())
        shed = [(dt, err) for code, dt, err in results if code == 503]
        assert any(code == 200 for code, _, _ in results), results  # an empty queue always admits
        assert shed and all(err == "overloaded" for _, err in shed), results
        assert srv.metric("crops_shed_total", reason="predicted") == len(shed)
        # a caller may ask for a shorter deadline than the server's, never a longer one
        admission.queued += 1  # as if one query were queued
        try:
            r = srv.retrieve("any query", headers={"x-crops-deadline-ms": "500"})
        finally:
            admission.queued -= 1
        assert r.status_code == 503 and r.headers["retry-after"] == "1"


def test_the_work_already_done_ahead_is_not_counted_again(tiny_bundle: Path) -> None:
    with LiveServer(bundle=tiny_bundle, deadline_ms=1000, cache="none") as srv:
        admission = srv.app.state.retrieve.admission
        admission.cost_s = 0.6  # one query is believed to cost 0.6 s
        admission.observe = lambda *_: None  # keep it there for this test
        assert admission.state.view.batch_slots == 2  # two batches run at once: two queries ahead take one query's time
        admission.queued += 2  # as if two queries were queued...
        try:
            # ... and the slots began them 0.5 s ago: 0.1 s left, then 0.6 s for this one, inside 1 s
            admission.since = time.perf_counter() - 0.5
            assert srv.retrieve("half done ahead").status_code == 200
            # begun just now: 0.6 + 0.6 s would pass the 1 s deadline
            admission.since = time.perf_counter()
            r = srv.retrieve("just begun ahead")
        finally:
            admission.queued -= 2
        assert r.status_code == 503 and r.json()["error"] == "overloaded", r.text


def test_deadline_passed_while_queued_is_503(tiny_bundle: Path) -> None:
    with LiveServer(bundle=tiny_bundle, deadline_ms=1.0, cache="none") as srv:
        # the admission's cost estimate says "free" (as after a run of fast batches): the request is admitted,
        # then its encode (several ms on CPU) outlasts the 1 ms deadline
        srv.app.state.retrieve.admission.cost_s = 0.0
        srv.app.state.retrieve.admission.observe = lambda *_: None  # keep it there for this test
        r = srv.retrieve("any query at all")
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "deadline_exceeded" and r.headers["retry-after"] == "1"
        assert srv.metric("crops_shed_total", reason="deadline") == 1


def test_reload_refuses_corrupt_bundles_and_swaps_good_ones_while_serving(
    tiny_bundle: Path, bundle_copy: Path, tmp_path: Path
) -> None:
    from core.manifest import read_manifest, write_manifest

    # corrupt: bytes of the index changed behind the manifest's back
    idx = bundle_copy / "index.faiss"
    data = bytearray(idx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    idx.write_bytes(bytes(data))
    # mismatched: an index section claiming another model (checksums refreshed, so only the ids differ)
    mismatched = relabel_bundle(tiny_bundle, tmp_path / "mismatch", "mismatch", "")
    m = read_manifest(mismatched)
    assert m.index is not None
    m.index.model_id = "another-model"
    write_manifest(mismatched, m)
    good = relabel_bundle(tiny_bundle, tmp_path / "next", "next-bundle", "n-")
    old_id = read_manifest(tiny_bundle).bundle_id

    with LiveServer(bundle=tiny_bundle, admin_token=TOKEN) as srv, Hammer(srv.url) as hammer:
        hammer.wait_for(5)
        r = srv.client.post("/admin/reload", json={"bundle": "default", "path": str(bundle_copy)}, headers=ADMIN)
        assert r.status_code == 409 and r.json()["error"] == "checksum_mismatch", r.text
        info = srv.client.get("/info", headers=ADMIN).json()
        assert info["last_reload"]["ok"] is False and "sha256" in info["last_reload"]["reason"]
        assert info["bundles"]["default"]["bundle_id"] == old_id

        r = srv.client.post("/admin/reload", json={"bundle": "default", "path": str(mismatched)}, headers=ADMIN)
        assert r.status_code == 409 and r.json()["error"] == "incompatible", r.text
        assert srv.retrieve("cat").json()["bundle_id"] == old_id

        n = len(hammer.statuses)
        r = srv.client.post("/admin/reload", json={"bundle": "default", "path": str(good)}, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert srv.retrieve("cat").json()["bundle_id"] == "next-bundle"
        hammer.wait_for(n + 10)
        # reload in place (same path, re-verified) also works
        assert srv.client.post("/admin/reload", headers=ADMIN).status_code == 200
        assert srv.client.post("/admin/reload", json={"bundle": "nope"}, headers=ADMIN).status_code == 404
        assert srv.metric("crops_reloads_total", result="failed") == 2
    assert set(hammer.statuses) == {200}
    # every answer came whole from one bundle: never old ids under the new bundle id or the reverse
    for body in hammer.bodies:
        new = body["bundle_id"] == "next-bundle"
        assert all(c["video_id"].startswith("n-") == new for c in body["candidates"])
