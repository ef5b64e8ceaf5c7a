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

    @app.command("exposures")
    def exposures(
        out: Annotated[
            Path,
            typer.Option("--out", help="a folder (search_log.parquet, rec_log.parquet, join.json) or one "
                                       "search_log .parquet file"),
        ],
        jsonl: Annotated[Path | None, typer.Option(help="JSONL exposure log (CROPS_EXPOSURE_JSONL)")] = None,
        redis_url: Annotated[
            str | None, typer.Option(help="read the Redis exposure stream (and <prefix>feedback) instead")
        ] = None,
        prefix: Annotated[str, typer.Option(help="Redis key prefix (CROPS_REDIS_PREFIX)")] = "crops:",
        feedback_jsonl: Annotated[
            list[Path] | None, typer.Option(help="JSONL feedback log(s) of POST /feedback (repeatable)")
        ] = None,
        stage: Annotated[
            str, typer.Option(help="stage of returned candidates without a feedback event (exposed: all were shown)")
        ] = "rank_unexposed",
        max_delay_s: Annotated[
            float, typer.Option(min=0, help="drop events later than this after their impression's first event")
        ] = 86_400.0,
        clock: Annotated[
            str, typer.Option(help="a request's ts: feedback (the ranking side's event time) or service")
        ] = "feedback",
    ) -> None:
        """Join the service's exposure log with feedback events into search_log / rec_log tables for
        `crops mine` (one search_log row per returned candidate; exposed, clicked and played ones from
        the events). Bad, unknown, duplicate or late events are dropped and counted, never fatal."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from core.atomic import atomic_write_bytes, atomic_write_json
        from core.errors import CropsError, ErrorKind
        from online.joinlogs import join_logs, read_jsonl_records, read_stream_records
        from service.exposure import read_jsonl, read_stream, to_search_log

        if (jsonl is None) == (redis_url is None):
            raise CropsError(ErrorKind.INVALID_INPUT, "give exactly one of --jsonl or --redis-url")
        if stage not in ("prerank_filtered", "rank_unexposed", "exposed"):
            raise CropsError(ErrorKind.INVALID_INPUT, f"unknown stage {stage!r}")
        if clock not in ("feedback", "service"):
            raise CropsError(ErrorKind.INVALID_INPUT, f"--clock takes feedback or service, not {clock!r}")
        if jsonl is not None and not jsonl.is_file():
            raise CropsError(ErrorKind.NOT_FOUND, f"{jsonl} does not exist")
        for f in feedback_jsonl or []:
            if not f.is_file() and not f.with_suffix(f.suffix + ".1").is_file():
                raise CropsError(ErrorKind.NOT_FOUND, f"{f} does not exist")

        def parquet(table: pa.Table, path: Path) -> None:
            buf = pa.BufferOutputStream()
            pq.write_table(table, buf)
            atomic_write_bytes(path, buf.getvalue().to_pybytes())

        with_feedback = bool(feedback_jsonl) or redis_url is not None
        if stage == "exposed":  # the caller states every returned candidate was shown: no join
            if feedback_jsonl:
                raise CropsError(ErrorKind.INVALID_INPUT, "--stage exposed says every candidate was shown; "
                                 "with feedback the events say which were (drop one of the two)")
            records = read_jsonl(jsonl) if jsonl is not None else read_stream(str(redis_url), prefix)
            table = to_search_log(records, stage=stage)
            target = out if out.suffix == ".parquet" else out / "search_log.parquet"
            parquet(table, target)
            typer.echo(f"{table.num_rows} search_log rows -> {target}")
            return
        try:
            if jsonl is not None:
                exp = read_jsonl_records(jsonl)
                events = (e for f in (feedback_jsonl or []) for e in read_jsonl_records(f))
            else:
                exp = read_stream_records(str(redis_url), prefix + "exposures")
                events = (e for src in ([read_stream_records(str(redis_url), prefix + "feedback")] +
                                        [read_jsonl_records(f) for f in (feedback_jsonl or [])]) for e in src)
            search, rec, st = join_logs(exp, events, unexposed_stage=stage, max_delay_ms=round(max_delay_s * 1000),
                                        clock=clock)
        except OSError as exc:
            raise CropsError(ErrorKind.BACKEND, f"reading the logs: {exc}") from exc
        except Exception as exc:  # redis errors and the like: one line, not a traceback
            if type(exc).__module__.startswith("redis"):
                raise CropsError(ErrorKind.BACKEND, f"reading the Redis streams: {exc}") from exc
            raise
        if out.suffix == ".parquet":
            parquet(search, out)
        else:
            parquet(search, out / "search_log.parquet")
            parquet(rec, out / "rec_log.parquet")
            atomic_write_json(out / "join.json", st.as_dict())
        d = st.as_dict()
        typer.echo(f"{d['search_rows']} search_log rows ({d['exposed_rows']} exposed, {d['clicked_rows']} clicked) "
                   f"from {d['exposure_records']} requests, {d['rec_rows']} rec_log rows -> {out}")
        if with_feedback:
            typer.echo(f"feedback: {d['feedback_events']} events, {d['requests_with_feedback']} requests with "
                       f"feedback; dropped {d['dropped_total']} " +
                       ", ".join(f"{k}={v}" for k, v in d["dropped"].items() if v))
            for e in d["first_errors"]:
                typer.echo(f"  dropped: {e}", err=True)

    @app.command("serve-bench")
    def serve_bench(
        bundle: Annotated[Path, typer.Option("--bundle", help="bundle to serve")],
        workers: Annotated[str, typer.Option(help="comma-separated worker counts")] = "1,2",
        connections: Annotated[str, typer.Option(help="comma-separated wrk connection counts")] = "1,2,4,8",
        duration: Annotated[float, typer.Option(min=1, help="seconds per point")] = 10.0,
        cache: Annotated[str, typer.Option(help="comma-separated cache modes: none (every request "
                                                 "encodes) and/or memory (Zipf query mix)")] = "none,memory",
        out: Annotated[Path, typer.Option(help="JSON results")] = Path("runs/serve-bench/results.json"),
        precision: Annotated[str, typer.Option(help="encoder variant: fp32, int8, fp16, auto")] = "fp32",
    ) -> None:
        """requests/s and p50/p99 of /retrieve under wrk, at each worker count, cache mode and concurrency."""
        import json
        import subprocess
        import sys
        import time

        from core.atomic import atomic_write_json
        from core.errors import CropsError, ErrorKind
        from core.manifest import verify_bundle
        from loadtest.querymix import default_mix
        from loadtest.ready import NotReady, wait_ready
        from loadtest.wrk import run_wrk, write_script

        verify_bundle(bundle, require_index=True)
        mix = default_mix()
        modes = [m.strip() for m in cache.split(",") if m.strip()]
        if not set(modes) <= {"none", "memory"}:
            raise CropsError(ErrorKind.INVALID_INPUT, f"--cache takes none and/or memory, not {cache!r}")
        # cache=none: distinct queries (no cache either way); memory: the Zipf mix, as production sees it
        distinct = [json.dumps({"query": f"{q} {i}", "user_id": f"u{i}"}).encode()
                    for i, q in enumerate(mix.queries[:2000] * 3)]
        zipf = mix.request_bodies(5000, seed=1)
        rows: list[dict[str, object]] = []
        # Reference: the same encode+search in this process, no HTTP (what the service adds is the rest).
        from service.engine import Retriever

        retriever = Retriever(bundle, precision=precision)
        lat: list[float] = []
        t_end = time.perf_counter() + duration
        i = 0
        while time.perf_counter() < t_end:
            t = time.perf_counter()
            retriever.retrieve([f"{mix.queries[i % 2000]} {i}"], 100)
            lat.append((time.perf_counter() - t) * 1e3)
            i += 1
        lat.sort()
        base = {"rps": round(len(lat) / sum(lat) * 1e3, 1), "p50_ms": lat[len(lat) // 2],
                "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))], "requests": len(lat)}
        typer.echo(f"in-process encode+search, 1 thread: {base['rps']:7.1f} q/s  p50 {base['p50_ms']:6.2f} ms  "
                   f"p99 {base['p99_ms']:6.2f} ms")
        del retriever
        for n_workers in [int(x) for x in workers.split(",")]:
            for mode in modes:
                port = 18_000 + n_workers * 10 + len(rows)
                env = {**os.environ, "CROPS_CACHE": mode, "CROPS_MAX_IN_FLIGHT": "256",
                       "CROPS_ENCODER_PRECISION": precision}
                env.pop("PROMETHEUS_MULTIPROC_DIR", None)
                proc = subprocess.Popen(
                    [sys.executable, "-m", "crops", "serve", "--bundle", str(bundle), "--port", str(port),
                     "--workers", str(n_workers)],
                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
                url = f"http://127.0.0.1:{port}"
                try:
                    try:
                        wait_ready(url, proc)
                    except NotReady as exc:
                        raise CropsError(ErrorKind.BACKEND, f"crops serve did not start: {exc}") from exc
                    time.sleep(2.0 * n_workers)  # let every worker finish loading
                    script = write_script(distinct if mode == "none" else zipf)
                    run_wrk(url, script, connections=2, duration=2)  # warm-up
                    for c in [int(x) for x in connections.split(",")]:
                        res = run_wrk(url, script, connections=c, duration=duration)
                        row = {"workers": n_workers, "cache": mode, **res}
                        rows.append(row)
                        typer.echo(f"workers={n_workers} cache={mode:6s} conns={c:2d}  {res['rps']:7.1f} req/s  "
                                   f"p50 {res['p50_ms']:6.2f} ms  p99 {res['p99_ms']:6.2f} ms  "
                                   f"errors {res['errors']}")
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, {"bundle": str(bundle), "precision": precision, "duration_s": duration,
                                "rows": rows, "in_process": base,
                                "nproc": os.cpu_count(), "loadavg_1m": os.getloadavg()[0]})
        typer.echo(f"-> {out}")
