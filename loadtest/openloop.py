"""A small HTTP/1.1 load generator over keep-alive connections (asyncio): open loop and closed loop.

- **Open loop** (:func:`open_loop`): request ``i`` is sent at ``start + i / rate`` whatever happened
  before, and each latency includes the wait for a free connection, so a stall shows up in the
  percentiles instead of silently lowering the rate (no coordinated omission). Latency is timed from
  the moment the generator releases the request (within the event loop's ~1 ms timer granularity of
  its schedule, not from the schedule itself, which would add that granularity to every sample); if
  the generator itself falls behind its schedule by more than 5 ms at p99 it says so. This is the
  latency *at a given rate*, what a ranking fleet sees.
- **Closed loop** (:func:`closed_loop`): each connection sends its next request as soon as its
  answer arrives, for a fixed time: the most requests/s the server answers at that concurrency, at
  whatever latency.

It is deliberately tiny (raw asyncio streams, no HTTP library) so it costs little CPU on a box it
shares with the server. The mixed, Poisson-paced user load test is locust's (``loadtest.run``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from core.errors import CropsError, ErrorKind
from loadtest.report import Sample

log = logging.getLogger(__name__)
_ARM = re.compile(rb'"arm"\s*:\s*"([^"]*)"')
_T = TypeVar("_T")
_IO_ERRORS = (OSError, ValueError, asyncio.IncompleteReadError, asyncio.TimeoutError)


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


async def _open_all(host: str, port: int, connections: int) -> list[_Conn]:
    try:
        return [await _open(host, port) for _ in range(connections)]
    except OSError as exc:
        raise CropsError(ErrorKind.BACKEND, f"cannot connect to {host}:{port}: {exc}") from exc


class _Client:
    """The request bytes for one endpoint, and one request/answer exchange on a connection."""

    def __init__(self, url: str, path: str, timeout: float) -> None:
        self.host, self.port = _split_host(url)
        self.path, self.timeout = path, timeout
        self.prefix = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            "Content-Length: "
        ).encode()

    async def exchange(self, conn: _Conn, body: bytes) -> tuple[_Conn | None, int, str, str]:
        """(connection to reuse or None, status, arm, error); a broken connection is replaced."""
        try:
            conn.writer.write(self.prefix + str(len(body)).encode() + b"\r\n\r\n" + body)
            status, resp = await asyncio.wait_for(_read_response(conn.reader), self.timeout)
        except _IO_ERRORS as exc:
            conn.writer.close()
            fresh = None
            with contextlib.suppress(OSError):  # else the next user of this slot fails too
                fresh = await _open(self.host, self.port)
            return fresh, 0, "", type(exc).__name__
        m = _ARM.search(resp)
        return conn, status, m.group(1).decode() if m else "", ""

    def sample(self, t: float, latency_s: float, status: int, arm: str, err: str) -> Sample:
        ok = 200 <= status < 300 and not err
        return Sample(t=t, endpoint=self.path, arm=arm or "?", latency_ms=latency_s * 1e3, ok=ok, status=status,
                      error=err or ("" if ok else f"HTTP {status}"))


def _check(bodies: Sequence[bytes], duration: float, connections: int) -> None:
    if duration <= 0 or connections < 1 or not bodies:
        raise CropsError(ErrorKind.INVALID_INPUT, "the load generator needs duration > 0, connections ≥ 1 and bodies")


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
    """Send ``rate`` requests/s for ``duration`` seconds; one Sample per request (``t``: its scheduled
    time since the start; latency from its release, including any wait for a free connection)."""
    _check(bodies, duration, connections)
    if rate <= 0:
        raise CropsError(ErrorKind.INVALID_INPUT, "open loop needs rate > 0")
    client = _Client(url, path, timeout)
    pool: asyncio.Queue[_Conn] = asyncio.Queue()
    for c in await _open_all(client.host, client.port, connections):
        pool.put_nowait(c)
    samples: list[Sample] = []
    lags: list[float] = []
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()  # not loop.time(): uvloop's clock has millisecond resolution

    async def fire(i: int, scheduled: float, released: float) -> None:
        conn = await pool.get()  # waiting for a free connection counts: that is backlog
        kept, status, arm, err = await client.exchange(conn, bodies[i % len(bodies)])
        if kept is not None:
            pool.put_nowait(kept)
        else:  # no connection could be reopened: keep the slot, the next user retries
            pool.put_nowait(conn)
        samples.append(client.sample(scheduled - start, time.perf_counter() - released, status, arm, err))

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


async def run_closed_loop(
    url: str,
    bodies: Sequence[bytes],
    *,
    connections: int,
    duration: float,
    path: str = "/retrieve",
    timeout: float = 5.0,
) -> list[Sample]:
    """Each of ``connections`` keep-alive connections sends its next request as soon as its answer
    arrives, for ``duration`` seconds; one Sample per request (``t``: its send time since the start).
    Requests/s = the samples with ``t < duration`` / ``duration``."""
    _check(bodies, duration, connections)
    client = _Client(url, path, timeout)
    conns = await _open_all(client.host, client.port, connections)
    samples: list[Sample] = []
    counter = itertools.count()
    start = time.perf_counter()
    end = start + duration

    async def user(conn: _Conn | None) -> None:
        while conn is not None and (sent := time.perf_counter()) < end:
            conn, status, arm, err = await client.exchange(conn, bodies[next(counter) % len(bodies)])
            samples.append(client.sample(sent - start, time.perf_counter() - sent, status, arm, err))
        if conn is not None:
            conn.writer.close()

    await asyncio.gather(*(user(c) for c in conns))
    samples.sort(key=lambda s: s.t)
    return samples


def run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine to completion in a fresh event loop (uvloop when installed)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def open_loop(url: str, bodies: Sequence[bytes], *, rate: float, duration: float, **kw: Any) -> list[Sample]:
    """Blocking wrapper around :func:`run_open_loop`."""
    return run_sync(run_open_loop(url, bodies, rate=rate, duration=duration, **kw))


def closed_loop(url: str, bodies: Sequence[bytes], *, connections: int, duration: float, **kw: Any) -> list[Sample]:
    """Blocking wrapper around :func:`run_closed_loop`."""
    return run_sync(run_closed_loop(url, bodies, connections=connections, duration=duration, **kw))
