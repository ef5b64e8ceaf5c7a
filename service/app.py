"""The FastAPI app: /retrieve, /retrieve/batch, health, /info, /metrics and the admin endpoints.

``create_app(settings)`` builds everything (loads and warms the bundles, so a bad bundle fails at
start); ``app_from_env()`` is the uvicorn factory ``crops serve`` uses (one app per worker).
"""

# No `from __future__ import annotations`: FastAPI must resolve the request models built in create_app.

import asyncio
import hmac
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request
from starlette.responses import PlainTextResponse, Response

from core.errors import CropsError, ErrorKind
from core.normalize import normalize_text
from service.cache import embedding_key, result_key
from service.errors import install_handlers
from service.experiments import parse_config
from service.hotpath import HeaderGet, RetrieveFront
from service.schemas import (
    BatchResponse,
    ErrorBody,
    ReloadRequest,
    RetrieveResponse,
    request_models,
)
from service.settings import ServiceSettings
from service.state import ServiceState

log = logging.getLogger("service")

FORCE_ARM_HEADER = "x-crops-force-arm"
ADMIN_TOKEN_HEADER = "x-crops-admin-token"
JSON = "application/json"
_HEADER_UNSAFE = re.compile(r"[^!-~]")
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "the body is not parseable"},
    401: {"model": ErrorBody, "description": "admin token missing or wrong (QA force-arm header)"},
    422: {"model": ErrorBody, "description": "invalid input (message says which field and why)"},
    503: {"model": ErrorBody, "description": "overloaded or past the deadline; see Retry-After"},
}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type=JSON)


