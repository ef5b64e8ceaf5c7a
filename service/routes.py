"""The HTTP routes: parse, call the use case or the state, answer. No logic of their own."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import PlainTextResponse, Response

from core.errors import CropsError, ErrorKind
from core.feedback import FeedbackBatch
from service.deps import AdminDep, StateDep, UseCaseDep, require_admin
from service.errors import validation_details, validation_message
from service.experiments import parse_config
from service.retrieve import DEADLINE_HEADER
from service.schemas import BatchResponse, ErrorBody, FeedbackAccepted, ReloadRequest, RetrieveResponse, request_models
from service.settings import ServiceSettings

FORCE_ARM_HEADER = "x-crops-force-arm"
JSON = "application/json"
_HEADER_UNSAFE = re.compile(r"[^!-~]")
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "admin token missing or wrong (QA force-arm header)"},
    408: {"model": ErrorBody, "description": "the body did not arrive in time"},
    413: {"model": ErrorBody, "description": "body too large"},
    422: {"model": ErrorBody, "description": "invalid input (message says which field and why)"},
    503: {"model": ErrorBody, "description": "overloaded (predicted to miss its deadline) or past it; see Retry-After"},
}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type=JSON)


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI requestBody for a route that validates raw bytes itself (nested models inlined)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.split("/")[-1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return {"requestBody": {"required": True, "content": {JSON: {"schema": inline(schema)}}}}


def _parse(model: type[BaseModel], body: bytes) -> Any:
    """Validate raw JSON bytes in one pydantic-core call (whatever the content type said)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        raise _Invalid(validation_message(errors), validation_details(errors)) from None


class _Invalid(CropsError):
    def __init__(self, message: str, details: list[dict[str, Any]]) -> None:
        super().__init__(ErrorKind.INVALID_INPUT, message)
        self.details = details


def build_router(settings: ServiceSettings) -> APIRouter:
    RetrieveRequest, BatchRequest = request_models(settings.max_query_chars, settings.max_batch_items)
    router = APIRouter()

    def force_arm(request: Request, admin: bool) -> str | None:
        force = request.headers.get(FORCE_ARM_HEADER)
        if force is not None and not admin:
            raise CropsError(ErrorKind.UNAUTHORIZED, f"{FORCE_ARM_HEADER} needs the admin token")
        return force

    @router.post(
        "/retrieve",
        response_model=None,
        responses={200: {"model": RetrieveResponse}, **_ERRORS},
        openapi_extra=_body_schema(RetrieveRequest),
    )
    async def retrieve(request: Request, use_case: UseCaseDep, admin: AdminDep) -> Response:
        """Top-k candidates for one query, from the arm the user is assigned to."""
        t0 = time.perf_counter()
        force = force_arm(request, admin)
        deadline_at = use_case.deadline(t0, request.headers.get(DEADLINE_HEADER))  # admitted by the guard
        req = _parse(RetrieveRequest, await request.body())
        out = await use_case.one(req, force, t0, deadline_at)
        t = out["timings"]
        return _json(
            out,
            headers={
                "x-request-id": out["request_id"],
                "x-crops-arm": out["arm"],
                "x-crops-bundle": _HEADER_UNSAFE.sub("?", out["bundle_id"]),
                "server-timing": (
                    f"normalize;dur={t['normalize_ms']}, cache;dur={t['cache_ms']}, queue;dur={t['queue_ms']}, "
                    f"encode;dur={t['encode_ms']}, search;dur={t['search_ms']}, total;dur={t['total_ms']}"
                ),
            },
        )

    @router.post(
        "/retrieve/batch",
        response_model=None,
        responses={200: {"model": BatchResponse}, **_ERRORS},
        openapi_extra=_body_schema(BatchRequest),
    )
    async def retrieve_batch(request: Request, use_case: UseCaseDep, admin: AdminDep) -> Response:
        """Several queries in one call (each assigned and cached on its own; encoded in micro-batches)."""
        t0 = time.perf_counter()
        force = force_arm(request, admin)
        body = _parse(BatchRequest, await request.body())
        # the guard checked the queue ahead; the batch is admitted as one unit once its size is known
        results = await use_case.many(body.items, force, t0, request.headers.get(DEADLINE_HEADER))
        total = round((time.perf_counter() - t0) * 1e3, 3)
        return _json({"results": results}, headers={"server-timing": f"total;dur={total}"})

    @router.post(
        "/feedback",
        status_code=202,
        response_model=None,
        responses={202: {"model": FeedbackAccepted}, **_ERRORS},
        openapi_extra=_body_schema(FeedbackBatch),
    )
    async def feedback(request: Request, state: StateDep) -> Response:
        """What users did with exposed videos (one event per exposed video), to the feedback log."""
        batch = _parse(FeedbackBatch, await request.body())
        accepted = sum(state.feedback.record(e.model_dump()) for e in batch.events)
        return _json({"accepted": accepted, "dropped": len(batch.events) - accepted}, status=202)

    @router.get("/healthz")
    async def healthz() -> Response:
        """Liveness: the process answers."""
        return _json({"status": "ok"})

    @router.get("/readyz", responses={503: {"model": ErrorBody}})
    async def readyz(state: StateDep) -> Response:
        """Readiness: every bundle of the current config is loaded and warmed up, and not draining."""
        view = state.view
        if not view.runtimes or state.draining:
            return _json({"status": "draining" if state.draining else "not ready"}, 503)
        return _json(
            {
                "status": "ready",
                "config_version": view.config.version,
                "bundles": {n: rt.bundle_id for n, rt in view.runtimes.items()},
            }
        )

    @router.get("/info")
    async def info(state: StateDep, admin: AdminDep) -> Response:
        """Arms and bundle ids; with the admin token also paths, manifests, config, last errors, limits."""
        return _json(state.info(full=admin))

    @router.get("/metrics", response_class=PlainTextResponse)
    async def prometheus_metrics(state: StateDep) -> Response:
        """Prometheus exposition (crops_* metrics)."""
        body, ctype = state.metrics.render()
        return Response(body, media_type=ctype)

    admin_errors: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorBody, "description": "the body is not parseable JSON"},
        401: _ERRORS[401],
        404: {"model": ErrorBody},
        409: {"model": ErrorBody},
        413: _ERRORS[413],
        422: _ERRORS[422],
    }

    @router.post(
        "/admin/reload",
        responses={200: {"description": "reloaded"}, **admin_errors},
        dependencies=[Depends(require_admin)],
    )
    async def admin_reload(state: StateDep, body: ReloadRequest | None = None) -> Response:
        """Reload a bundle (re-verify, warm up, swap here), make it the desired state, report each worker.

        A failed reload keeps the old bundle serving; the reason is in the 409 answer and /info.
        """
        body = body or ReloadRequest()
        path = Path(body.path) if body.path else None
        return _json(await state.reload(body.bundle, path))

    @router.put(
        "/admin/config",
        responses={200: {"description": "applied"}, **admin_errors},
        dependencies=[Depends(require_admin)],
    )
    async def admin_config(state: StateDep, body: dict[str, Any]) -> Response:
        """Apply a new (higher-version) A/B config here, make it the desired state, report each worker."""
        # stdlib json: orjson refuses integers past 64 bits, which validation must answer (422), not crash on
        cfg = parse_config(json.dumps(body), source="PUT /admin/config")
        out = await state.push_config(cfg)
        return _json({**out, "arms": state.view.assigner.arm_names})

    return router
