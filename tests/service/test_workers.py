"""`crops serve` as operators run it (subprocesses, uvicorn's workers): reload reaching every worker
without Redis, draining on SIGTERM, slow headers cut, a port clash, nginx least_conn in front."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import free_port, relabel_bundle

TOKEN = "workers-token"
ADMIN = {"x-crops-admin-token": TOKEN}
ROOT = Path(__file__).resolve().parents[2]


class Served:
    """``crops serve`` in a subprocess; stopped (SIGTERM, then kill) on exit."""

    def __init__(self, bundle: Path, workers: int = 1, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "CROPS_ADMIN_TOKEN": TOKEN, "CROPS_DEADLINE_MS": "5000", **env}
        for k in ("PROMETHEUS_MULTIPROC_DIR", "CROPS_STATE_DIR", "CROPS_REDIS_URL"):
            full_env.pop(k, None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "crops", "serve", "--bundle", str(bundle), "--port", str(self.port),
             "--workers", str(workers)],
            env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.time() < deadline, "crops serve did not become ready"
            time.sleep(0.2)
        if workers > 1:  # every worker loaded: fresh connections reach each of them
            seen: set[str] = set()
            while len(seen) < workers:
                assert time.time() < deadline, f"only workers {seen} answered"
                with httpx.Client(timeout=5) as c:
                    r = c.get(f"{self.url}/info", headers=ADMIN)
                    if r.status_code == 200:
                        seen.add(r.json()["worker"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture()
def served(tiny_bundle: Path) -> Iterator[type[Served]]:
    started: list[Served] = []

    class Tracked(Served):
        def __init__(self, bundle: Path = tiny_bundle, workers: int = 1, **env: str) -> None:
            super().__init__(bundle, workers, **env)
            started.append(self)

    yield Tracked
    for s in started:
        s.stop()


# 2 ------------------------------------------------------------------------------------------------
def test_reload_without_redis_reaches_every_worker_and_reports_them(
    served: type[Served], tiny_bundle: Path, tmp_path: Path
) -> None:
    nxt = relabel_bundle(tiny_bundle, tmp_path / "next", "next-bundle", "n-")
    srv = served(workers=2)
    r = httpx.post(f"{srv.url}/admin/reload", json={"bundle": "default", "path": str(nxt)}, headers=ADMIN, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["converged"] is True and len(body["workers"]) == 2, body
    assert all(w["converged"] for w in body["workers"].values()), body
    for i in range(20):  # a fresh connection each: whichever worker answers serves the new bundle
        got = httpx.post(f"{srv.url}/retrieve", json={"query": f"cat {i}", "top_k": 3}, timeout=10).json()
        assert got["bundle_id"] == "next-bundle", got
        assert all(c["video_id"].startswith("n-") for c in got["candidates"])


# 6 ------------------------------------------------------------------------------------------------
def test_sigterm_drains_keepalive_connections_without_dropping_requests(served: type[Served]) -> None:
    srv = served(workers=2, CROPS_DRAIN_S="3")
    results: list[tuple[float, str]] = []
    stop = threading.Event()

    def client(k: int) -> None:
        with httpx.Client(base_url=srv.url, timeout=10) as c:  # keep-alive, like a ranking fleet
            i = 0
            while not stop.is_set():
                try:
                    r = c.post("/retrieve", json={"query": f"drain {k} {i % 5}", "top_k": 3})
                    results.append((time.monotonic(), str(r.status_code)))
                except httpx.HTTPError as exc:
                    results.append((time.monotonic(), type(exc).__name__))
                i += 1

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    t_term = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    # Load balancers stop sending once /readyz says 503. The supervisor forwards the signal to its
    # workers, which takes a moment on a loaded box: poll (well inside the 3 s drain) instead of
    # sleeping a fixed time. Each GET is a fresh connection, so either worker may answer.
    ready = [httpx.get(f"{srv.url}/readyz", timeout=5).status_code]
    while ready[-1] != 503 and time.monotonic() < t_term + 2.0:
        time.sleep(0.05)
        ready.append(httpx.get(f"{srv.url}/readyz", timeout=5).status_code)
    assert ready[-1] == 503, ready
    time.sleep(max(0.0, t_term + 2.3 - time.monotonic()))
    stop.set()
    for t in threads:
        t.join(timeout=15)
    window = [s for t, s in results if t_term <= t <= t_term + 2.3]
    assert len(window) > 20, len(window)
    failures = [s for s in window if s != "200"]
    assert not failures, f"{len(failures)} of {len(window)} requests failed while draining: {set(failures)}"
    assert srv.proc.wait(timeout=30) == 0


# 4 ------------------------------------------------------------------------------------------------
def test_slow_header_connections_are_closed(served: type[Served]) -> None:
    srv = served(CROPS_HEADER_TIMEOUT_S="1")
    socks = []
    for _ in range(50):
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never ends its headers
        socks.append(s)
    idle = socket.create_connection(("127.0.0.1", srv.port), timeout=10)  # sends nothing at all
    socks.append(idle)
    t0 = time.monotonic()
    for s in socks:
        assert s.recv(1024) == b""  # closed by the server
        s.close()
    assert time.monotonic() - t0 < 6.0
    assert httpx.get(f"{srv.url}/healthz", timeout=5).status_code == 200


# 13 -----------------------------------------------------------------------------------------------
def test_port_clash_is_one_error_line_and_exit_2(tiny_bundle: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        proc = subprocess.run(
            [sys.executable, "-m", "crops", "serve", "--bundle", str(tiny_bundle), "--port", str(port)],
            capture_output=True, text=True, timeout=120, env=env,
        )
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "serving on" not in proc.stdout
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert "Traceback" not in proc.stderr
    assert lines[-1].startswith("error: ") and str(port) in lines[-1], proc.stderr


# 5 ------------------------------------------------------------------------------------------------
def test_nginx_least_conn_spreads_fresh_connections_over_replicas(served: type[Served], tmp_path: Path) -> None:
    """The balancer the deployment ships (deploy/nginx/nginx.conf) in front of two replicas."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    a, b = served(), served()
    conf = (ROOT / "deploy" / "nginx" / "nginx.conf").read_text()
    conf = re.sub(r"server crops:8000[^;]*;", f"server 127.0.0.1:{a.port}; server 127.0.0.1:{b.port};", conf)
    port = free_port()
    conf = conf.replace("listen 8080", f"listen 127.0.0.1:{port}")
    conf = conf.replace("/var/run/nginx.pid", str(tmp_path / "nginx.pid"))
    (tmp_path / "logs").mkdir()
    (tmp_path / "nginx.conf").write_text(conf)
    proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 10
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline
            time.sleep(0.1)
        workers = []
        for _ in range(8):  # sequential fresh connections
            with httpx.Client(timeout=5) as c:
                workers.append(c.get(f"{url}/info", headers=ADMIN).json()["worker"])
        assert len(set(workers)) == 2 and min(workers.count(w) for w in set(workers)) >= 3, workers
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# connections over workers -------------------------------------------------------------------------
def test_keepalive_connections_opened_at_once_land_on_every_worker(served: type[Served]) -> None:
    """A client pool opens its connections in a burst, before any worker wakes up to accept. Each
    worker accepts on its own SO_REUSEPORT socket, so the kernel spreads them; with one shared socket
    the first worker to wake took every pending connection (31 of 32 seen under load)."""
    import http.client
    import json

    srv = served(workers=2)
    conns = [http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10) for _ in range(32)]
    try:
        for c in conns:  # all handshakes done by the kernel before any request is read
            c.connect()
        workers = []
        for c in conns:
            c.request("GET", "/info", headers=ADMIN)
            workers.append(json.loads(c.getresponse().read())["worker"])
        counts = sorted(workers.count(w) for w in set(workers))
        # hashing 32 connections over 2 sockets: fewer than 6 on one has probability < 1e-4
        assert len(counts) == 2 and counts[0] >= 6, counts
        for c, w in zip(conns, workers, strict=True):  # keep-alive: a connection stays with its worker
            c.request("GET", "/info", headers=ADMIN)
            assert json.loads(c.getresponse().read())["worker"] == w
    finally:
        for c in conns:
            c.close()


