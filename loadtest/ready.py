"""Wait for a service started as a subprocess to answer ``/readyz`` (benchmarks, serve-bench, tests)."""

from __future__ import annotations

import subprocess
import time
import urllib.request


class NotReady(RuntimeError):
    """The service exited, or did not answer ``/readyz`` with 200 in time."""


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120.0, poll_s: float = 0.3) -> None:
    """Block until ``url``/readyz answers 200; raise ``NotReady`` if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise NotReady(f"server exited with {proc.returncode} before becoming ready")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise NotReady(f"{url} not ready after {timeout:.0f} s")
        time.sleep(poll_s)


def wait_workers(url: str, n: int, timeout: float = 120.0) -> set[int]:
    """Block until ``n`` fresh keep-alive connections land on ``n`` different workers (``/info``'s
    ``worker_pid``): with ``crops serve --balance least-conn`` that happens once every worker is ready.
    Returns the worker pids; raises ``NotReady`` on timeout."""
    import contextlib
    import http.client
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    deadline = time.monotonic() + timeout
    while True:
        conns = [http.client.HTTPConnection(host, port, timeout=10) for _ in range(n)]
        pids: set[int] = set()
        try:
            for c in conns:  # all open at once, so least-conn must spread them
                c.request("GET", "/info")
                r = c.getresponse()
                if r.status == 200:
                    pids.add(int(json.loads(r.read())["worker_pid"]))
        except (OSError, ValueError, KeyError):
            pids = set()
        finally:
            for c in conns:
                with contextlib.suppress(OSError):
                    c.close()
        if len(pids) == n:
            time.sleep(0.3)  # let the parent hear about the closes before real traffic starts
            return pids
        if time.monotonic() > deadline:
            raise NotReady(f"{url}: {len(pids)} of {n} workers answered after {timeout:.0f} s")
        time.sleep(0.3)
