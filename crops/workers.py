"""``crops serve --workers N``: N uvicorn servers, each accepting on its own listening socket.

uvicorn's own supervisor hands every worker the same socket. Each worker's event loop accepts every
pending connection when it wakes, and a keep-alive connection stays with the worker that accepted
it, so a burst of connections from a client pool landed 31 of 32 on one worker. That worker was
offered twice what it serves while the other idled (150-200 answered req/s at 400 offered, against
350 at 20+12; ``python -m benchmarks.overload_recovery``). Here every worker binds its own socket with
``SO_REUSEPORT``, and the kernel spreads new connections over the sockets by hash.

The supervisor is uvicorn's, reduced to what the service needs: it forwards SIGTERM/SIGINT to the
workers (each drains on its own, ``CROPS_DRAIN_S``), restarts a worker that dies after it started
serving, and stops everything when one fails before it could serve (a broken bundle or config).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
from typing import Any

log = logging.getLogger("crops.workers")

STARTUP_FAILURE = 3  # uvicorn's exit code for a worker that could not start serving


def listen_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A bound, listening TCP socket; with ``reuse_port`` it joins the port's SO_REUSEPORT group."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def _worker(config_kwargs: dict[str, Any], host: str, port: int) -> None:
    """One worker process: its own SO_REUSEPORT socket, one uvicorn server on it."""
    import uvicorn

    config = uvicorn.Config(**config_kwargs)
    config.configure_logging()
    try:
        sock = listen_socket(host, port, reuse_port=True)
    except OSError as exc:
        log.error("worker cannot listen on %s:%d: %s", host, port, exc.strerror)
        raise SystemExit(STARTUP_FAILURE) from None
    uvicorn.Server(config).run(sockets=[sock])


def run_workers(config_kwargs: dict[str, Any], host: str, port: int, n: int, *, stop_timeout_s: float) -> int:
    """Run ``n`` workers until SIGTERM/SIGINT; returns the exit code (0, or 1 after a startup failure)."""
    ctx = multiprocessing.get_context("spawn")
    procs: list[Any] = []
    stopping = threading.Event()

    def start() -> Any:
        p = ctx.Process(target=_worker, args=(config_kwargs, host, port), daemon=False)
        p.start()
        return p

    def forward(signum: int, _frame: Any) -> None:
        stopping.set()
        for p in procs:  # each worker drains on the first signal and stops at once on a second
            if p.pid is not None and p.exitcode is None:
                os.kill(p.pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    procs.extend(start() for _ in range(n))
    code = 0
    while not stopping.wait(0.5):
        for i, p in enumerate(procs):
            if p.exitcode is None:
                continue
            if p.exitcode == STARTUP_FAILURE:
                log.error("worker %d failed to start; stopping", p.pid)
                code = 1
                forward(signal.SIGTERM, None)
                break
            log.warning("worker %d exited with %s; starting another", p.pid, p.exitcode)
            procs[i] = start()
    for p in procs:
        p.join(timeout=stop_timeout_s)
        if p.exitcode is None:
            log.error("worker %d did not stop in %.0f s; killing it", p.pid, stop_timeout_s)
            p.kill()
            p.join()
    return code
