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
                help="worker processes on this box, each on its own SO_REUSEPORT socket and running "
                "CROPS_BATCH_SLOTS (2) batch slots: one per two cores, or one per pod behind a balancer",
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
        import sys
        import tempfile

        from core.errors import CropsError, ErrorKind
        from service.protocol import TimedHttpToolsProtocol

        if (
            bundle is None
            and experiments is None
            and not os.environ.get("CROPS_BUNDLE")
            and not os.environ.get("CROPS_EXPERIMENTS")
        ):
            raise CropsError(ErrorKind.INVALID_INPUT, "give --bundle or --experiments (or CROPS_BUNDLE)")
        if balance is not None:  # scripts written for the removed dispatcher keep running
            typer.echo(
                f"warning: --balance {balance} is ignored (the kernel spreads connections over the workers)", err=True
            )
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
        from crops.workers import listen_socket, run_workers

        # Bind first: a port clash is one error line, and "serving on" is printed only once the port is
        # ours. Several workers each bind their own SO_REUSEPORT socket (crops.workers); this plain
        # socket, closed before they start, also refuses a port another server shares by SO_REUSEPORT.
        try:
            sock = listen_socket(host, port, reuse_port=False)
        except OSError as exc:
            raise CropsError(ErrorKind.INVALID_INPUT, f"cannot listen on {host}:{port}: {exc.strerror}") from None

        from service.app import app_from_env  # fail fast in this process on a bad bundle/config

        checked = app_from_env()
        stop_timeout_s = checked.state.crops.settings.drain_s + 35.0  # drain, then uvicorn's graceful 30 s
        config_kwargs: dict[str, object] = {
            "http": TimedHttpToolsProtocol,
            "log_level": log_level,
            "access_log": False,
            "timeout_keep_alive": 5,
            "timeout_graceful_shutdown": 30,
        }
        typer.echo(
            f"serving on http://{host}:{port} with {workers} worker(s)  (try: curl -s {host}:{port}/retrieve "
            "-H 'content-type: application/json' -d '{\"query\":\"cat video\"}')",
        )
        sys.stdout.flush()
        if workers == 1:  # serve the app already loaded here
            import uvicorn

            uvicorn.Server(uvicorn.Config(checked, **config_kwargs)).run(sockets=[sock])  # type: ignore[arg-type]
            return
        # The workers load their own copy: free this one (a 1M index is GBs) and the port before spawning.
        import asyncio
        import gc

        asyncio.run(checked.state.crops.stop())
        del checked
        gc.collect()
        sock.close()
        config_kwargs.update(app="service.app:app_from_env", factory=True)
        code = run_workers(config_kwargs, host, port, workers, stop_timeout_s=stop_timeout_s)
        if code:
            raise typer.Exit(code)
