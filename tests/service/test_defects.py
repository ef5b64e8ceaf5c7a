"""The defects of issue #15 that one in-process server shows (each test failed on the code before the fix).

The multi-process ones (reload reaching every worker, SIGTERM drain, header timeout, port clash,
balancing) are in ``test_workers.py``.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import httpx
import pytest
import redis

from tests.service.conftest import LiveServer, RedisProcess, relabel_bundle

TOKEN = "defects-token"
ADMIN = {"x-crops-admin-token": TOKEN}


def _raw(port: int, head: bytes, body: bytes = b"", timeout: float = 5.0) -> tuple[int, float]:
    """Send raw bytes, return (status code or 0 when the server closed without an answer, seconds to answer)."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head + body)
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            return -1, time.perf_counter() - t0
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, time.perf_counter() - t0


# 1 ------------------------------------------------------------------------------------------------
def test_cache_never_serves_results_of_the_index_a_reload_replaced(tiny_bundle: Path, tmp_path: Path) -> None:
    from core.manifest import read_manifest

    # a rebuilt index that keeps the bundle id (as `crops index build` does): other ids, same bundle_id
    rebuilt = relabel_bundle(tiny_bundle, tmp_path / "rebuilt", read_manifest(tiny_bundle).bundle_id, "r-")
    with LiveServer(bundle=tiny_bundle, admin_token=TOKEN) as srv:
        first = srv.retrieve("cat video", top_k=5).json()
        assert srv.retrieve("cat video", top_k=5).json()["timings"]["cached"] is True
        r = srv.client.post("/admin/reload", json={"bundle": "default", "path": str(rebuilt)}, headers=ADMIN)
        assert r.status_code == 200, r.text
        after = srv.retrieve("cat video", top_k=5).json()
    assert after["bundle_id"] == first["bundle_id"]
    ids = [c["video_id"] for c in after["candidates"]]
    assert all(i.startswith("r-") for i in ids), f"served ids from the replaced index: {ids}"
    assert after["timings"]["cached"] is False


# 3 and 12 ---------------------------------------------------------------------------------------------
def test_admin_token_is_checked_before_the_body_is_read(tiny_bundle: Path) -> None:
    with LiveServer(bundle=tiny_bundle, admin_token=TOKEN) as srv:
        # announce 200 MB, send 10 bytes: the answer must not wait for (or read) the rest
        head = (
            b"PUT /admin/config HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 200000000\r\n\r\n"
        )
        status, seconds = _raw(srv.port, head, b'{"version"')
        assert status == 401 and seconds < 2.0, (status, seconds)
        # with the token, the same announced size is refused at once by size
        head_tok = head.replace(b"\r\n\r\n", f"\r\nx-crops-admin-token: {TOKEN}\r\n\r\n".encode())
        status, seconds = _raw(srv.port, head_tok, b'{"version"')
        assert status == 413 and seconds < 2.0, (status, seconds)


@pytest.mark.parametrize("path", ["/retrieve", "/retrieve/batch", "/admin/config", "/feedback"])
def test_every_body_is_size_limited_with_413(tiny_bundle: Path, path: str) -> None:
    pad = "x" * (5 << 20)  # over every limit, also /feedback's 4 MiB
    body = {
        "/retrieve": {"query": "cat", "pad": pad},
        "/retrieve/batch": {"items": [{"query": "cat"}], "pad": pad},
        "/admin/config": {"pad": pad},
        "/feedback": {"events": [], "pad": pad},
    }[path]
    with LiveServer(bundle=tiny_bundle, admin_token=TOKEN) as srv:
        # chunked (no Content-Length): the limit holds on what is actually received too
        data = json.dumps(body).encode()
        r = srv.client.request(
            "PUT" if path.startswith("/admin") else "POST",
            path,
            headers=ADMIN,
            content=iter([data[i : i + 65536] for i in range(0, len(data), 65536)]),
        )
        assert r.status_code == 413, r.text[:200]
        assert "body over" in r.json()["message"]


def test_a_body_that_stalls_gets_408(tiny_bundle: Path) -> None:
    with LiveServer(bundle=tiny_bundle, body_timeout_s=0.5) as srv:
        head = b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        status, seconds = _raw(srv.port, head, b'{"query": ')
        assert status == 408 and seconds < 3.0, (status, seconds)


