"""The HTTP contract against a real uvicorn server serving a real bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.service.conftest import LiveServer

TOKEN = "s3cret-admin"


@pytest.fixture(scope="module")
def srv(tiny_bundle: Path) -> Any:
    """One serving configuration: there is one request path."""
    with LiveServer(bundle=tiny_bundle, admin_token=TOKEN, max_query_chars=200, deadline_ms=5000) as s:
        yield s


def test_retrieve_returns_top_k_sorted_with_arm_bundle_and_timings(srv: LiveServer, tiny_bundle: Path) -> None:
    from core.manifest import read_manifest

    r = srv.retrieve("Funny CAT   compilation", user_id="u1")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["arm"] == "default"
    assert body["bundle_id"] == read_manifest(tiny_bundle).bundle_id
    cands = body["candidates"]
    assert len(cands) == 100
    scores = [c["score"] for c in cands]
    assert scores == sorted(scores, reverse=True)
    assert len({c["video_id"] for c in cands}) == 100
    assert {"normalize_ms", "encode_ms", "search_ms", "total_ms"} <= set(body["timings"])
    assert r.headers["x-crops-arm"] == "default"
    assert r.headers["x-request-id"] == body["request_id"]
    assert "encode;dur=" in r.headers["server-timing"]
    # The dense model puts cat videos first for a cat query (tiny corpus topics are distinct).
    top_ids = [c["video_id"] for c in cands[:5]]
    assert all(int(v[1:]) % 6 == 0 for v in top_ids), top_ids  # topic 0 of the tiny corpus is cats


def test_top_k_and_request_id_are_honoured(srv: LiveServer) -> None:
    r = srv.retrieve("pasta recipe", top_k=7, request_id="req-42")
    assert r.status_code == 200
    assert len(r.json()["candidates"]) == 7
    assert r.json()["request_id"] == "req-42"


def test_same_normalised_query_hits_the_cache(srv: LiveServer) -> None:
    first = srv.retrieve("Drum  SOLO live")
    second = srv.retrieve("drum solo LIVE ")
    assert first.json()["timings"]["cached"] is False
    assert second.json()["timings"]["cached"] is True
    assert second.json()["candidates"] == first.json()["candidates"]
    assert srv.metric("crops_cache_total", cache="result", result="hit") >= 1


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"query": ""}, "query"),
        ({"query": "   \t\n "}, "whitespace"),
        ({"query": "\u200b\u200d"}, "normalisation"),
        ({"query": "x" * 201}, "at most 200"),
        ({"query": "cat", "top_k": 0}, "top_k"),
        ({"query": "cat", "top_k": 101}, "top_k"),
        ({"query": "cat", "top_k": "5"}, "top_k"),
        ({"query": "cat", "top_k": 2.5}, "top_k"),
        ({"query": 42}, "query"),
        ({"query": None}, "query"),
        ({"top_k": 3}, "query"),
        ({"query": "cat", "user_id": 7}, "user_id"),
        ([1, 2], "body"),
    ],
)
def test_bad_input_is_422_with_a_readable_message(srv: LiveServer, body: Any, needle: str) -> None:
    r = srv.client.post("/retrieve", json=body)
    assert r.status_code == 422, r.text
    err = r.json()
    assert err["error"] == "invalid_input"
    assert needle in err["message"], err["message"]


def test_malformed_json_is_422(srv: LiveServer) -> None:
    r = srv.client.post("/retrieve", content=b'{"query": "cat"', headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["error"] == "invalid_input"


@pytest.mark.parametrize("ctype", [None, "application/x-www-form-urlencoded", "text/plain"])
def test_json_body_without_json_content_type_is_read_as_json(srv: LiveServer, ctype: str | None) -> None:
    # `curl -d '{"query": "cat video"}'` (the README's example) sends a form content type.
    headers = {"content-type": ctype} if ctype else {}
    r = srv.client.post("/retrieve", content=b'{"query": "cat video"}', headers=headers)
    assert r.status_code == 200, r.text
    assert len(r.json()["candidates"]) == 100
    bad = srv.client.post("/retrieve", content=b"query=cat", headers=headers)
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_input"


def test_batch_endpoint_answers_each_item(srv: LiveServer) -> None:
    items = [{"query": q, "top_k": 5, "user_id": f"u{i}"} for i, q in enumerate(["cat", "lofi beats", "wiring"])]
    r = srv.client.post("/retrieve/batch", json={"items": items})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [len(x["candidates"]) for x in results] == [5, 5, 5]
    single = srv.retrieve("lofi beats", top_k=5).json()
    assert results[1]["candidates"] == single["candidates"]
    assert srv.client.post("/retrieve/batch", json={"items": []}).status_code == 422


def test_force_arm_needs_the_admin_token(srv: LiveServer) -> None:
    assert srv.retrieve("cat", headers={"x-crops-force-arm": "default"}).status_code == 401
    bad = srv.retrieve("cat", headers={"x-crops-force-arm": "default", "x-crops-admin-token": "nope"})
    assert bad.status_code == 401
    ok = srv.retrieve("cat", headers={"x-crops-force-arm": "default", "authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    unknown = srv.retrieve("cat", headers={"x-crops-force-arm": "nope", "x-crops-admin-token": TOKEN})
    assert unknown.status_code == 422 and "unknown arm" in unknown.json()["message"]


def test_health_info_and_metrics(srv: LiveServer, tiny_bundle: Path) -> None:
    assert srv.client.get("/healthz").json() == {"status": "ok"}
    assert srv.client.get("/readyz").status_code == 200
    info = srv.client.get("/info", headers={"x-crops-admin-token": TOKEN}).json()
    summary = info["bundles"]["default"]
    assert summary["ntotal"] == 600 and summary["index_factory"] == "Flat"
    assert summary["batch_slots"] == 2  # the CPU default: a worker encodes and searches two batches at once
    assert info["arms"]["default"]["bundle_id"] == summary["bundle_id"]
    srv.retrieve("guitar cover")
    text = srv.client.get("/metrics").text
    for name in ("crops_request_latency_seconds_bucket", "crops_queued", "crops_config_version",
                 "crops_bundle_info", "crops_errors_total", "crops_cache_total"):
        assert name in text, name
    assert srv.metric("crops_request_latency_seconds_count", arm="default", stage="encode") >= 1
    assert srv.metric("crops_errors_total", kind="invalid_input") >= 0


def test_admin_endpoints_refuse_without_token(srv: LiveServer) -> None:
    assert srv.client.post("/admin/reload").status_code == 401
    assert srv.client.put("/admin/config", json={}).status_code == 401


def test_concurrent_queries_are_encoded_in_micro_batches(srv: LiveServer) -> None:
    before_sum = srv.metric("crops_encoder_batch_size_sum")
    before_n = srv.metric("crops_encoder_batch_size_count")
    before_le16 = srv.metric("crops_encoder_batch_size_bucket", le="16.0")
    items = [{"query": f"micro batch probe {i}", "top_k": 1} for i in range(32)]
    assert srv.client.post("/retrieve/batch", json={"items": items}).status_code == 200
    encoded = srv.metric("crops_encoder_batch_size_sum") - before_sum
    batches = srv.metric("crops_encoder_batch_size_count") - before_n
    assert encoded == 32
    assert batches < 32, "32 concurrent misses were encoded one by one"
    # max_batch (16) bounds every batch: all new batches fall in the le=16 bucket
    assert srv.metric("crops_encoder_batch_size_bucket", le="16.0") - before_le16 == batches
