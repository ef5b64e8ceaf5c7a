"""Overload and process-model benchmarks of the service (real `crops serve` processes, real HTTP).

``overload``: measure capacity (closed loop, 32 keep-alive connections, every query a cache miss, a
deadline no request hits), then offer ``--factor`` × capacity open-loop (requests sent on schedule
whatever happened before, over ``--connections`` keep-alive connections, as a ranking fleet does) to
a server running with its deadline = the SLO. It reports goodput against capacity, the latency of the
admitted requests, how fast the excess is refused (measured at the client) and whether every refusal
is a 503 with Retry-After; markdown + JSON + PNG under ``--out``. ``--front nginx`` puts
deploy/nginx/nginx.conf (least_conn, ``max_conns`` per replica: the first line of shedding) in front of
``--replicas`` one-worker `crops serve` replicas; the capacity ramp runs without ``max_conns`` (the
replicas' own deadline-aware admission only), the overload run with it.

``process-models``: one run, same load (closed loop, 32 connections, cache misses), three ways to put
two worker processes on this box: `crops serve --workers 2` (uvicorn's workers, one shared socket),
nginx least_conn in front of two one-worker replicas (deploy/nginx/nginx.conf), and, when
``--old-tree`` points at a checkout that still has it, the removed home-made least-conn dispatcher.

    python -m benchmarks.overload overload --bundle runs/b --out docs/results/overload
    python -m benchmarks.overload overload --bundle runs/b --front nginx --max-conns 2,4,6 --out docs/results/overload
    python -m benchmarks.overload process-models --bundle runs/b --old-tree /tmp/old --out docs/results/process_models
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("cat", "video", "pasta", "guitar", "minecraft", "lofi", "piano", "dog", "recipe", "speedrun", "cover")


@dataclass
class Shot:
    t: float  # scheduled send time, s since start
    status: int  # 0: transport error
    ms: float
    retry_after: bool
    balancer: bool = False  # refused by nginx (X-Crops-Shed), not by a replica


def _bodies(n: int, seed: int) -> list[bytes]:
    """Distinct queries (cache misses), each a plausible short query."""
    out = []
    for i in range(n):
        words = [WORDS[(i * 7 + seed + k * 3) % len(WORDS)] for k in range(3)]
        out.append(json.dumps({"query": f"{' '.join(words)} {seed}-{i}", "top_k": 100}).encode())
    return out


async def _read(reader: asyncio.StreamReader) -> tuple[int, bool, bool]:
    """(status, has Retry-After, refused by the balancer)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, retry, balancer = 0, False, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"retry-after":
            retry = True
        elif name == b"x-crops-shed":
            balancer = True
    await reader.readexactly(length)
    return status, retry, balancer


def _request(host: str, port: int, body: bytes) -> bytes:
    return (
        f"POST /retrieve HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _send(conn: list[Any], host: str, port: int, body: bytes, timeout: float) -> tuple[int, bool, bool]:
    reader, writer = conn
    try:
        writer.write(_request(host, port, body))
        return await asyncio.wait_for(_read(reader), timeout)
    except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.TimeoutError):
        writer.close()
        with contextlib.suppress(OSError):
            conn[:] = await asyncio.open_connection(host, port)
        return 0, False, False


async def closed_loop(url: str, connections: int, duration: float, seed: int) -> list[Shot]:
    """Each connection sends its next request when the previous answer arrives."""
    host, port = url.split("//")[1].split(":")[0], int(url.rsplit(":", 1)[1])
    bodies = _bodies(200_000, seed)
    shots: list[Shot] = []
    start = time.perf_counter()
    counter = iter(range(len(bodies)))

    async def worker() -> None:
        conn: list[Any] = list(await asyncio.open_connection(host, int(port)))
        while (t0 := time.perf_counter()) - start < duration:
            status, retry, edge = await _send(conn, host, int(port), bodies[next(counter)], 10.0)
            shots.append(Shot(t0 - start, status, (time.perf_counter() - t0) * 1e3, retry, edge))
        conn[1].close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return shots


