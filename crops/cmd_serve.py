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
        workers: Annotated[
            int,
            typer.Option(
                min=1,
                max=64,
                help="worker processes on this box (uvicorn's own); behind a balancer run one per core or pod",
            ),
        ] = 1,
        redis_url: Annotated[str | None, typer.Option(envvar="CROPS_REDIS_URL")] = None,
        log_level: Annotated[str, typer.Option()] = "warning",
        balance: Annotated[
            str | None, typer.Option(hidden=True, help="removed: balancing is uvicorn's or the balancer's")
        ] = None,
    ) -> None:
        """Serve /retrieve. Settings not given here come from CROPS_* environment variables."""
        from core.settings import limit_native_threads

        # Before numpy/faiss load anywhere (workers inherit it): one BLAS/OpenMP thread per worker.
        limit_native_threads(1)
        import socket
        import sys
        import tempfile

        from core.errors import CropsError, ErrorKind

        if (
            bundle is None
            and experiments is None
            and not os.environ.get("CROPS_BUNDLE")
            and not os.environ.get("CROPS_EXPERIMENTS")
        ):
            raise CropsError(ErrorKind.INVALID_INPUT, "give --bundle or --experiments (or CROPS_BUNDLE)")
        if balance is not None:  # scripts written for the removed dispatcher keep running
            typer.echo(f"warning: --balance {balance} is ignored (workers share uvicorn's socket)", err=True)
        # Settings travel by environment so every worker process builds the same app.
        if bundle is not None:
            os.environ["CROPS_BUNDLE"] = str(bundle.resolve())
        if experiments is not None:
            os.environ["CROPS_EXPERIMENTS"] = str(experiments.resolve())
        if redis_url:
            os.environ["CROPS_REDIS_URL"] = redis_url
        if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Several workers: each writes its metrics here and /metrics sums them (any worker answers).
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="crops-metrics-")
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # the image sets one under a fresh tmpfs
            Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
        if workers > 1 and not os.environ.get("CROPS_REDIS_URL") and not os.environ.get("CROPS_STATE_DIR"):
            # Without Redis the workers share the desired state (and report convergence) through a folder.
            os.environ["CROPS_STATE_DIR"] = tempfile.mkdtemp(prefix="crops-state-")
        # Bind first: a port clash is one error line, and "serving on" is printed only once we hold the port.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise CropsError(ErrorKind.INVALID_INPUT, f"cannot listen on {host}:{port}: {exc.strerror}") from None
        sock.listen(2048)
        sock.set_inheritable(True)

        from service.app import app_from_env  # fail fast in this process on a bad bundle/config

        checked = app_from_env()
        # one worker serves the app already loaded here; several load their own (uvicorn's factory)
        target: object = checked if workers == 1 else "service.app:app_from_env"
        if workers > 1:  # the workers load their own copy: free this one (a 1M index is GBs) before spawning
            import asyncio
            import gc

            asyncio.run(checked.state.crops.stop())
            del checked
            gc.collect()
        import uvicorn
        from uvicorn.supervisors import Multiprocess

        from service.protocol import TimedHttpToolsProtocol

        config = uvicorn.Config(
            target,  # type: ignore[arg-type]
            factory=workers > 1,
            workers=workers,
            http=TimedHttpToolsProtocol,
            log_level=log_level,
            access_log=False,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=30,
        )
        typer.echo(
            f"serving on http://{host}:{port} with {workers} worker(s)  (try: curl -s {host}:{port}/retrieve "
            "-H 'content-type: application/json' -d '{\"query\":\"cat video\"}')",
        )
        sys.stdout.flush()
        if workers > 1:
            Multiprocess(config, sockets=[sock]).run()
        else:
            uvicorn.Server(config).run(sockets=[sock])
