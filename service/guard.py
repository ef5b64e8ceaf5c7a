"""What every request passes before any route sees it: the admin token, body size and body time limits.

A pure-ASGI middleware (outermost), so it acts before anything reads a body:

- ``/admin/*``: the token is checked from the headers first; a request without it is answered 401
  and its body is never read.
- ``POST /retrieve*``: the retrieve use case's admission decides from the headers whether the request
  can still be served in its deadline; if not it is answered 503 + Retry-After here, unread.
- Every body is read here, chunk by chunk, each chunk within ``body_timeout_s`` (else 408), up to the
  path's limit (else 413, also at once from ``Content-Length``), then replayed to the app.
- While the service drains (after SIGTERM) every response asks the client to close the connection,
  so callers move their keep-alive connections elsewhere before the process stops.

Slow *headers* are cut by the HTTP protocol (``service.protocol``): no ASGI app runs before they end.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from typing import Any

from core.errors import CropsError, ErrorKind
from service.errors import error_parts

ADMIN_TOKEN_HEADER = "x-crops-admin-token"
_JSON = (b"content-type", b"application/json")


def token_matches(headers: Callable[[str], str | None], token: bytes | None) -> bool:
    """Whether the request carries the admin token (``x-crops-admin-token`` or ``Authorization: Bearer``)."""
    if token is None:
        return False
    given = headers(ADMIN_TOKEN_HEADER)
    if given is None:
        auth = headers("authorization") or ""
        given = auth[7:] if auth.lower().startswith("bearer ") else None
    return given is not None and hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token)


def scope_headers(scope: dict[str, Any]) -> Callable[[str], str | None]:
    """``get(name)`` over the ASGI scope's raw headers (lower-case names, latin-1)."""
    raw = scope["headers"]

    def get(name: str) -> str | None:
        key = name.lower().encode("latin-1")
        for k, v in raw:
            if k == key:
                return str(v.decode("latin-1"))
        return None

    return get


class Guard:
    """ASGI middleware: admin token before the body, body size and time limits, drain."""

    def __init__(
        self,
        app: Any,
        *,
        token: bytes | None,
        max_body: int,
        body_limits: dict[str, int],
        body_timeout_s: float,
        draining: Callable[[], bool],
        on_error: Callable[[ErrorKind, str, int], None],
        admit: Callable[[Callable[[str], str | None], str], None] | None = None,
        admit_paths: frozenset[str] = frozenset(),
        retry_after_s: int = 1,
    ) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body
        self.body_limits = body_limits
        self.body_timeout_s = body_timeout_s
        self.draining = draining
        self.on_error = on_error
        self.admit = admit
        self.admit_paths = admit_paths
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        headers = scope_headers(scope)
        if path.startswith("/admin"):
            if self.token is None:
                await self._error(send, path, ErrorKind.UNAUTHORIZED, "admin features are off: set CROPS_ADMIN_TOKEN")
                return
            if not token_matches(headers, self.token):
                await self._error(send, path, ErrorKind.UNAUTHORIZED, "missing or wrong admin token")
                return
        if self.admit is not None and path in self.admit_paths and scope["method"] == "POST":
            # the cheapest place to refuse: before the body is read and before any routing
            try:
                self.admit(headers, path)
            except CropsError as exc:
                # keep the connection: callers hold few, and the unread body is skipped by the parser
                await self._error(send, path, exc.kind, exc.message, close=False)
                return
        limit = self.body_limits.get(path, self.max_body)
        declared = headers("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._error(send, path, ErrorKind.INVALID_INPUT, f"body over {limit} bytes", status=413)
            return
        body = b""
        if scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
            chunks: list[bytes] = []
            size = 0
            while True:
                try:
                    msg = await asyncio.wait_for(receive(), self.body_timeout_s)
                except asyncio.TimeoutError:
                    await self._error(send, path, ErrorKind.INVALID_INPUT, "body not received in time", status=408)
                    return
                if msg["type"] == "http.disconnect":
                    return
                chunk = msg.get("body", b"")
                size += len(chunk)
                if size > limit:
                    await self._error(send, path, ErrorKind.INVALID_INPUT, f"body over {limit} bytes", status=413)
                    return
                chunks.append(chunk)
                if not msg.get("more_body", False):
                    break
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return dict(await receive())

        if not self.draining():
            await self.app(scope, replay, send)
            return

        async def closing(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                msg = {**msg, "headers": [*msg.get("headers", []), (b"connection", b"close")]}
            await send(msg)

        await self.app(scope, replay, closing)

    async def _error(
        self, send: Any, path: str, kind: ErrorKind, message: str, status: int | None = None, close: bool = True
    ) -> None:
        code, payload, headers = error_parts(kind, message, retry_after_s=self.retry_after_s)
        code = status or code
        self.on_error(kind, path, code)
        raw = [_JSON, (b"content-length", str(len(payload)).encode())]
        if close:  # the body was not (fully) read: do not leave it to be parsed as the next request
            raw.append((b"connection", b"close"))
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": code, "headers": raw})
        await send({"type": "http.response.body", "body": payload})
