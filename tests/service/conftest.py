"""Service test fixtures: real uvicorn servers on free ports, real bundles, real Redis."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

REDIS_URL = os.environ.get("CROPS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """A real uvicorn server running ``create_app(settings)`` in a thread, on a free port."""

    def __init__(self, **settings: Any) -> None:
        import uvicorn

        from service.app import create_app
        from service.settings import ServiceSettings

        # This box is shared and busy: give Redis more than the production 100 ms before calling it down.
        settings.setdefault("redis_timeout_ms", 500.0)
        # In-process servers share pytest's heap: freezing it would keep every later test's cycles alive.
        settings.setdefault("gc_freeze", False)
        # ... and a deadline no test means to hit (the production 50 ms is a latency SLO, not a test budget)
        settings.setdefault("deadline_ms", 5000.0)
        settings.setdefault("spool_dir", None)
        self.settings = ServiceSettings(**settings)
        self.app = create_app(self.settings)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.client = httpx.Client(base_url=self.url, timeout=10.0)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=15)

    @property
    def state(self) -> Any:
        return self.app.state.crops

    def retrieve(self, query: str = "cat video", **body: Any) -> httpx.Response:
        headers = body.pop("headers", None)
        return self.client.post("/retrieve", json={"query": query, **body}, headers=headers)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples matching ``labels`` (reads /metrics over HTTP)."""
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for fam in text_string_to_metric_families(self.client.get("/metrics").text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total


@pytest.fixture()
def live_server() -> Any:
    """Factory: ``with live_server(bundle=..., ...) as srv``."""
    return LiveServer


def relabel_bundle(src: Path, dst: Path, bundle_id: str, id_prefix: str) -> Path:
    """Copy a bundle under another bundle_id, with every video id prefixed (results tell bundles apart)."""
    from core.manifest import read_manifest, write_manifest

    shutil.copytree(src, dst)
    m = read_manifest(dst)
    assert m.index is not None
    id_map = dst / m.index.id_map_file
    id_map.write_text(json.dumps([id_prefix + x for x in json.loads(id_map.read_text())]))
    m.bundle_id = bundle_id
    write_manifest(dst, m)  # refreshes every checksum, the id map's included
    return dst


@pytest.fixture(scope="session")
def second_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> Path:
    """``tiny_bundle`` under another bundle_id whose video ids all start with ``b2-``."""
    return relabel_bundle(tiny_bundle, tmp_path_factory.mktemp("bundles") / "second", "second-bundle", "b2-")


@pytest.fixture()
def redis_prefix() -> Iterator[str]:
    """A unique key prefix in the test Redis db (15); its keys are deleted afterwards."""
    import redis

    prefix = f"crops-test-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()
    yield prefix
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


class RedisProcess:
    """A private redis-server on a free port that a test may kill and restart."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--bind", "127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.time() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.time() > deadline:
                    raise
                time.sleep(0.02)
        client.close()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture()
def redis_process() -> Iterator[RedisProcess]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    rp = RedisProcess()
    rp.start()
    yield rp
    rp.kill()


@pytest.fixture(scope="session")
def ivf_bundle(tmp_path_factory: pytest.TempPathFactory, model_bundle: Path, tiny_corpus: Path) -> Path:
    """An IVF-Flat index tuned to a low recall target: recall@100 is measurably below 1 and nprobe
    changes the answers. Read-only."""
    from index_builder.build import build_index

    out = tmp_path_factory.mktemp("bundles") / "ivf"
    shutil.copytree(model_bundle, out, dirs_exist_ok=True)
    build_index(out, tiny_corpus, factory="IVF16,Flat", refine=False, target_recall=0.6, progress=False,
                n_recall_queries=50)
    return out