def test_a_worker_that_dies_is_replaced(served: type[Served]) -> None:
    import psutil

    srv = served(workers=2)
    children = psutil.Process(srv.proc.pid).children()
    workers = [p for p in children if p.cmdline() and "multiprocessing" in " ".join(p.cmdline())
               and "resource_tracker" not in " ".join(p.cmdline())]
    assert len(workers) == 2, [p.cmdline() for p in children]
    workers[0].kill()
    deadline = time.time() + 120
    while True:  # a new worker starts, loads the bundle and answers
        alive = [p for p in psutil.Process(srv.proc.pid).children()
                 if p.pid != workers[0].pid and "resource_tracker" not in " ".join(p.cmdline())]
        seen: set[str] = set()
        for _ in range(20):
            with httpx.Client(timeout=5) as c:
                r = c.get(f"{srv.url}/info", headers=ADMIN)
                if r.status_code == 200:
                    seen.add(r.json()["worker"])
        if len(alive) == 2 and len(seen) == 2:
            break
        assert time.time() < deadline, (alive, seen)
        time.sleep(0.5)
    assert srv.proc.poll() is None


def test_a_port_shared_by_so_reuseport_is_a_clash_too(tiny_bundle: Path) -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        proc = subprocess.run(
            [sys.executable, "-m", "crops", "serve", "--bundle", str(tiny_bundle), "--port", str(port),
             "--workers", "2"],
            capture_output=True, text=True, timeout=120, env=env,
        )
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert lines[-1].startswith("error: ") and str(port) in lines[-1], proc.stderr
