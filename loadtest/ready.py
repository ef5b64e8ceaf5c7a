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
