"""A small open-loop, fixed-rate HTTP/1.1 load generator (asyncio, keep-alive connections).

wrk is closed-loop (each connection waits for its answer), so it measures the maximum throughput
but not latency *at a given rate*; wrk2's constant-rate mode is not in Debian's wrk. This client
sends request ``i`` at ``start + i / rate`` whatever happened before, and each latency includes the
wait for a free connection, so a stall shows up in the percentiles instead of silently lowering
the rate (no coordinated omission). Latency is timed from the moment the generator releases the
request (within the event loop's ~1 ms timer granularity of its schedule, not from the schedule
itself, which would add that granularity to every sample); if the generator itself falls behind
its schedule by more than 5 ms at p99 it says so. It is deliberately tiny (raw asyncio streams,
no HTTP library) so it costs little CPU on a box it shares with the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from core.errors import CropsError, ErrorKind
from loadtest.report import Sample

log = logging.getLogger(__name__)
_ARM = re.compile(rb'"arm"\s*:\s*"([^"]*)"')


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


def _split_host(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise CropsError(ErrorKind.INVALID_INPUT, f"host must be http://HOST[:PORT], got {url!r}")
    return parts.hostname, parts.port or 80


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length is None:
        raise ValueError("response without content-length")
    body = await reader.readexactly(length)
    return status, body


async def _open(host: str, port: int) -> _Conn:
    reader, writer = await asyncio.open_connection(host, port)
    return _Conn(reader, writer)


async def run_open_loop(
    url: str,
    bodies: Sequence[bytes],
    *,
    rate: float,
    duration: float,
    path: str = "/retrieve",
    connections: int = 32,
    timeout: float = 5.0,
) -> list[Sample]:
    """Send ``rate`` requests/s for ``duration`` seconds; one Sample per request, latency from schedule."""
    if rate <= 0 or duration <= 0 or not bodies:
        raise CropsError(ErrorKind.INVALID_INPUT, "open loop needs rate > 0, duration > 0 and bodies")
    host, port = _split_host(url)
    prefix = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\nContent-Length: "
    ).encode()
    pool: asyncio.Queue[_Conn] = asyncio.Queue()
    try:
        for _ in range(connections):
            pool.put_nowait(await _open(host, port))
    except OSError as exc:
        raise CropsError(ErrorKind.BACKEND, f"cannot connect to {host}:{port}: {exc}") from exc
    samples: list[Sample] = []
    lags: list[float] = []
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()  # not loop.time(): uvloop's clock has millisecond resolution

    async def fire(i: int, scheduled: float, released: float) -> None:
        conn = await pool.get()  # waiting for a free connection counts: that is backlog
        body = bodies[i % len(bodies)]
        status, arm, err = 0, "", ""
        try:
            conn.writer.write(prefix + str(len(body)).encode() + b"\r\n\r\n" + body)
            status, resp = await asyncio.wait_for(_read_response(conn.reader), timeout)
            m = _ARM.search(resp)
            arm = m.group(1).decode() if m else ""
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
            err = type(exc).__name__
            conn.writer.close()
            with contextlib.suppress(OSError):  # else the next user of this slot fails and retries
                conn = await _open(host, port)
        finally:
            pool.put_nowait(conn)
        done = time.perf_counter()
        samples.append(
            Sample(
                t=scheduled - start,
                endpoint=path,
                arm=arm or "?",
                latency_ms=(done - released) * 1e3,
                ok=200 <= status < 300 and not err,
                status=status,
                error=err or ("" if 200 <= status < 300 else f"HTTP {status}"),
            )
        )

    n = int(rate * duration)
    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        released = time.perf_counter()
        lags.append(released - scheduled)
        task = asyncio.create_task(fire(i, scheduled, released))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=timeout + 1)
    while not pool.empty():
        pool.get_nowait().writer.close()
    samples.sort(key=lambda s: s.t)
    lags.sort()
    if lags and lags[int(0.99 * (len(lags) - 1))] > 0.005:
        log.warning("the generator itself fell behind its schedule (p99 lag %.1f ms): it is CPU-starved, "
                    "latencies below are optimistic", lags[int(0.99 * (len(lags) - 1))] * 1e3)
    return samples


def open_loop(
    url: str, bodies: Sequence[bytes], *, rate: float, duration: float, **kw: object
) -> list[Sample]:
    """Blocking wrapper around :func:`run_open_loop` (uses uvloop when installed)."""
    coro = run_open_loop(url, bodies, rate=rate, duration=duration, **kw)  # type: ignore[arg-type]
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
