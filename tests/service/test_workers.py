"""`crops serve --workers 2`: real multi-process servers.

- least-conn (default): the parent hands each connection to the worker with the fewest open ones,
  so keep-alive connections split evenly and a worker whose connections closed gets the next ones;
  a killed worker is restarted (and pinned again with --pin); SIGTERM stops everything.
- reuse-port: one SO_REUSEPORT socket per worker, connections spread by the kernel's hash.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from loadtest.ready import wait_ready, wait_workers
from tests.service.conftest import free_port


def _start(bundle: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "CROPS_CACHE": "none"}
    env.pop("CROPS_EXPERIMENTS", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "crops", "serve", "--bundle", str(bundle), "--port", str(port), "--workers", "2",
         *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture
def least_conn(tiny_bundle: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    proc, url = _start(tiny_bundle, "--pin")
    try:
        wait_ready(url, proc)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _pid(client: httpx.Client) -> int:
    r = client.get("/info")
    assert r.status_code == 200
    return int(r.json()["worker_pid"])


def test_least_conn_splits_keepalive_connections_evenly_and_refills_the_emptier_worker(
    least_conn: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, url = least_conn
    workers = wait_workers(url, 2)
    clients = [httpx.Client(base_url=url, timeout=10) for _ in range(8)]
    try:
        pids = [_pid(c) for c in clients]
        assert collections.Counter(pids) == {p: 4 for p in workers}, pids
        # each worker froze its loaded heap (gc.freeze, the default): full collections skip the bundle
        assert all(c.get("/info").json()["gc_frozen_objects"] > 0 for c in clients)
        for c in clients:  # each connection stays on its worker and serves retrievals
            r = c.post("/retrieve", json={"query": "cat video", "top_k": 3})
            assert r.status_code == 200 and len(r.json()["candidates"]) == 3
        assert [_pid(c) for c in clients] == pids
        # close three of one worker's connections: the next three connections all go to that worker
        emptied = pids[0]
        for i in [i for i, p in enumerate(pids) if p == emptied][:3]:
            clients[i].close()
        time.sleep(0.5)
        fresh = [httpx.Client(base_url=url, timeout=10) for _ in range(3)]
        clients += fresh
        assert [_pid(c) for c in fresh] == [emptied] * 3
    finally:
        for c in clients:
            c.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_least_conn_restarts_a_killed_worker(least_conn: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, url = least_conn
    victim, survivor = sorted(wait_workers(url, 2))
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 120
    replacement: set[int] = set()
    while time.monotonic() < deadline and not replacement:
        with httpx.Client(base_url=url, timeout=10) as a, httpx.Client(base_url=url, timeout=10) as b:
            # the survivor keeps serving while the replacement loads
            assert a.post("/retrieve", json={"query": "dog"}).status_code == 200
            replacement = {_pid(a), _pid(b)} - {victim, survivor}
        time.sleep(0.5)
    assert replacement, "the killed worker was not replaced"
    assert proc.poll() is None
    # --pin: each worker (the replacement too) runs on one core of its own
    cores = sorted(os.sched_getaffinity(proc.pid))
    pinned = [os.sched_getaffinity(p) for p in (survivor, *replacement)]
    assert all(len(c) == 1 for c in pinned), pinned
    if len(cores) >= 2:
        assert pinned[0] != pinned[1]
    children = psutil.Process(proc.pid).children()
    workers = [c for c in children if c.pid in {survivor, *replacement}]
    helpers = [c for c in children if c.pid not in {survivor, *replacement}]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    # the supervisor joins its workers before it exits: none may outlive it
    assert len(workers) == 2 and not any(_alive(w) for w in workers)
    # multiprocessing's resource tracker reads the parent's pipe to EOF, so it exits just after it
    _, left = psutil.wait_procs(helpers, timeout=10)
    assert not any(_alive(h) for h in left), left


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_unknown_balance_is_a_one_line_error(tiny_bundle: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "crops", "serve", "--bundle", str(tiny_bundle), "--workers", "2", "--balance", "dns"],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 2
    assert "--balance takes one of least-conn, reuse-port, shared" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "crops", "serve", "--bundle", str(tiny_bundle), "--workers", "2", "--balance", "shared",
         "--pin"],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 2 and "--pin needs --balance least-conn or reuse-port" in r.stderr


def test_reuse_port_workers_share_connections_and_stop_together(tiny_bundle: Path) -> None:
    proc, url = _start(tiny_bundle, "--balance", "reuse-port")
    clients: list[httpx.Client] = []
    try:
        wait_ready(url, proc)
        deadline = time.monotonic() + 120
        ready = 0
        port = int(url.rsplit(":", 1)[1])
        workers: list[psutil.Process] = []
        while ready < 2 and time.monotonic() < deadline:  # both workers listening
            workers = [c for c in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]
            ready = sum(1 for w in workers if any(x.status == "LISTEN" for x in w.net_connections()))
            time.sleep(0.5)
        assert ready == 2, "two workers should each listen on the port"
        # 16 keep-alive connections: hashed over 2 sockets, all 16 on one worker has probability 2 / 2**16
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


def test_pick_prefers_fewest_connections_then_the_worker_served_longest_ago() -> None:
    """Supervisor.pick on hand-made slots (no processes): a stale count must not send two fresh
    connections to one worker."""
    import socket as socketlib

    from service.dispatch import Supervisor, _Slot

    sup = Supervisor("127.0.0.1", 0, 2, "least-conn")
    pairs = [socketlib.socketpair() for _ in range(2)]
    try:
        a, b = (_Slot(i, proc=None, chan=pairs[i][0], ready=True) for i in range(2))
        sup.slots = [a, b]
        a.open_conns = 1  # A's last connection closed, but its report has not arrived yet
        first = sup.pick()
        assert first is b
        b.open_conns += 1
        second = sup.pick()  # tie at 1: B was just served, so A
        assert second is a
        a.open_conns += 1
        b.open_conns = a.open_conns = 0
        order = []
        for _ in range(6):  # no closes in between: strictly alternating
            s = sup.pick()
            assert s is not None
            s.open_conns += 1
            order.append(s.index)
        assert order in ([0, 1, 0, 1, 0, 1], [1, 0, 1, 0, 1, 0])
        b.ready = False
        assert sup.pick() is a  # only ready workers get connections
    finally:
        for x, y in pairs:
            x.close()
            y.close()
