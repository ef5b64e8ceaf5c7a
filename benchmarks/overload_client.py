"""The overload benchmark's HTTP client (``benchmarks.overload``): raw HTTP/1.1 keep-alive connections on
asyncio, reading ``Retry-After`` and ``X-Crops-Shed`` on every response, so that each refusal is
counted with its latency and who refused it (nginx or a replica). A closed loop (each connection sends
again when answered) and an open loop (requests sent on schedule, whatever happened before), each a
list of :class:`Shot`; :func:`summarize` turns one into the report's numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any

WORDS = ("cat", "video", "pasta", "guitar", "minecraft", "lofi", "piano", "dog", "recipe", "speedrun", "cover")


@dataclass
class Shot:
    t: float  # scheduled send time, s since start
    status: int  # 0: transport error
    ms: float
    retry_after: bool
    balancer: bool = False  # refused by nginx (X-Crops-Shed), not by a replica


def request_bodies(n: int, seed: int) -> list[bytes]:
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
    bodies = request_bodies(200_000, seed)
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
    bodies = request_bodies(int(rate * duration) + 1, seed)
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
    """The ``q``-th percentile (nearest rank); nan for no values."""
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(q / 100 * len(v)) - 1))]


def run(coro: Any) -> Any:
    """Run a loop to completion, on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def summarize(shots: list[Shot], duration: float) -> dict[str, Any]:
    """Goodput (200/s over ``duration``), admitted and refused (503) latency, Retry-After on refusals,
    refusals by nginx and by a replica, and any other status."""
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