async def open_loop(url: str, rate: float, duration: float, connections: int, seed: int) -> tuple[list[Shot], float]:
    """Request i leaves at start + i/rate on a free connection (a wait for one counts in its latency)."""
    host, port = url.split("//")[1].split(":")[0], int(url.rsplit(":", 1)[1])
    bodies = _bodies(int(rate * duration) + 1, seed)
    pool: asyncio.Queue[list[Any]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(list(await asyncio.open_connection(host, port)))
    shots: list[Shot] = []
    lags: list[float] = []
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()

    async def fire(i: int, scheduled: float) -> None:
        t0 = time.perf_counter()
        conn = await pool.get()
        status, retry, edge = await _send(conn, host, port, bodies[i], 10.0)
        pool.put_nowait(conn)
        shots.append(Shot(scheduled - start, status, (time.perf_counter() - t0) * 1e3, retry, edge))

    for i in range(int(rate * duration)):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append(time.perf_counter() - scheduled)
        task = asyncio.create_task(fire(i, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=15)
    while not pool.empty():
        pool.get_nowait()[1].close()
    lags.sort()
    return shots, lags[int(0.99 * (len(lags) - 1))] * 1e3 if lags else 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(q / 100 * len(v)) - 1))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A `crops serve` subprocess (from this tree, or from ``tree`` when given)."""

    def __init__(
        self,
        bundle: Path,
        workers: int,
        env: dict[str, str],
        tree: Path | None = None,
        extra: list[str] | None = None,
        wait: bool = True,
        nice: int = 0,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = {k: v for k, v in os.environ.items() if not k.startswith("CROPS_") and k != "PROMETHEUS_MULTIPROC_DIR"}
        full.update(env)
        if tree is not None:
            full["PYTHONPATH"] = str(tree)
        self.proc = subprocess.Popen(
            [
                *(["nice", "-n", str(nice)] if nice else []),
                sys.executable,
                "-m",
                "crops",
                "serve",
                "--bundle",
                str(bundle),
                "--port",
                str(self.port),
                "--workers",
                str(workers),
                *(extra or []),
            ],
            env=full,
            cwd=str(tree or ROOT),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.workers = workers
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.time() + 180
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as r:
                if r.status == 200:
                    break
            if self.proc.poll() is not None:
                raise RuntimeError(f"crops serve exited: {self.proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            if time.time() > deadline:
                raise RuntimeError("crops serve not ready")
            time.sleep(0.3)
        time.sleep(2.0 * self.workers)  # every worker loaded

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def deployed_max_conns() -> int:
    """The ``max_conns`` of deploy/nginx/nginx.conf's upstream server line (0: none)."""
    conf = (ROOT / "deploy" / "nginx" / "nginx.conf").read_text()
    m = re.search(r"server crops:8000 [^;]*max_conns=(\d+)", conf)
    return int(m.group(1)) if m else 0


