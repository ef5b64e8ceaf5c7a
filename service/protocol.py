"""uvicorn's HTTP protocol with a header timeout (uvicorn has none: a client that connects and never
finishes its headers would hold the connection for ever).

``crops serve`` passes this class as uvicorn's ``http`` protocol (its documented extension point). The
timer starts when a connection opens and again at the first byte of each request, and stops when the
headers are complete; idle keep-alive connections between requests stay under uvicorn's own
``timeout_keep_alive``. Body timeouts are the ASGI guard's (``service.guard``).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: Seconds a request's headers may take (``CROPS_HEADER_TIMEOUT_S``; read once per process).
HEADER_TIMEOUT_S = float(os.environ.get("CROPS_HEADER_TIMEOUT_S", "5"))


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """httptools protocol that closes a connection whose request headers do not arrive in time."""

    _header_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT_S, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
