"""The FastAPI app: wiring only (state, use case, error handlers, guard, routes, drain on SIGTERM).

``create_app(settings)`` builds everything (loads and warms the bundles, so a bad bundle fails at
start); ``app_from_env()`` is the uvicorn factory ``crops serve`` uses (one app per worker process).
The routes are in ``service.routes``; the retrieve use case in ``service.retrieve``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from core.errors import ErrorKind
from service.errors import install_handlers
from service.guard import Guard
from service.retrieve import RetrieveUseCase
from service.routes import build_router
from service.settings import ServiceSettings
from service.state import ServiceState

SWITCH_INTERVAL_S = 0.0005

log = logging.getLogger("service")


def _drain_on_signals(state: ServiceState, drain_s: float) -> None:
    """On SIGTERM/SIGINT: drain for ``drain_s`` (not ready, connections closed after each answer), then
    hand the signal to uvicorn's own handler (stop accepting, finish in-flight requests, exit).

    Only where uvicorn installed its handlers (the main thread of a served process).
    """
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        prev = signal.getsignal(sig)
        if not callable(prev):
            continue

        def handler(signum: int, frame: Any, prev: Any = prev) -> None:
            if state.draining or drain_s <= 0:  # a second signal: stop now
                prev(signum, frame)
                return
            state.draining = True
            log.warning("signal %d: draining for %.1f s before stopping", signum, drain_s)
            loop.call_soon_threadsafe(loop.call_later, drain_s, prev, signum, frame)

        try:
            signal.signal(sig, handler)
        except ValueError:  # not the main thread (an in-process test server): nothing to chain to
            return


def create_app(settings: ServiceSettings) -> FastAPI:
    state = ServiceState(settings)
    use_case = RetrieveUseCase(state)
    metrics = state.metrics
    token = settings.admin_token.get_secret_value().encode() if settings.admin_token else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        _drain_on_signals(state, settings.drain_s)
        yield
        await state.stop()

    app = FastAPI(
        title="CroPS retrieval service",
        version="1",
        description="Dense retrieval of short-video candidates; A/B arms are bundles.",
        lifespan=lifespan,
    )
    app.state.crops = state
    app.state.retrieve = use_case
    app.state.admin_token = token
    app.state.retry_after_s = settings.retry_after_s

    def on_error(kind: ErrorKind, path: str, status: int) -> None:
        metrics.errors.labels(kind=kind.value).inc()
        if path.startswith("/retrieve"):
            metrics.requests.labels(endpoint=path, status=str(status)).inc()

    install_handlers(app, on_error)
    app.include_router(build_router(settings))
    app.add_middleware(
        Guard,
        token=token,
        max_body=settings.max_body_bytes,
        body_limits={"/feedback": 4 * settings.max_body_bytes},
        body_timeout_s=settings.body_timeout_s,
        draining=lambda: state.draining,
        on_error=on_error,
        admit=use_case.admit_or_shed,
        admit_paths=frozenset({"/retrieve", "/retrieve/batch"}),
        retry_after_s=settings.retry_after_s,
    )
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory: settings from CROPS_* environment variables."""
    from core.settings import limit_native_threads

    limit_native_threads(1)
    # The batcher thread needs the GIL back after every onnxruntime/faiss call; while the event loop
    # is busy it waited up to the default 5 ms switch interval each time. One fresh worker at 200 req/s
    # on the 1M bench index: 2.4 ms queued, 2.7 encoding, 2.8 searching per request, against 3.7 / 3.8
    # / 4.2 ms before (docs/results/overload_recovery_1worker{,_before}.md).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(ServiceSettings())