def create_app(settings: ServiceSettings) -> FastAPI:
    state = ServiceState(settings)
    metrics = state.metrics
    RetrieveRequest, BatchRequest = request_models(settings.max_query_chars, settings.max_batch_items)
    deadline_s = settings.deadline_ms / 1000.0
    token = settings.admin_token.get_secret_value().encode() if settings.admin_token else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        yield
        await state.stop()

    app = FastAPI(
        title="CroPS retrieval service",
        version="1",
        description="Dense retrieval of short-video candidates; A/B arms are bundles.",
        lifespan=lifespan,
    )
    app.state.crops = state
    app.state.retry_after_s = settings.retry_after_s

    def on_error(kind: ErrorKind, path: str, status: int) -> None:
        metrics.errors.labels(kind=kind.value).inc()
        if path.startswith("/retrieve"):
            metrics.requests.labels(endpoint=path, status=str(status)).inc()

    install_handlers(app, on_error)

    def check_admin(header: HeaderGet) -> None:
        if token is None:
            raise CropsError(ErrorKind.UNAUTHORIZED, "admin features are off: set CROPS_ADMIN_TOKEN")
        given = header(ADMIN_TOKEN_HEADER)
        if given is None:
            auth = header("authorization") or ""
            given = auth[7:] if auth.lower().startswith("bearer ") else None
        if not given or not hmac.compare_digest(given.encode(), token):
            raise CropsError(ErrorKind.UNAUTHORIZED, "missing or wrong admin token")

    def admit() -> None:
        if state.in_flight >= settings.max_in_flight:
            metrics.shed.labels(reason="in_flight").inc()
            raise CropsError(ErrorKind.OVERLOADED, f"overloaded: {state.in_flight} requests in flight; retry shortly")
        state.in_flight += 1
        metrics.in_flight.inc()

    def release() -> None:
        state.in_flight -= 1
        metrics.in_flight.dec()

    async def serve_one(
        req: Any, force: str | None, t0: float, deadline_at: float, bulk: bool = False
    ) -> dict[str, Any]:
        view = state.view  # one consistent snapshot for the whole request
        t_start = time.perf_counter()  # == t0 for /retrieve; later for the items of a batch
        rid = req.request_id or os.urandom(12).hex()
        unit = req.user_id or rid
        norm = normalize_text(req.query)
        if not norm:
            raise CropsError(ErrorKind.INVALID_INPUT, "query: nothing left to search after normalisation")
        t_norm = time.perf_counter()
        a = view.assigner.assign(unit, force)
        rt = view.runtimes[a.bundle]
        key = result_key(rt.bundle_id, a.nprobe, norm)
        cached = await state.cache.get_result(key)
        t_cache = time.perf_counter()
        queue_ms = encode_ms = search_ms = 0.0
        if cached is not None:
            ids, scores = cached
        else:
            # Single flight: concurrent misses of one key share one encode+search.
            fut = state.pending.get(key)
            owner = fut is None
            vec = None
            ekey = embedding_key(rt.bundle_id, norm)
            if fut is None:
                vec = state.cache.get_embedding(ekey)
                fut = rt.submit(norm, vec, a.nprobe, bulk=bulk)
                state.pending[key] = fut
                fut.add_done_callback(lambda _f: state.pending.pop(key, None))
            try:
                # shield: one waiter's deadline must not cancel the others' shared future
                jr = await asyncio.wait_for(asyncio.shield(fut), deadline_at - time.perf_counter())
            except asyncio.TimeoutError:
                metrics.shed.labels(reason="deadline").inc()
                raise CropsError(
                    ErrorKind.DEADLINE_EXCEEDED, f"deadline of {settings.deadline_ms:g} ms exceeded"
                ) from None
            ids, scores = jr.ids, jr.scores
            queue_ms, encode_ms, search_ms = jr.queue_ms, jr.encode_ms, jr.search_ms
            if owner:
                if vec is None:
                    state.cache.put_embedding(ekey, jr.vector)
                await state.cache.put_result(key, (ids, scores))
        k = req.top_k
        ids, scores = ids[:k], scores[:k]
        t_end = time.perf_counter()
        total_ms = (t_end - t0) * 1e3
        timings = {
            "normalize_ms": round((t_norm - t_start) * 1e3, 3),
            "cache_ms": round((t_cache - t_norm) * 1e3, 3),
            "queue_ms": round(queue_ms, 3),
            "encode_ms": round(encode_ms, 3),
            "search_ms": round(search_ms, 3),
            "total_ms": round(total_ms, 3),
            "cached": cached is not None,
        }
        st = metrics.stage(a.arm)
        st["normalize"].observe(t_norm - t_start)
        st["cache"].observe(t_cache - t_norm)
        st["total"].observe(t_end - t0)
        if cached is None:
            st["queue"].observe(queue_ms / 1e3)
            st["encode"].observe(encode_ms / 1e3)
            st["search"].observe(search_ms / 1e3)
        if state.exposure.enabled:
            state.exposure.record(
                {
                    "request_id": rid,
                    "unit": unit,
                    "user_id": req.user_id,
                    "ts": int(time.time() * 1000),
                    "query": req.query,
                    "normalized_query": norm,
                    "arm": a.arm,
                    "experiments": [list(p) for p in a.experiments],
                    "bundle_id": rt.bundle_id,
                    "video_ids": ids,
                    "scores": scores,
                }
            )
        return {
            "request_id": rid,
            "arm": a.arm,
            "bundle_id": rt.bundle_id,
            "candidates": [{"video_id": i, "score": s} for i, s in zip(ids, scores, strict=True)],
            "timings": timings,
        }

    def force_arm(header: HeaderGet) -> str | None:
        force = header(FORCE_ARM_HEADER)
        if force is not None:
            check_admin(header)
        return force

    requests_ok = metrics.requests.labels(endpoint="/retrieve", status="200")

    async def handle_retrieve(body: Any, header: HeaderGet) -> tuple[bytes, dict[str, str]]:
        """/retrieve's work, shared by the hot path (service.hotpath) and the FastAPI route."""
        t0 = time.perf_counter()
        force = force_arm(header)
        admit()
        try:
            out = await serve_one(body, force, t0, t0 + deadline_s)
        finally:
            release()
        requests_ok.inc()
        t = out["timings"]
        return orjson.dumps(out), {
            "x-request-id": out["request_id"],
            "x-crops-arm": out["arm"],
            "x-crops-bundle": _HEADER_UNSAFE.sub("?", out["bundle_id"]),
            "server-timing": (
                f"normalize;dur={t['normalize_ms']}, cache;dur={t['cache_ms']}, queue;dur={t['queue_ms']}, "
                f"encode;dur={t['encode_ms']}, search;dur={t['search_ms']}, total;dur={t['total_ms']}"
            ),
        }

    @app.post("/retrieve", response_model=None, responses={200: {"model": RetrieveResponse}, **_ERRORS})
    async def retrieve(body: RetrieveRequest, request: Request) -> Response:  # type: ignore[valid-type]
        """Top-k candidates for one query, from the arm the user is assigned to."""
        payload, headers = await handle_retrieve(body, request.headers.get)
        return Response(payload, headers=headers, media_type=JSON)

    @app.post("/retrieve/batch", response_model=None, responses={200: {"model": BatchResponse}, **_ERRORS})
    async def retrieve_batch(body: BatchRequest, request: Request) -> Response:  # type: ignore[valid-type]
        """Several queries in one call (each assigned and cached on its own; encoded in micro-batches)."""
        t0 = time.perf_counter()
        force = force_arm(request.headers.get)
        admit()
        try:
            results = await asyncio.gather(
                *(serve_one(item, force, t0, t0 + deadline_s, bulk=True) for item in body.items)  # type: ignore[attr-defined]
            )
        finally:
            release()
        metrics.requests.labels(endpoint="/retrieve/batch", status="200").inc()
        total = round((time.perf_counter() - t0) * 1e3, 3)
        return _json({"results": results}, headers={"server-timing": f"total;dur={total}"})

    @app.get("/healthz")
    async def healthz() -> Response:
        """Liveness: the process answers."""
        return _json({"status": "ok"})

    @app.get("/readyz", responses={503: {"model": ErrorBody}})
    async def readyz() -> Response:
        """Readiness: every bundle of the current config is loaded and warmed up."""
        view = state.view
        if not view.runtimes:
            return _json({"status": "not ready"}, 503)
        return _json(
            {
                "status": "ready",
                "config_version": view.config.version,
                "bundles": {n: rt.bundle_id for n, rt in view.runtimes.items()},
            }
        )

    @app.get("/info")
    async def info() -> Response:
        """Arms, their bundles' manifest summaries, config version, last reload/config outcome."""
        return _json(state.info())

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus_metrics() -> Response:
        """Prometheus exposition (crops_* metrics)."""
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    @app.post(
        "/admin/reload",
        responses={
            200: {"description": "reloaded"},
            400: _ERRORS[400],
            401: _ERRORS[401],
            404: {"model": ErrorBody},
            409: {"model": ErrorBody},
        },
    )
    async def admin_reload(request: Request, body: ReloadRequest | None = None) -> Response:
        """Reload a bundle (re-verify checksums and model↔index, warm up, swap atomically).

        A failed reload keeps the old bundle serving; the reason is in the 409 answer and /info.
        """
        check_admin(request.headers.get)
        body = body or ReloadRequest()
        path = Path(body.path) if body.path else None
        return _json(await state.reload(body.bundle, path))

    @app.put(
        "/admin/config",
        responses={
            200: {"description": "applied"},
            400: _ERRORS[400],
            401: _ERRORS[401],
            409: {"model": ErrorBody},
            422: _ERRORS[422],
        },
    )
    async def admin_config(request: Request, body: dict[str, Any]) -> Response:
        """Apply a new (higher-version) A/B config here and publish it to Redis for other workers."""
        check_admin(request.headers.get)
        cfg = parse_config(orjson.dumps(body), source="PUT /admin/config")
        await state.push_config(cfg)
        return _json({"config_version": cfg.version, "arms": state.view.assigner.arm_names})

    # Outermost, so the hot path skips every framework layer (errors it answers itself).
    app.add_middleware(
        RetrieveFront,
        model=RetrieveRequest,
        handler=handle_retrieve,
        on_error=on_error,
        retry_after_s=settings.retry_after_s,
        enabled=settings.fast_path,
    )
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory: settings from CROPS_* environment variables."""
    from core.settings import limit_native_threads

    limit_native_threads(1)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(ServiceSettings())
