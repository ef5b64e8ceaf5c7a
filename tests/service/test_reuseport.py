"""`crops serve --workers 2 --reuse-port`: a real multi-process server whose workers each own an
SO_REUSEPORT socket; connections spread over both workers and SIGTERM stops them all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from tests.service.conftest import free_port


def test_reuse_port_workers_share_connections_and_stop_together(tiny_bundle: Path) -> None:
    port = free_port()
    env = {**os.environ, "CROPS_CACHE": "none"}
    env.pop("CROPS_EXPERIMENTS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "crops", "serve", "--bundle", str(tiny_bundle), "--port", str(port),
         "--workers", "2", "--reuse-port"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    clients: list[httpx.Client] = []
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        ready = 0
        while ready < 2 and time.monotonic() < deadline:  # both workers listening
            workers = [c for c in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]
            ready = sum(1 for w in workers if any(x.status == "LISTEN" for x in w.net_connections()))
            time.sleep(0.5)
        assert ready == 2, "two workers should each listen on the port"
        # 16 keep-alive connections, one per client: hashed over 2 sockets, all 16 on one worker has
        # probability 2 / 2**16
        for _ in range(16):
            c = httpx.Client(base_url=url, timeout=10.0)
            r = c.post("/retrieve", json={"query": "cat video", "top_k": 5})
            assert r.status_code == 200 and len(r.json()["candidates"]) == 5
            clients.append(c)
        per_worker = [
            sum(1 for x in w.net_connections() if x.status == "ESTABLISHED" and x.laddr.port == port)
            for w in workers
        ]
        assert sum(per_worker) == 16 and min(per_worker) > 0, per_worker
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    finally:
        for c in clients:
            c.close()
        if proc.poll() is None:
            proc.kill()
