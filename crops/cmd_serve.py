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
        if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Several workers: each writes its metrics here and /metrics sums them (any worker answers).
            import tempfile

            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="crops-metrics-")
        from service.app import app_from_env  # fail fast in this process on a bad bundle/config

        app_from_env()
        typer.echo(f"serving on http://{host}:{port}  (try: curl -s {host}:{port}/retrieve "
                   "-H 'content-type: application/json' -d '{\"query\":\"cat video\"}')")
        uvicorn.run("service.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                    log_level=log_level, access_log=False)

    @app.command("exposures")
    def exposures(
        out: Annotated[Path, typer.Option("--out", help="search_log parquet to write")],
        jsonl: Annotated[Path | None, typer.Option(help="JSONL exposure log (CROPS_EXPOSURE_JSONL)")] = None,
        redis_url: Annotated[str | None, typer.Option(help="read the Redis exposure stream instead")] = None,
        prefix: Annotated[str, typer.Option(help="Redis key prefix (CROPS_REDIS_PREFIX)")] = "crops:",
        stage: Annotated[str, typer.Option(help="stage written for every candidate")] = "rank_unexposed",
    ) -> None:
        """Convert the service's exposure log into a search_log parquet (one row per returned candidate)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from core.atomic import atomic_write_bytes
        from core.errors import CropsError, ErrorKind
        from service.exposure import read_jsonl, read_stream, to_search_log

        if (jsonl is None) == (redis_url is None):
            raise CropsError(ErrorKind.INVALID_INPUT, "give exactly one of --jsonl or --redis-url")
        if stage not in ("prerank_filtered", "rank_unexposed", "exposed"):
            raise CropsError(ErrorKind.INVALID_INPUT, f"unknown stage {stage!r}")
        if jsonl is not None and not jsonl.is_file():
            raise CropsError(ErrorKind.NOT_FOUND, f"{jsonl} does not exist")
        records = read_jsonl(jsonl) if jsonl is not None else read_stream(str(redis_url), prefix)
        table = to_search_log(records, stage=stage)
        out.parent.mkdir(parents=True, exist_ok=True)
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        atomic_write_bytes(out, buf.getvalue().to_pybytes())
        typer.echo(f"{table.num_rows} search_log rows from {len({*table.column('request_id').to_pylist()})} "
                   f"requests -> {out}")
