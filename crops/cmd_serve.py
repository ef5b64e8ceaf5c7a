"""``crops serve``: run the FastAPI service under uvicorn."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        bundle: Annotated[Path | None, typer.Option("--bundle", help="serve one bundle as arm 'default'")] = None,
        experiments: Annotated[
            Path | None, typer.Option("--experiments", help="A/B config file naming several bundles")
        ] = None,
        host: Annotated[str, typer.Option()] = "127.0.0.1",
        port: Annotated[int, typer.Option(envvar="PORT", min=1, max=65535)] = 8000,
        workers: Annotated[int, typer.Option(min=1, max=64)] = 1,
        redis_url: Annotated[str | None, typer.Option(envvar="CROPS_REDIS_URL")] = None,
        log_level: Annotated[str, typer.Option()] = "warning",
    ) -> None:
        """Serve /retrieve. Settings not given here come from CROPS_* environment variables."""
        import uvicorn

        from core.errors import CropsError, ErrorKind

        if bundle is None and experiments is None and not os.environ.get("CROPS_BUNDLE") \
                and not os.environ.get("CROPS_EXPERIMENTS"):
            raise CropsError(ErrorKind.INVALID_INPUT, "give --bundle or --experiments (or CROPS_BUNDLE)")
        # Settings travel by environment so every uvicorn worker process builds the same app.
        if bundle is not None:
            os.environ["CROPS_BUNDLE"] = str(bundle.resolve())
        if experiments is not None:
            os.environ["CROPS_EXPERIMENTS"] = str(experiments.resolve())
        if redis_url:
            os.environ["CROPS_REDIS_URL"] = redis_url
        from service.app import app_from_env  # fail fast in this process on a bad bundle/config

        app_from_env()
        typer.echo(f"serving on http://{host}:{port}  (try: curl -s {host}:{port}/retrieve "
                   "-H 'content-type: application/json' -d '{\"query\":\"cat video\"}')")
        uvicorn.run("service.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                    log_level=log_level, access_log=False)
