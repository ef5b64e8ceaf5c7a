"""Worker process models for ``crops serve --workers N``: how connections reach the workers.

``least-conn`` (the default with several workers): the parent process owns the listening socket,
accepts every connection and hands it to the ready worker with the fewest open connections (ties to
the one served longest ago) over a Unix socket (SCM_RIGHTS); each worker reports the connections it
closes. The parent
touches a connection once, at accept, so keep-alive traffic costs it nothing.

Why not let the workers accept: a ranking service calls us over a handful of keep-alive
connections, and their split decides the throughput. From one shared socket, whichever worker wakes
first accepts, and its event loop accepts a burst in a loop (DESIGN §8: 2 and 8 connections all
landed on one worker, about half the throughput). With one SO_REUSEPORT socket per worker the kernel
hashes the 4-tuple, so 2 connections share a worker half the time (``docs/explanation/service.md``). Node's
cluster module dispatches from the parent on Linux for the same reason.

``reuse-port``: one SO_REUSEPORT socket per worker (kernel-balanced; fine for many connections).
``shared``: uvicorn's own multi-worker mode (one inherited socket).

In the first two modes SIGTERM/SIGINT stop every worker gracefully; a worker that dies is restarted
(its connections are lost; its Prometheus multiprocess files are marked dead).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import selectors
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger("service.dispatch")

Balance = Literal["least-conn", "reuse-port", "shared"]
BALANCES: tuple[str, ...] = ("least-conn", "reuse-port", "shared")
APP = "service.app:app_from_env"

# One-byte messages from a worker to the parent.
READY = b"r"  # startup finished (bundles loaded): send connections
CLOSED = b"x"  # one connection closed
MAX_RESTARTS = 5  # per worker slot; past this a crash loop stops the server instead of spinning


def _listen(host: str, port: int, *, reuse_port: bool = False, backlog: int = 2048) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


# --------------------------------------------------------------------------- worker side


class _Inbox:
    """Receives accepted connections from the parent and starts uvicorn's protocol on each.

    It stands in for the ``asyncio.Server`` objects uvicorn closes on shutdown (``close`` and
    ``wait_closed``), so uvicorn's graceful shutdown (finish in-flight requests, then lifespan
    shutdown) works unchanged.
    """

    def __init__(self, chan: socket.socket, make_protocol: Callable[[], asyncio.Protocol]) -> None:
        self.chan = chan
        self.make_protocol = make_protocol
        self.loop = asyncio.get_running_loop()
        self.on_eof: Callable[[], None] | None = None
        self._open = True
        chan.setblocking(False)
        self.loop.add_reader(chan.fileno(), self._readable)
        self._tasks: set[asyncio.Task[Any]] = set()

    def _protocol(self) -> asyncio.Protocol:
        proto = self.make_protocol()
        lost = proto.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            lost(exc)
            self.notify(CLOSED)

        proto.connection_lost = connection_lost  # type: ignore[method-assign]
        return proto

    def notify(self, msg: bytes) -> None:
        if self._open or msg == CLOSED:
            with contextlib.suppress(OSError):  # the parent is gone: nothing to tell
                self.chan.send(msg)

    def _readable(self) -> None:
        while True:
            try:
                msg, fds, _flags, _addr = socket.recv_fds(self.chan, 256, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                msg, fds = b"", []
            if not msg and not fds:  # EOF: the parent exited
                self.close()
                if self.on_eof is not None:
                    self.on_eof()
                return
            for fd in fds:
                conn = socket.socket(fileno=fd)
                if not self._open:
                    conn.close()
                    self.notify(CLOSED)
                    continue
                conn.setblocking(False)
                task = self.loop.create_task(self._adopt(conn))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _adopt(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self._protocol, conn)
        except OSError:  # the peer reset before we got to it
            conn.close()
            self.notify(CLOSED)

    def close(self) -> None:
        if self._open:
            self._open = False
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self.chan.fileno())

    async def wait_closed(self) -> None:
        return None


def _dispatched_worker(chan: socket.socket, log_level: str) -> None:
    """Worker process body (spawned): uvicorn serving the connections the parent sends."""
    import uvicorn

    class DispatchedServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await self.lifespan.startup()
            if self.lifespan.should_exit:
                raise SystemExit(3)
            config = self.config

            def make_protocol() -> asyncio.Protocol:
                return config.http_protocol_class(  # type: ignore[call-arg]
                    config=config, server_state=self.server_state, app_state=self.lifespan.state
                )

            inbox = _Inbox(chan, make_protocol)

            def parent_gone() -> None:
                self.should_exit = True

            inbox.on_eof = parent_gone
            self.servers = [inbox]  # type: ignore[list-item]
            self.started = True
            inbox.notify(READY)

    config = uvicorn.Config(APP, factory=True, log_level=log_level, access_log=False)
    DispatchedServer(config).run()


def _reuseport_worker(host: str, port: int, log_level: str) -> None:
    """Worker process body (spawned): uvicorn on its own SO_REUSEPORT socket."""
    import uvicorn

    sock = _listen(host, port, reuse_port=True)
    config = uvicorn.Config(APP, factory=True, log_level=log_level, access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


# --------------------------------------------------------------------------- parent side


@dataclass
class _Slot:
    index: int
    proc: Any  # multiprocessing Process
    chan: socket.socket | None = None
    ready: bool = False
    open_conns: int = 0
    last_pick: int = 0  # pick counter value when this worker last got a connection
    restarts: int = 0


class Supervisor:
    """Starts the workers, dispatches connections (least-conn mode), restarts dead workers, stops all
    on SIGTERM/SIGINT. ``run()`` returns the exit code."""

    def __init__(
        self, host: str, port: int, workers: int, balance: Balance, log_level: str = "warning", pin: bool = False
    ) -> None:
        if balance not in ("least-conn", "reuse-port"):
            raise ValueError(f"Supervisor runs least-conn or reuse-port, not {balance!r}")
        self.host, self.port, self.n, self.balance, self.log_level = host, port, workers, balance, log_level
        self.pin = pin  # worker i on core i of this process's allowed cores (1 intra-op thread each)
        self.ctx = mp.get_context("spawn")  # a clean interpreter per worker: no inherited threads/locks
        self.listener: socket.socket | None = None
        self.slots: list[_Slot] = []
        self.sel = selectors.DefaultSelector()
        self.stopping = False
        self._picks = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # workers ------------------------------------------------------------------------------------
    def _spawn(self, index: int, restarts: int = 0) -> _Slot:
        if self.balance == "least-conn":
            parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            proc = self.ctx.Process(
                target=_dispatched_worker, args=(child_end, self.log_level), name=f"crops-worker-{index}"
            )
            proc.start()
            child_end.close()
            parent_end.setblocking(False)
            slot = _Slot(index, proc, parent_end, restarts=restarts)
            self.sel.register(parent_end, selectors.EVENT_READ, ("worker", slot))
        else:
            proc = self.ctx.Process(
                target=_reuseport_worker, args=(self.host, self.port, self.log_level), name=f"crops-worker-{index}"
            )
            proc.start()
            slot = _Slot(index, proc, restarts=restarts)
        if self.pin and proc.pid is not None:
            cores = sorted(os.sched_getaffinity(0))
            core = cores[index % len(cores)]
            with contextlib.suppress(OSError):  # the worker may already be gone; its restart pins again
                os.sched_setaffinity(proc.pid, {core})
        return slot

    def _reap(self, slot: _Slot) -> None:
        if slot.chan is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(slot.chan)
            slot.chan.close()
            slot.chan = None
        slot.ready = False
        slot.proc.join(timeout=5)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(slot.proc.pid)  # type: ignore[no-untyped-call]

    def pick(self) -> _Slot | None:
        """The ready worker with the fewest open connections; among those, the one served longest ago.

        Counts can be stale by a few milliseconds (a worker reports a close when its loop gets to it),
        so ties must not repeat a worker: a client that closes one connection and opens two at once
        must still get one per worker.
        """
        ready = [s for s in self.slots if s.ready and s.chan is not None]
        if not ready:
            return None
        best = min(ready, key=lambda s: (s.open_conns, s.last_pick))
        self._picks += 1
        best.last_pick = self._picks
        return best

    # events -------------------------------------------------------------------------------------
    def _on_worker(self, slot: _Slot) -> None:
        assert slot.chan is not None
        try:
            data = slot.chan.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the worker exited (or closed its end)
            self._worker_gone(slot)
            return
        if READY in data and not slot.ready:
            slot.ready = True
            log.info("worker %d (pid %d) ready", slot.index, slot.proc.pid)
            self._update_accepting()
        slot.open_conns = max(0, slot.open_conns - data.count(CLOSED))

    def _worker_gone(self, slot: _Slot) -> None:
        self._reap(slot)
        self._update_accepting()
        if self.stopping:
            return
        code = slot.proc.exitcode
        if slot.restarts >= MAX_RESTARTS:
            log.error("worker %d exited with %s %d times: stopping", slot.index, code, slot.restarts + 1)
            self.exit_code = 1
            self.stop()
            return
        log.warning("worker %d (pid %d) exited with %s: restarting", slot.index, slot.proc.pid, code)
        self.slots[slot.index] = self._spawn(slot.index, slot.restarts + 1)

    def _drain_reports(self) -> None:
        """Read the workers' pending ready/close reports, so a pick sees the freshest counts."""
        for s in list(self.slots):
            if s.chan is not None:
                self._on_worker(s)

    def _on_accept(self) -> None:
        assert self.listener is not None
        self._drain_reports()
        for _ in range(64):  # a burst at most; then let close reports in
            slot = self.pick()
            if slot is None:
                self._update_accepting()
                return
            try:
                conn, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: leave it in the backlog and retry on the next event
                log.warning("accept failed: %s", exc)
                return
            try:
                if conn.family in (socket.AF_INET, socket.AF_INET6):
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                assert slot.chan is not None
                slot.chan.setblocking(True)  # one small message; a full pipe means a stuck worker
                slot.chan.settimeout(1.0)
                socket.send_fds(slot.chan, [b"c"], [conn.fileno()])
                slot.open_conns += 1
            except OSError as exc:
                log.warning("could not hand a connection to worker %d: %s", slot.index, exc)
            finally:
                if slot.chan is not None:
                    slot.chan.setblocking(False)
                conn.close()  # the worker holds its own descriptor now

    def _update_accepting(self) -> None:
        """Accept only while some worker is ready: until then connections wait in the backlog."""
        if self.listener is None:
            return
        want = any(s.ready for s in self.slots) and not self.stopping
        registered = self.listener in {k.fileobj for k in self.sel.get_map().values()}
        if want and not registered:
            self.sel.register(self.listener, selectors.EVENT_READ, ("accept", None))
        elif not want and registered:
            self.sel.unregister(self.listener)

    # lifecycle ----------------------------------------------------------------------------------
    def stop(self, *_: Any) -> None:
        self.stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"s")

    def run(self) -> int:
        self.exit_code = 0
        if self.balance == "least-conn":
            self.listener = _listen(self.host, self.port)
            self.listener.setblocking(False)
        self.slots = [self._spawn(i) for i in range(self.n)]
        self.sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        old = {sig: signal.signal(sig, self.stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not self.stopping:
                for key, _ in self.sel.select(timeout=0.5):
                    kind, slot = key.data
                    if kind == "accept":
                        self._on_accept()
                    elif kind == "worker":
                        self._on_worker(slot)
                    else:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(64)
                if self.balance == "reuse-port":  # no channel tells us: poll for dead workers
                    for s in list(self.slots):
                        if not s.proc.is_alive() and not self.stopping:
                            self._worker_gone(s)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            self._shutdown()
        return self.exit_code

    def _shutdown(self) -> None:
        self.stopping = True
        if self.listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(self.listener)
            self.listener.close()  # new connections are refused; the open ones finish on their worker
        for s in self.slots:
            if s.proc.is_alive():
                s.proc.terminate()  # SIGTERM: uvicorn's graceful shutdown
        for s in self.slots:
            s.proc.join(timeout=30)
            if s.proc.is_alive():
                s.proc.kill()
                s.proc.join()
            if s.chan is not None:
                s.chan.close()
        bad = [s.proc.exitcode for s in self.slots if s.proc.exitcode not in (0, -signal.SIGTERM)]
        if bad and self.exit_code == 0:
            self.exit_code = 1


def serve_workers(
    host: str, port: int, workers: int, balance: Balance, log_level: str = "warning", pin: bool = False
) -> int:
    """Run ``workers`` uvicorn workers of the service app with the given connection balancing."""
    if balance == "shared":
        if pin:
            raise ValueError("--pin needs --balance least-conn or reuse-port (uvicorn starts the shared workers)")
        import uvicorn

        uvicorn.run(APP, factory=True, host=host, port=port, workers=workers, log_level=log_level, access_log=False)
        return 0
    return Supervisor(host, port, workers, balance, log_level, pin).run()