# 8 ------------------------------------------------------------------------------------------------
def test_admin_input_errors_are_4xx_not_500(tiny_bundle: Path) -> None:
    with LiveServer(bundle=tiny_bundle, admin_token=TOKEN) as srv:
        cfg = {
            "version": 18446744073709551616,
            "bundles": {"default": str(tiny_bundle)},
            "defaults": {"bundle": "default"},
        }
        r = srv.client.put("/admin/config", json=cfg, headers=ADMIN)
        assert r.status_code == 422, r.text
        r = srv.client.post("/admin/reload", json={"bundle": "default", "path": "/tmp/a\x00b"}, headers=ADMIN)
        assert r.status_code == 422, r.text
        cfg["version"] = 1
        cfg["bundles"]["default"] = "/tmp/a\x00b"
        assert srv.client.put("/admin/config", json=cfg, headers=ADMIN).status_code == 422


# 9 ------------------------------------------------------------------------------------------------
def test_a_swapped_query_tower_under_the_old_model_id_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from core.manifest import read_manifest, write_manifest

    swapped = tmp_path / "swapped"
    shutil.copytree(tiny_bundle, swapped)
    model = onnx.load(str(swapped / "query_encoder.onnx"))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(init).copy()
    init.CopyFrom(numpy_helper.from_array(arr * 0.5 + 0.01, init.name))  # another tower, same shapes
    onnx.save(model, str(swapped / "query_encoder.onnx"))
    write_manifest(swapped, read_manifest(swapped))  # re-signed: checksums refreshed, model_id kept
    with LiveServer(bundle=tiny_bundle, admin_token=TOKEN) as srv:
        r = srv.client.post("/admin/reload", json={"bundle": "default", "path": str(swapped)}, headers=ADMIN)
        assert r.status_code == 409, r.text
        assert r.json()["error"] == "incompatible" and "towers" in r.json()["message"]


def test_an_id_map_of_objects_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    from core.manifest import read_manifest, write_manifest

    bad = tmp_path / "objects"
    shutil.copytree(tiny_bundle, bad)
    ids = json.loads((bad / "id_map.json").read_text())
    (bad / "id_map.json").write_text(json.dumps([{"x": i} for i in range(len(ids))]))
    write_manifest(bad, read_manifest(bad))
    with LiveServer(bundle=tiny_bundle, admin_token=TOKEN) as srv:
        r = srv.client.post("/admin/reload", json={"bundle": "default", "path": str(bad)}, headers=ADMIN)
        assert r.status_code == 409, r.text
        assert "row 0 is dict" in r.json()["message"]


# 10 -----------------------------------------------------------------------------------------------
@pytest.mark.redis
def test_info_is_redacted_without_the_admin_token(tiny_bundle: Path, redis_process: RedisProcess) -> None:
    with LiveServer(bundle=tiny_bundle, admin_token=TOKEN, redis_url=redis_process.url) as srv:
        public = srv.client.get("/info").text
        full = srv.client.get("/info", headers=ADMIN).text
    for secret in (str(tiny_bundle), f"127.0.0.1:{redis_process.port}", '"git_sha"', '"config"', '"layers"'):
        assert secret not in public, secret
    assert str(tiny_bundle) in full and '"git_sha"' in full
    assert json.loads(public)["arms"] == ["default"]


# 11 -----------------------------------------------------------------------------------------------
@pytest.mark.redis
def test_exposures_and_feedback_survive_a_redis_outage(
    tiny_bundle: Path, redis_process: RedisProcess, tmp_path: Path
) -> None:
    event = {
        "request_id": "r",
        "user_id": "u",
        "source": "search",
        "query": "cat",
        "video_id": "v1",
        "position": 0,
        "ts_ms": 1,
        "clicked": True,
        "play_ms": 9000,
        "long_play": True,
    }
    with LiveServer(
        bundle=tiny_bundle,
        redis_url=redis_process.url,
        exposure_stream=True,
        spool_dir=tmp_path / "spool",
        redis_retry_s=0.2,
    ) as srv:
        for i in range(10):
            assert srv.retrieve(f"before {i}").status_code == 200
        redis_process.kill()
        for i in range(25):
            assert srv.retrieve(f"during {i}").status_code == 200
        assert srv.client.post("/feedback", json={"events": [event] * 3}).json() == {"accepted": 3, "dropped": 0}
        deadline = time.time() + 10
        while srv.metric("crops_exposures_total", result="spooled") < 25:
            assert time.time() < deadline, "exposures were not spooled while Redis was down"
            time.sleep(0.05)
        redis_process.start()  # same port, empty: the spooled records must be replayed into it
        client = redis.Redis.from_url(redis_process.url)
        for i in range(5):
            assert srv.retrieve(f"after {i}").status_code == 200
        deadline = time.time() + 15
        while client.xlen("crops:exposures") < 30 or client.xlen("crops:feedback") < 3:
            assert time.time() < deadline, (client.xlen("crops:exposures"), client.xlen("crops:feedback"))
            time.sleep(0.1)
        queries = {json.loads(f[b"r"])["query"] for _, f in client.xrange("crops:exposures")}
        client.close()
        assert {f"during {i}" for i in range(25)} <= queries
        assert srv.metric("crops_exposures_total", result="dropped") == 0
        assert srv.metric("crops_feedback_total", result="dropped") == 0