class Nginx:
    """nginx with deploy/nginx/nginx.conf, its upstream pointed at local replicas (``max_conns`` each; 0: none)."""

    def __init__(self, ports: list[int], max_conns: int = 0) -> None:
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        self.dir = Path(tempfile.mkdtemp(prefix="crops-nginx-"))
        (self.dir / "logs").mkdir()
        conf = (ROOT / "deploy" / "nginx" / "nginx.conf").read_text()
        limit = f" max_conns={max_conns}" if max_conns > 0 else ""
        servers = " ".join(f"server 127.0.0.1:{p} max_fails=0{limit};" for p in ports)
        conf, n = re.subn(r"server crops:8000[^;]*;", servers, conf)
        if n != 1:
            raise ValueError("deploy/nginx/nginx.conf: expected one 'server crops:8000' upstream line")
        self.port = free_port()
        conf = conf.replace("listen 8080", f"listen 127.0.0.1:{self.port}")
        conf = conf.replace("worker_processes auto", "worker_processes 1")  # 2 cores: the replicas need them
        conf = conf.replace("/var/run/nginx.pid", str(self.dir / "nginx.pid"))
        (self.dir / "nginx.conf").write_text(conf)
        self.url = f"http://127.0.0.1:{self.port}"
        # stderr to a file, never an unread pipe: nginx logs every refusal ("no live upstreams") and
        # would block on a full pipe
        with (self.dir / "stderr").open("wb") as err:
            self.proc = subprocess.Popen(
                [exe, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"), "-g", "daemon off;"],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        time.sleep(1.0)
        if self.proc.poll() is not None:
            raise RuntimeError(f"nginx exited: {(self.dir / 'stderr').read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Front:
    """What the load generator talks to: one `crops serve --workers N`, or (``--front nginx``) nginx in
    front of ``--replicas`` one-worker `crops serve` replicas."""

    def __init__(self, a: argparse.Namespace, env: dict[str, str], max_conns: int = 0) -> None:
        self.nginx: Nginx | None = None
        if a.front == "nginx":
            self.servers = [Server(a.bundle, 1, env, wait=False, nice=a.server_nice) for _ in range(a.replicas)]
            for srv in self.servers:
                srv.wait_ready()
            self.nginx = Nginx([srv.port for srv in self.servers], max_conns)
            self.url = self.nginx.url
        else:
            self.servers = [Server(a.bundle, a.workers, env, nice=a.server_nice)]
            self.url = self.servers[0].url

    def limit(self, max_conns: int) -> None:
        """nginx restarted with ``max_conns`` per replica (the replicas keep running)."""
        if self.nginx is not None:
            self.nginx.stop()
            self.nginx = Nginx([srv.port for srv in self.servers], max_conns)
            self.url = self.nginx.url

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for srv in self.servers:
            srv.stop()


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def summarize(shots: list[Shot], duration: float) -> dict[str, Any]:
    ok = [s.ms for s in shots if s.status == 200]
    shed = [s for s in shots if s.status == 503]
    edge = [s.ms for s in shed if s.balancer]
    app = [s.ms for s in shed if not s.balancer]
    return {
        "sent": len(shots),
        "ok": len(ok),
        "goodput_rps": round(len(ok) / duration, 1),
        "ok_p50_ms": round(pct(ok, 50), 2),
        "ok_p99_ms": round(pct(ok, 99), 2),
        "shed": len(shed),
        "shed_p50_ms": round(pct([s.ms for s in shed], 50), 2),
        "shed_p99_ms": round(pct([s.ms for s in shed], 99), 2),
        "shed_with_retry_after": sum(s.retry_after for s in shed),
        "shed_by_balancer": len(edge),
        "shed_by_balancer_p99_ms": round(pct(edge, 99), 2) if edge else None,
        "shed_by_replica": len(app),
        "shed_by_replica_p99_ms": round(pct(app, 99), 2) if app else None,
        "other": {str(k): v for k, v in _count(s.status for s in shots if s.status not in (200, 503)).items()},
    }


def _count(values: Any) -> dict[int, int]:
    out: dict[int, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def overload(a: argparse.Namespace) -> dict[str, Any]:
    base = {"CROPS_CACHE": "none", "CROPS_GC_FREEZE": "true", "CROPS_MAX_BATCH": str(a.max_batch)}
    if a.precision:
        base["CROPS_ENCODER_PRECISION"] = a.precision
    limits: list[int | None] = [None]
    if a.front == "nginx":
        limits = [deployed_max_conns()] if a.max_conns is None else [int(x) for x in a.max_conns.split(",")]
    print(
        f"throughput: closed loop, {a.connections_capacity} connections, {a.capacity_s:g} s, cache misses", flush=True
    )
    srv = Front(a, {**base, "CROPS_DEADLINE_MS": "10000", "CROPS_MAX_QUEUE": "100000"})
    try:
        _run(closed_loop(srv.url, a.connections_capacity, 2.0, seed=1))  # warm-up
        cap_shots = _run(closed_loop(srv.url, a.connections_capacity, a.capacity_s, seed=2))
    finally:
        srv.stop()
    closed = summarize(cap_shots, a.capacity_s)
    print(f"  {closed['goodput_rps']} req/s (p50 {closed['ok_p50_ms']} ms, p99 {closed['ok_p99_ms']} ms)", flush=True)
    # Capacity = the highest open-loop rate served within the SLO (p99 <= SLO, < 1 % shed, all of it served).
    srv = Front(a, {**base, "CROPS_DEADLINE_MS": str(a.slo_ms)})
    ramp: list[dict[str, Any]] = []
    capacity = 0.0
    runs: list[tuple[dict[str, Any], list[Shot]]] = []
    try:
        _run(open_loop(srv.url, 0.3 * closed["goodput_rps"], 2.0, a.connections, seed=3))  # warm-up
        for i, f in enumerate((0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95)):
            rate = f * closed["goodput_rps"]
            shots, _ = _run(open_loop(srv.url, rate, a.ramp_s, a.connections, seed=10 + i))
            s = summarize(shots, a.ramp_s)
            ok = s["ok_p99_ms"] <= a.slo_ms and s["shed"] <= 0.01 * s["sent"] and s["ok"] >= 0.97 * s["sent"]
            ramp.append({"rate": round(rate, 1), **s, "within_slo": ok})
            print(
                f"  ramp {rate:6.1f} req/s: goodput {s['goodput_rps']:6.1f}, p99 {s['ok_p99_ms']:7.2f} ms, "
                f"shed {s['shed']}  {'ok' if ok else 'over'}",
                flush=True,
            )
            if not ok:
                break
            capacity = s["goodput_rps"]
        if capacity <= 0:
            print(f"  no rate meets p99 <= {a.slo_ms:g} ms here: overload run at 3x the lowest ramp rate", flush=True)
        rate = a.factor * (capacity or ramp[0]["rate"])
        for k, limit in enumerate(limits):
            if limit is not None:
                srv.limit(limit)
                print(f"nginx: max_conns={limit} per replica", flush=True)
                _run(open_loop(srv.url, 0.3 * closed["goodput_rps"], 2.0, a.connections, seed=5))  # warm-up
            print(
                f"overload: open loop at {rate:.0f} req/s for {a.duration:g} s, {a.connections} connections", flush=True
            )
            shots, lag_p99 = _run(open_loop(srv.url, rate, a.duration, a.connections, seed=40 + k))
            one = summarize(shots, a.duration)
            one.update(
                {
                    "max_conns": limit,
                    "generator_lag_p99_ms": round(lag_p99, 2),
                    "goodput_over_capacity": round(one["goodput_rps"] / capacity, 3) if capacity else None,
                    "verdict": {
                        "goodput >= 0.9 x capacity": bool(capacity) and one["goodput_rps"] >= 0.9 * capacity,
                        "admitted p99 <= 2 x SLO": one["ok_p99_ms"] <= 2 * a.slo_ms,
                        "shed p99 < 5 ms": one["shed_p99_ms"] < 5.0,
                        "every 503 has Retry-After": one["shed_with_retry_after"] == one["shed"],
                        "no other status": not one["other"],
                    },
                }
            )
            print(
                f"  goodput {one['goodput_rps']} req/s ({one['goodput_over_capacity']} x capacity), admitted p99 "
                f"{one['ok_p99_ms']} ms, shed {one['shed']} p50/p99 {one['shed_p50_ms']}/{one['shed_p99_ms']} ms",
                flush=True,
            )
            runs.append((one, shots))
    finally:
        srv.stop()
    # With several max_conns (a sizing sweep) the headline is the one meeting most goals, then the most goodput;
    # every run is in the report.
    res, shots = max(runs, key=lambda r: (sum(r[0]["verdict"].values()), r[0]["goodput_rps"]))
    res = dict(res)
    res.update(
        {
            "capacity_rps": capacity,
            "closed_loop": closed,
            "ramp": ramp,
            "ramp_s": a.ramp_s,
            "offered_rps": round(rate, 1),
            "factor": a.factor,
            "slo_ms": a.slo_ms,
            "workers": a.workers,
            "front": a.front,
            "replicas": a.replicas if a.front == "nginx" else None,
            "precision": a.precision or "fp32",
            "bundle": str(a.bundle),
            "server_nice": a.server_nice,
            "connections": a.connections,
            "duration_s": a.duration,
            "sweep": [r for r, _ in runs] if len(runs) > 1 else [],
            "nproc": os.cpu_count(),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }
    )
    _plot_overload(shots, res, a.out.with_suffix(".png"))
    return res


def _plot_overload(shots: list[Shot], res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ok = [s for s in shots if s.status == 200]
    shed = [s for s in shots if s.status == 503]
    ax1.scatter([s.t for s in ok], [s.ms for s in ok], s=2, label="200 (admitted)")
    ax1.scatter([s.t for s in shed], [s.ms for s in shed], s=2, label="503 (shed)", alpha=0.5)
    ax1.axhline(2 * res["slo_ms"], color="k", ls="--", lw=0.8, label="2 x SLO")
    ax1.set_xlabel("s since start")
    ax1.set_ylabel("latency (ms)")
    ax1.set_yscale("log")
    ax1.legend(markerscale=4)
    ax1.set_title(f"offered {res['offered_rps']:.0f} req/s = {res['factor']:g} x capacity")
    secs = int(res["duration_s"])
    per_s = [sum(1 for s in ok if int(s.t) == i) for i in range(secs)]
    ax2.plot(range(secs), per_s, label="goodput (200/s)")
    ax2.axhline(res["capacity_rps"], color="k", ls="--", lw=0.8, label="capacity (within the SLO)")
    ax2.axhline(0.9 * res["capacity_rps"], color="r", ls=":", lw=0.8, label="0.9 x capacity")
    ax2.set_xlabel("s since start")
    ax2.set_ylabel("requests/s")
    ax2.set_ylim(bottom=0)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def process_models(a: argparse.Namespace) -> dict[str, Any]:
    """All three set up at once (idle ones cost nothing), then measured in turn, round by round, so that
    the shared box's drifting load falls on all of them alike."""
    base = {
        "CROPS_CACHE": "none",
        "CROPS_DEADLINE_MS": "10000",
        "CROPS_MAX_QUEUE": "100000",
        "CROPS_MAX_IN_FLIGHT": "100000",
    }
    rows: dict[str, Any] = {}
    started: list[Any] = []
    try:
        setups: list[tuple[str, str]] = []
        srv = Server(a.bundle, 2, base)
        started.append(srv)
        setups.append(("crops serve --workers 2 (uvicorn)", srv.url))
        reps = [Server(a.bundle, 1, base), Server(a.bundle, 1, base)]
        started += reps
        ngx = Nginx([r.port for r in reps], max_conns=0)
        started.append(ngx)
        setups.append(("nginx least_conn + 2 x crops serve", ngx.url))
        if a.old_tree is not None:
            old = Server(a.bundle, 2, base, tree=a.old_tree, extra=["--balance", "least-conn"])
            started.append(old)
            setups.append(("old dispatcher (--balance least-conn)", old.url))
        for _, url in setups:
            _run(closed_loop(url, a.connections_capacity, 2.0, seed=11))
        for rnd in range(a.rounds):
            for name, url in setups:
                shots = _run(closed_loop(url, a.connections_capacity, a.capacity_s, seed=20 + rnd))
                s = summarize(shots, a.capacity_s)
                rows.setdefault(name, []).append(s)
                print(
                    f"  {name:40s} round {rnd}: {s['goodput_rps']:7.1f} req/s  p50 {s['ok_p50_ms']:6.2f} ms  "
                    f"p99 {s['ok_p99_ms']:7.2f} ms  errors {s['sent'] - s['ok']}",
                    flush=True,
                )
    finally:
        for x in reversed(started):
            x.stop()
    means = {k: round(sum(s["goodput_rps"] for s in v) / len(v), 1) for k, v in rows.items()}
    return {
        "connections": a.connections_capacity,
        "seconds": a.capacity_s,
        "rounds": rows,
        "mean_rps": means,
        "nproc": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def profile(a: argparse.Namespace) -> dict[str, Any]:
    """What one query costs here: encode and search in process (one thread) at batch 1 and 4, and the
    round trip of one keep-alive connection through `crops serve` (and nginx with ``--front nginx``):
    the numbers an SLO and nginx's max_conns are sized from."""
    from core.settings import limit_native_threads

    limit_native_threads(1)
    import faiss

    from service.engine import Retriever

    faiss.omp_set_num_threads(1)
    queries = [json.loads(b)["query"] for b in _bodies(400, 7)]
    r = Retriever(a.bundle, intra_op_threads=1, precision=a.precision)
    for _ in range(20):
        r.encode(queries[:1])
    enc, srch, enc4, srch4 = [], [], [], []
    for q in queries[:300]:
        t0 = time.perf_counter()
        v = r.encode([q])
        t1 = time.perf_counter()
        r.search_vectors(v, 100)
        enc.append((t1 - t0) * 1e3)
        srch.append((time.perf_counter() - t1) * 1e3)
    for i in range(0, 300, 4):
        t0 = time.perf_counter()
        v = r.encode(queries[i : i + 4])
        t1 = time.perf_counter()
        r.search_vectors(v, 100)
        enc4.append((t1 - t0) * 1e3)
        srch4.append((time.perf_counter() - t1) * 1e3)
    res: dict[str, Any] = {
        "bundle": str(a.bundle),
        "precision": r.precision,
        "ntotal": int(r.index.ntotal),
        "in_process_ms": {
            "encode_b1": [round(pct(enc, 50), 2), round(pct(enc, 99), 2)],
            "search_b1": [round(pct(srch, 50), 2), round(pct(srch, 99), 2)],
            "encode_b4": [round(pct(enc4, 50), 2), round(pct(enc4, 99), 2)],
            "search_b4": [round(pct(srch4, 50), 2), round(pct(srch4, 99), 2)],
        },
    }
    del r
    env = {"CROPS_CACHE": "none", "CROPS_DEADLINE_MS": "10000"}
    if a.precision:
        env["CROPS_ENCODER_PRECISION"] = a.precision
    srv = Front(a, env)
    try:
        _run(closed_loop(srv.url, 1, 2.0, seed=1))
        shots = _run(closed_loop(srv.url, 1, a.capacity_s, seed=2))
    finally:
        srv.stop()
    ok = [s.ms for s in shots if s.status == 200]
    res["round_trip_ms"] = [round(pct(ok, 50), 2), round(pct(ok, 99), 2)]
    res["round_trip_front"] = a.front
    res["nproc"] = os.cpu_count()
    res["loadavg_1m"] = round(os.getloadavg()[0], 2)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["overload", "process-models", "profile"])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="path without suffix: .json, .md (and .png) are written")
    p.add_argument("--workers", type=int, default=1, help="worker processes of the one server (--front none)")
    p.add_argument("--front", choices=["none", "nginx"], default="none", help="nginx least_conn in front of replicas")
    p.add_argument("--replicas", type=int, default=2, help="one-worker replicas behind nginx (--front nginx)")
    p.add_argument(
        "--max-conns",
        default=None,
        help="nginx max_conns per replica in the overload run (default: deploy/nginx/nginx.conf's; 0: none); "
        "a list (2,4,8) runs the overload once per value, a sizing sweep",
    )
    p.add_argument(
        "--server-nice",
        type=int,
        default=0,
        help="run every crops serve under nice -n N: the load generator (and nginx) get CPU first, as on "
        "machines of their own; 0: same priority",
    )
    p.add_argument(
        "--precision", choices=["fp32", "int8", "fp16", "auto"], default=None, help="CROPS_ENCODER_PRECISION"
    )
    p.add_argument("--slo-ms", type=float, default=10.0, help="the SLO; the server's deadline in the overload run")
    p.add_argument("--factor", type=float, default=3.0)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--capacity-s", type=float, default=10.0)
    p.add_argument("--ramp-s", type=float, default=5.0, help="seconds per rate of the capacity ramp")
    p.add_argument("--connections", type=int, default=64, help="open-loop keep-alive connections")
    p.add_argument("--connections-capacity", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--old-tree", type=Path, default=None, help="a checkout with service/dispatch.py (72aca5f)")
    a = p.parse_args()
    if not (a.bundle / "manifest.json").is_file():
        print(f"error: {a.bundle} is not a bundle", file=sys.stderr)
        raise SystemExit(2)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    res = {"overload": overload, "process-models": process_models, "profile": profile}[a.mode](a)
    res["command"] = "python -m benchmarks.overload " + " ".join(sys.argv[1:])
    res["out"] = str(a.out)
    from core.atomic import atomic_write_json, atomic_write_text

    atomic_write_json(a.out.with_suffix(".json"), res)
    atomic_write_text(a.out.with_suffix(".md"), render_md(a.mode, res))
    print(render_md(a.mode, res))


def _yes(ok: bool) -> str:
    return "yes" if ok else "no"


def render_md(mode: str, r: dict[str, Any]) -> str:
    if mode == "profile":
        ip = r["in_process_ms"]
        return f"""# What one query costs

Command: `{r["command"]}` ({r["nproc"]} cores, load average {r["loadavg_1m"]} at the end). Bundle
`{r["bundle"]}` ({r["ntotal"]} vectors), query tower {r["precision"]}; one thread; ms p50 / p99.

| step | batch 1 | batch 4 (the whole batch) |
|---|---|---|
| encode | {ip["encode_b1"][0]} / {ip["encode_b1"][1]} | {ip["encode_b4"][0]} / {ip["encode_b4"][1]} |
| search (top 100) | {ip["search_b1"][0]} / {ip["search_b1"][1]} | {ip["search_b4"][0]} / {ip["search_b4"][1]} |

One keep-alive connection, closed loop, cache misses, through `crops serve`
({"nginx in front" if r["round_trip_front"] == "nginx" else "no balancer"}): round trip
{r["round_trip_ms"][0]} / {r["round_trip_ms"][1]} ms.
"""
    if mode == "overload":
        v = "\n".join(f"| {k} | {'yes' if ok else '**no**'} |" for k, ok in r["verdict"].items())
        ramp = "\n".join(
            f"| {x['rate']} | {x['goodput_rps']} | {x['ok_p99_ms']} | {x['shed']} | {_yes(x['within_slo'])} |"
            for x in r["ramp"]
        )
        gc = r["goodput_over_capacity"]
        if r.get("front") == "nginx":
            serving = (
                "nginx least_conn (deploy/nginx/nginx.conf, one worker process) in front of "
                f"{r['replicas']} one-worker `crops serve` replicas, `max_conns={r['max_conns']}` per replica "
                "in the overload run (none in the capacity ramp)"
            )
            front_cpu = " and nginx"
        else:
            serving = f"one `crops serve --workers {r['workers']}`, no balancer"
            front_cpu = ""
        if r.get("server_nice"):
            serving += (
                f"; every `crops serve` under `nice -n {r['server_nice']}`, so the load generator"
                f"{' and nginx' if front_cpu else ''} get CPU first, as on machines of their own"
            )
        sweep = ""
        if r.get("sweep"):
            rows = "\n".join(
                f"| {x['max_conns']} | {x['goodput_rps']} ({x['goodput_over_capacity']} x) | {x['ok_p99_ms']} | "
                f"{x['shed']} | {x['shed_p50_ms']} / {x['shed_p99_ms']} | {x['shed_by_balancer']} / "
                f"{x['shed_by_replica']} | {sum(x['verdict'].values())} of {len(x['verdict'])} |"
                for x in r["sweep"]
            )
            sweep = f"""
Sizing sweep: the same overload once per nginx `max_conns` (same replicas, in this order); the headline
above is the run meeting most goals, then with the most goodput.

| max_conns | goodput req/s (x capacity) | admitted p99 ms | shed | shed p50 / p99 ms | by nginx / replica | goals |
|---|---|---|---|---|---|---|
{rows}
"""
        by_who = (
            f"{r.get('shed_by_balancer', 0)} ({r.get('shed_by_balancer_p99_ms')} ms) / "
            f"{r.get('shed_by_replica', r['shed'])} ({r.get('shed_by_replica_p99_ms')} ms)"
        )
        return f"""# Overload at {r["factor"]:g}x capacity

Command: `{r["command"]}` ({r["nproc"]} cores shared with the load generator{front_cpu}, load average
{r["loadavg_1m"]} at the end). Bundle `{r.get("bundle", "?")}`, query tower {r.get("precision", "fp32")}. Every query
is a cache miss; {serving}; SLO = the replicas' deadline (`CROPS_DEADLINE_MS`) = {r["slo_ms"]:g} ms.

Closed loop (32 keep-alive connections, no deadline in the way): {r["closed_loop"]["goodput_rps"]} req/s at
p50 {r["closed_loop"]["ok_p50_ms"]} ms, p99 {r["closed_loop"]["ok_p99_ms"]} ms: the throughput of a deep queue,
not a rate served within the SLO.

Capacity = the highest open-loop rate served within the SLO (p99 of the admitted requests <= SLO,
<= 1 % shed, >= 97 % served), from a ramp of {r["ramp"][0]["sent"] / max(r["ramp"][0]["rate"], 1e-9):.0f} s steps:

| offered req/s | goodput | admitted p99 ms | shed | within the SLO |
|---|---|---|---|---|
{ramp}

**Capacity: {r["capacity_rps"]} req/s.**

Overload: open loop at **{r["offered_rps"]} req/s** for {r["duration_s"]:g} s over {r["connections"]}
keep-alive connections:

| what | number |
|---|---|
| goodput (200/s) | {r["goodput_rps"]} req/s = **{gc if gc is not None else "n/a"} x capacity** |
| admitted latency p50 / p99 | {r["ok_p50_ms"]} / **{r["ok_p99_ms"]} ms** |
| shed (503) | {r["shed"]} of {r["sent"]}, latency p50 {r["shed_p50_ms"]} / p99 **{r["shed_p99_ms"]} ms** |
| 503 with Retry-After | {r["shed_with_retry_after"]} of {r["shed"]} |
| refused by nginx / by a replica (latency p99) | {by_who} |
| other statuses | {r["other"] or "none"} |
| load generator's own schedule lag p99 | {r["generator_lag_p99_ms"]} ms |

| goal | met |
|---|---|
{v}
{sweep}
![latency and goodput over time]({Path(r["out"]).name}.png)

Latency is measured by the client from the moment a request is released, including any wait for a
free connection (no coordinated omission).
"""
    rounds = r["rounds"]
    n = len(next(iter(rounds.values())))
    lines = [
        f"| {name} | "
        + " | ".join(f"{s['goodput_rps']} req/s, p99 {s['ok_p99_ms']} ms" for s in runs)
        + f" | **{r['mean_rps'][name]} req/s** |"
        for name, runs in rounds.items()
    ]
    head = "| process model | " + " | ".join(f"round {i}" for i in range(n)) + " | mean |"
    sep = "|---|" + "---|" * (n + 1)
    return (
        f"""# Two worker processes on one box: process models side by side

Command: `{r["command"]}` ({r["nproc"]} cores shared with other work, load average {r["loadavg_1m"]}).
Closed loop, {r["connections"]} keep-alive connections, every query a cache miss, {r["seconds"]:g} s per
round; all set up at once and measured in turn in every round (interleaved), so the shared box's
drifting load falls on each alike.

{head}
{sep}
"""
        + "\n".join(lines)
        + "\n"
    )


if __name__ == "__main__":
    main()
