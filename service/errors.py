"""The ONE place where error kinds become HTTP status codes and JSON bodies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from core.errors import CropsError, ErrorKind

HTTP_STATUS: dict[ErrorKind, int] = {
    ErrorKind.INVALID_INPUT: 422,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.UNAUTHORIZED: 401,
    ErrorKind.CONFIG_INVALID: 422,
    ErrorKind.BUNDLE_INVALID: 409,
    ErrorKind.CHECKSUM_MISMATCH: 409,
    ErrorKind.INCOMPATIBLE: 409,
    ErrorKind.PARITY_FAILED: 409,
    ErrorKind.OVERLOADED: 503,
    ErrorKind.DEADLINE_EXCEEDED: 503,
    ErrorKind.BACKEND: 500,
}
# Kinds that mean "try again soon": answered with Retry-After.
RETRYABLE = {ErrorKind.OVERLOADED, ErrorKind.DEADLINE_EXCEEDED}


def error_parts(
    kind: ErrorKind, message: str, *, retry_after_s: int = 1, **extra: Any
) -> tuple[int, bytes, dict[str, str]]:
    """(status, JSON body, headers) of an error: the one mapping both the framework and the hot path use."""
    body = {"error": kind.value, "message": message, **extra}
    headers = {"Retry-After": str(retry_after_s)} if kind in RETRYABLE else {}
    return HTTP_STATUS.get(kind, 500), orjson.dumps(body), headers


def error_response(kind: ErrorKind, message: str, *, retry_after_s: int = 1, **extra: Any) -> Response:
    status, body, headers = error_parts(kind, message, retry_after_s=retry_after_s, **extra)
    return Response(body, status_code=status, headers=headers or None, media_type="application/json")


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(p) for p in loc if p != "body") or "body"


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """One readable line: ``top_k: Input should be less than or equal to 100; query: ...``."""
    parts = []
    for err in errors[:5]:
        parts.append(f"{_loc(err.get('loc', ()))}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def validation_details(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"loc": _loc(e.get("loc", ())), "msg": e.get("msg", "")} for e in errors[:20]]


def install_handlers(app: Any, on_error: Any) -> None:
    """Register handlers; ``on_error(kind)`` counts errors (metrics) wherever they are raised."""

    async def crops_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, CropsError)
        on_error(exc.kind, request.url.path, HTTP_STATUS.get(exc.kind, 500))
        retry = getattr(request.app.state, "retry_after_s", 1)
        details = getattr(exc, "details", None)
        extra = {"details": details} if details else {}
        return error_response(exc.kind, exc.message, retry_after_s=retry, **extra)

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        on_error(ErrorKind.INVALID_INPUT, request.url.path, 422)
        errors = exc.errors()
        return error_response(ErrorKind.INVALID_INPUT, validation_message(errors), details=validation_details(errors))

    async def http_error(request: Request, exc: Exception) -> Response:
        # Starlette's own errors (unparseable body 400, unknown path 404, wrong method 405): same body shape.
        assert isinstance(exc, StarletteHTTPException)
        kind = {404: ErrorKind.NOT_FOUND, 401: ErrorKind.UNAUTHORIZED}.get(exc.status_code, ErrorKind.INVALID_INPUT)
        on_error(kind, request.url.path, exc.status_code)
        body = {"error": kind.value, "message": str(exc.detail)}
        return Response(
            orjson.dumps(body),
            status_code=exc.status_code,
            media_type="application/json",
            headers=getattr(exc, "headers", None),
        )

    app.add_exception_handler(CropsError, crops_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
