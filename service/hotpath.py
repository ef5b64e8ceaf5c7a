"""The pure-ASGI front of the app: POST /retrieve without the framework's per-request work.

``/retrieve`` is the one endpoint on the hot path. Served through FastAPI, each request also pays
for routing over every route, dependency solving, a stdlib ``json.loads`` and a second validation
pass, and Starlette's response object (about 0.1 ms of a worker's CPU; ``docs/explanation/service.md``). This
front answers it directly: pydantic-core parses and validates the raw bytes in one call
(``model_validate_json``), the same handler the FastAPI route calls does the work, and the answer
goes out as two ASGI messages. Everything else passes through to FastAPI, which still declares
``/retrieve`` (OpenAPI schema) and serves it when the front is off (``CROPS_FAST_PATH=false``);
the API tests run against both and must see the same answers.

It also reads ``/retrieve*`` bodies as JSON whatever their content type: ``curl -d '{...}'`` labels
its body form-encoded, and the API only speaks JSON.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from core.errors import CropsError, ErrorKind
from service.errors import error_parts, validation_details, validation_message

HeaderGet = Callable[[str], "str | None"]
Handler = Callable[[Any, HeaderGet], Awaitable[tuple[bytes, dict[str, str]]]]
OnError = Callable[[ErrorKind, str, int], None]
_JSON = (b"content-type", b"application/json")
MAX_BODY = 1 << 20  # a /retrieve body is a query of at most a few KB: refuse a flood early


def scope_header_getter(scope: dict[str, Any]) -> HeaderGet:
    """``get(name)`` over the ASGI scope's raw headers (lower-case names, latin-1)."""
    raw = scope["headers"]

    def get(name: str) -> str | None:
        key = name.lower().encode("latin-1")
        for k, v in raw:
            if k == key:
                return str(v.decode("latin-1"))
        return None

    return get


class RetrieveFront:
    """ASGI middleware: serves POST /retrieve itself (when ``enabled``), passes the rest on."""

    def __init__(
        self,
        app: Any,
        *,
        model: type[BaseModel],
        handler: Handler,
        on_error: OnError,
        retry_after_s: int = 1,
        enabled: bool = True,
    ) -> None:
        self.app = app
        self.model = model
        self.handler = handler
        self.on_error = on_error
        self.retry_after_s = retry_after_s
        self.enabled = enabled

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith("/retrieve"):
            await self.app(scope, receive, send)
            return
        if self.enabled and scope["path"] == "/retrieve":
            await self._retrieve(scope, receive, send)
            return
        # the framework path: label the body JSON, whatever the client said
        ctype = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
        if b"json" not in ctype.lower():
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = dict(scope, headers=[*headers, _JSON])
        await self.app(scope, receive, send)

    async def _retrieve(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                await self._error(send, ErrorKind.INVALID_INPUT, f"body larger than {MAX_BODY} bytes")
                return
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            req = self.model.model_validate_json(body)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            await self._error(
                send, ErrorKind.INVALID_INPUT, validation_message(errors), details=validation_details(errors)
            )
            return
        try:
            payload, headers = await self.handler(req, scope_header_getter(scope))
        except CropsError as exc:
            await self._error(send, exc.kind, exc.message)
            return
        raw = [_JSON, (b"content-length", str(len(payload)).encode())]
        raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": payload})

    async def _error(self, send: Any, kind: ErrorKind, message: str, **extra: Any) -> None:
        status, payload, headers = error_parts(kind, message, retry_after_s=self.retry_after_s, **extra)
        self.on_error(kind, "/retrieve", status)
        raw = [_JSON, (b"content-length", str(len(payload)).encode())]
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": payload})
