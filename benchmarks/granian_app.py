"""The service's FastAPI app for granian (``granian --interface asgi --factory benchmarks.granian_app:create``,
from the repository root).

Settings come from the environment (``CROPS_BUNDLE`` ...), as with ``crops serve``; used by
``benchmarks.fleet`` to run the same app under granian side by side with uvicorn.
"""

from __future__ import annotations

from typing import Any


def create() -> Any:
    from service.app import create_app
    from service.settings import ServiceSettings

    return create_app(ServiceSettings())
