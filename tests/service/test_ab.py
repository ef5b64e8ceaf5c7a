"""A/B arms over HTTP with the real Redis: weights, stickiness, cache isolation, hot config updates."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.service.conftest import REDIS_URL, LiveServer

pytestmark = pytest.mark.redis
TOKEN = "qa-token"


def write_config(path: Path, a: Path, b: Path, w_control: float, w_treat: float, version: int = 1) -> Path:
    cfg = {
        "version": version,
        "bundles": {"a": str(a), "b": str(b)},
        "defaults": {"bundle": "a"},
        "layers": [{"name": "model", "experiments": [{
            "name": "ab", "arms": {"control": {"weight": w_control}, "treatment": {"weight": w_treat, "bundle": "b"}},
        }]}],
    }
    path.write_text(json.dumps(cfg))
    return path


def batch(srv: LiveServer, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    r = srv.client.post("/retrieve/batch", json={"items": items})
    assert r.status_code == 200, r.text
    return list(r.json()["results"])


def test_arms_weights_stickiness_and_cache_isolation(
    tmp_path: Path, tiny_bundle: Path, second_bundle: Path, redis_prefix: str
) -> None:
    cfg = write_config(tmp_path / "exp.yaml", tiny_bundle, second_bundle, 70, 30)
    with LiveServer(experiments=cfg, redis_url=REDIS_URL, redis_prefix=redis_prefix) as srv:
        # 2000 users, ONE query: every answer after the first per arm comes from the cache.
        users = [f"user-{i}" for i in range(2000)]
        results = []
        for start in range(0, len(users), 50):
            results += batch(srv, [{"query": "cat video", "user_id": u, "top_k": 10} for u in users[start:start + 50]])
        arms = [r["arm"] for r in results]
        share = arms.count("treatment") / len(arms)
        assert abs(share - 0.3) < 5 * (0.3 * 0.7 / len(arms)) ** 0.5, share
        for r in results:
            from_b = [c["video_id"].startswith("b2-") for c in r["candidates"]]
            # a cache shared between bundles would hand one arm the other bundle's ids
            assert all(from_b) if r["arm"] == "treatment" else not any(from_b), r
            assert r["bundle_id"] == ("second-bundle" if r["arm"] == "treatment" else r["bundle_id"])
        # cache + single flight: 2000 requests, one encode per bundle (plus a few racing the first put)
        assert srv.metric("crops_encoder_batch_size_sum") <= 10
        # sticky: the same users get the same arms again
        again = batch(srv, [{"query": "lofi beats", "user_id": u} for u in users[:50]])
        assert [r["arm"] for r in again] == arms[:50]
        # the Redis level of the cache holds one entry per (bundle, query): two bundles, two keys
        client = redis.Redis.from_url(REDIS_URL)
        assert len(list(client.scan_iter(match=redis_prefix + "r:*"))) == 4
        client.close()
        # QA force header with the token
        forced = srv.retrieve("cat video", user_id=users[0], headers={"x-crops-force-arm": "treatment"})
        assert forced.status_code == 401


def test_redis_config_hot_update_and_rejection(
    tmp_path: Path, tiny_bundle: Path, second_bundle: Path, redis_prefix: str
) -> None:
    cfg = write_config(tmp_path / "exp.json", tiny_bundle, second_bundle, 100, 0, version=1)
    client = redis.Redis.from_url(REDIS_URL)
    with LiveServer(experiments=cfg, redis_url=REDIS_URL, redis_prefix=redis_prefix, config_poll_s=0.1,
                    admin_token=TOKEN) as srv:
        users = [{"query": "pasta recipe", "user_id": f"u{i}", "top_k": 3} for i in range(40)]
        assert {r["arm"] for r in batch(srv, users)} == {"control"}
        # v2: everyone to treatment, pushed to Redis; no restart
        write_config(tmp_path / "v2.json", tiny_bundle, second_bundle, 0, 100, version=2)
        client.set(redis_prefix + "experiments", (tmp_path / "v2.json").read_text())
        deadline = time.time() + 10
        while srv.client.get("/info").json()["config_version"] != 2:
            assert time.time() < deadline, "config v2 never applied"
            time.sleep(0.05)
        assert {r["arm"] for r in batch(srv, users)} == {"treatment"}
        assert srv.metric("crops_config_version") == 2
        # v3 is invalid (unknown bundle): rejected, v2 keeps serving, /info says why
        bad = json.loads((tmp_path / "v2.json").read_text())
        bad["version"] = 3
        bad["layers"][0]["experiments"][0]["arms"]["treatment"]["bundle"] = "missing"
        client.set(redis_prefix + "experiments", json.dumps(bad))
        deadline = time.time() + 10
        while srv.metric("crops_config_updates_total", result="rejected") < 1:
            assert time.time() < deadline, "invalid config never rejected"
            time.sleep(0.05)
        info = srv.client.get("/info", headers={"x-crops-admin-token": TOKEN}).json()
        assert info["config_version"] == 2
        assert info["last_config_update"]["ok"] is False
        assert "not in bundles" in info["last_config_update"]["reason"]
        assert {r["arm"] for r in batch(srv, users)} == {"treatment"}
        # v4 naming a bundle folder that does not exist: refused too (loading fails), v2 serves on
        bad["version"] = 4
        bad["bundles"]["missing"] = str(tmp_path / "no-such-bundle")
        client.set(redis_prefix + "experiments", json.dumps(bad))
        deadline = time.time() + 10
        while srv.metric("crops_config_updates_total", result="rejected") < 2:
            assert time.time() < deadline, "unloadable config never rejected"
            time.sleep(0.05)
        assert srv.client.get("/info").json()["config_version"] == 2
        # admin push (validated, applied here, published to Redis), then QA force with the token
        v5 = json.loads((tmp_path / "v2.json").read_text())
        v5["version"] = 5
        v5["layers"][0]["experiments"][0]["arms"] = {
            "control": {"weight": 1}, "treatment": {"weight": 0, "bundle": "b"},
        }
        r = srv.client.put("/admin/config", json=v5, headers={"x-crops-admin-token": TOKEN})
        assert r.status_code == 200, r.text
        assert json.loads(client.get(redis_prefix + "experiments"))["version"] == 5
        assert {r["arm"] for r in batch(srv, users)} == {"control"}
        stale = srv.client.put("/admin/config", json=v5, headers={"x-crops-admin-token": TOKEN})
        assert stale.status_code == 422 and "not newer" in stale.json()["message"]
        forced = srv.retrieve("pasta recipe", user_id="u1",
                              headers={"x-crops-force-arm": "treatment", "x-crops-admin-token": TOKEN})
        assert forced.json()["arm"] == "treatment" and forced.json()["bundle_id"] == "second-bundle"
    client.close()


def test_reload_on_one_worker_reaches_the_others_through_redis(
    tiny_bundle: Path, second_bundle: Path, redis_prefix: str
) -> None:
    common = {"bundle": tiny_bundle, "redis_url": REDIS_URL, "redis_prefix": redis_prefix, "config_poll_s": 0.1,
              "admin_token": TOKEN}
    with LiveServer(**common) as a, LiveServer(**common) as b:
        assert b.retrieve("cat").json()["bundle_id"] != "second-bundle"
        r = a.client.post("/admin/reload", json={"bundle": "default", "path": str(second_bundle)},
                          headers={"x-crops-admin-token": TOKEN})
        assert r.status_code == 200, r.text
        assert a.retrieve("cat").json()["bundle_id"] == "second-bundle"
        deadline = time.time() + 15
        while b.retrieve("cat").json()["bundle_id"] != "second-bundle":
            assert time.time() < deadline, "the other worker never followed the reload"
            time.sleep(0.1)
        assert b.client.get("/info").json()["config_version"] == a.client.get("/info").json()["config_version"] == 1