# feedback contract ----------------------------------------------------------------------------------
def test_feedback_is_validated_and_written_to_the_log(tiny_bundle: Path, tmp_path: Path) -> None:
    from core.feedback import FeedbackEvent

    ok = {
        "request_id": "r1",
        "user_id": "u1",
        "session_id": "s",
        "arm": "default",
        "source": "search",
        "query": "cat",
        "video_id": "v9",
        "position": 2,
        "ts_ms": 5,
        "clicked": False,
        "play_ms": 0,
        "long_play": False,
    }
    with LiveServer(bundle=tiny_bundle, feedback_jsonl=tmp_path / "feedback.jsonl") as srv:
        r = srv.client.post(
            "/feedback", json={"events": [ok, {**ok, "source": "feed", "query": None, "position": None}]}
        )
        assert r.status_code == 202 and r.json() == {"accepted": 2, "dropped": 0}
        for bad in ({**ok, "query": None}, {**ok, "ts_ms": -1}, {**ok, "clicked": "yes"}, {**ok, "extra": 1}):
            r = srv.client.post("/feedback", json={"events": [bad]})
            assert r.status_code == 422 and r.json()["message"], r.text
        assert srv.client.post("/feedback", json={"events": []}).status_code == 422
        assert srv.client.post("/feedback", json={"events": [ok] * 1001}).status_code == 422
        deadline = time.time() + 10
        while (
            not (tmp_path / "feedback.jsonl").exists()
            or len((tmp_path / "feedback.jsonl").read_text().splitlines()) < 2
        ):
            assert time.time() < deadline, "feedback not written"
            time.sleep(0.05)
    rows = [FeedbackEvent.model_validate(json.loads(x)) for x in (tmp_path / "feedback.jsonl").read_text().splitlines()]
    assert [e.source for e in rows] == ["search", "feed"]


def test_http_client_sees_413_on_a_content_length_over_the_limit(tiny_bundle: Path) -> None:
    with LiveServer(bundle=tiny_bundle) as srv:
        r = httpx.post(
            f"{srv.url}/retrieve",
            content=b'{"query": "cat", "p": "' + b"y" * (1 << 20) + b'"}',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413 and r.json()["error"] == "invalid_input"


# batch admission ------------------------------------------------------------------------------------
def test_a_batch_is_admitted_or_shed_as_one_unit(tiny_bundle: Path) -> None:
    with LiveServer(bundle=tiny_bundle, deadline_ms=2000, cache="none") as srv:
        admission = srv.app.state.retrieve.admission
        # one query is believed to cost 0.6 s (as on a busy box): four in a row do not fit in the 2 s
        # deadline, but a batch of four is one unit, not four queued misses, and the service is idle
        admission.cost_s = 0.6
        admission.observe = lambda *_: None  # keep it there for this test

        def batch(tag: str) -> httpx.Response:
            items = [{"query": f"batch unit {tag} {i}", "top_k": 5} for i in range(4)]
            return srv.client.post("/retrieve/batch", json={"items": items})

        r = batch("idle")
        assert r.status_code == 200, r.text
        assert len(r.json()["results"]) == 4
        assert (admission.queued, admission.bulk) == (0, 0)  # every place given back

        # room for one query behind what waits is room for the batch: one queued, (1 / 2 + 1) x 0.6 s < 2 s
        # (two batch slots drain the queue two at a time)
        assert admission.state.view.batch_slots == 2
        admission.queued += 1
        try:
            r = batch("one ahead")
        finally:
            admission.queued -= 1
        assert r.status_code == 200, r.text

        # no room: five queued, (5 / 2 + 1) x 0.6 s > 2 s: the batch is refused whole, once, before its body
        admission.queued += 5
        try:
            r = batch("busy")
        finally:
            admission.queued -= 5
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert srv.metric("crops_shed_total", reason="predicted") == 1

        # an item that fails fails the batch, and the batch's places come back
        items = [{"query": f"batch unit bad {i}"} for i in range(3)] + [{"query": "\u200b"}]
        r = srv.client.post("/retrieve/batch", json={"items": items})
        assert r.status_code == 422, r.text
        time.sleep(0.5)  # the items computed meanwhile end in the batcher
        assert (admission.queued, admission.bulk) == (0, 0)
