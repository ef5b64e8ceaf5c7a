"""``crops loadtest`` (locust scenarios, report, SLO exit); ``crops bench`` (limit vs service vs peers).

Both run their own process (``python -m loadtest.run``, ``python -m benchmarks.fleet``): locust
monkey-patches the standard library with gevent on import, and the benchmark starts and stops
servers; neither belongs in the CLI's process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from core.errors import CropsError, ErrorKind


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    rc = subprocess.run(cmd, check=False, cwd=cwd).returncode
    if rc:
        raise typer.Exit(rc)


def register(app: typer.Typer) -> None:
    @app.command("loadtest")
    def loadtest(
        host: Annotated[str, typer.Option(help="service base URL")] = "http://127.0.0.1:8000",
        rate: Annotated[float, typer.Option(min=0.1, help="target requests/s")] = 400.0,
        duration: Annotated[float, typer.Option(min=1, help="seconds held at the target rate")] = 60.0,
        ramp: Annotated[float, typer.Option(min=0, help="seconds to ramp up")] = 10.0,
        users: Annotated[int | None, typer.Option(min=1, help="simulated users (default rate/10)")] = None,
        world: Annotated[Path | None, typer.Option(help="world folder: its search log gives the mix")] = None,
        batch_share: Annotated[float, typer.Option(min=0, max=1)] = 0.05,
        batch_size: Annotated[int, typer.Option(min=1)] = 8,
        top_k: Annotated[int, typer.Option(min=1, max=100)] = 100,
        slo_p99_ms: Annotated[float, typer.Option(min=0.01)] = 10.0,
        max_fail_ratio: Annotated[float, typer.Option(min=0, max=1)] = 0.001,
        out: Annotated[Path | None, typer.Option(help="report folder (default runs/loadtest/<time>)")] = None,
    ) -> None:
        """Ramp to a target rate, hold it, write report.md + latency.png; exit 1 when the SLO is missed."""
        if world is not None and not world.exists():
            raise CropsError(ErrorKind.NOT_FOUND, f"world folder {world} does not exist")
        cmd = [
            sys.executable,
            "-m",
            "loadtest.run",
            "--host",
            host,
            "--rate",
            str(rate),
            "--duration",
            str(duration),
            "--ramp",
            str(ramp),
            "--batch-share",
            str(batch_share),
            "--batch-size",
            str(batch_size),
            "--top-k",
            str(top_k),
            "--slo-p99-ms",
            str(slo_p99_ms),
            "--max-fail-ratio",
            str(max_fail_ratio),
        ]
        if users:
            cmd += ["--users", str(users)]
        if world is not None:
            cmd += ["--world", str(world)]
        if out is not None:
            cmd += ["--out", str(out)]
        _run(cmd)

    @app.command("bench")
    def bench(
        quick: Annotated[bool, typer.Option(help="100k vectors, 5 s per point (development)")] = False,
        n: Annotated[int, typer.Option(min=1000, help="vectors in the index")] = 1_000_000,
        seconds: Annotated[float | None, typer.Option(min=1, help="seconds per measurement point")] = None,
        skip_naive: Annotated[bool, typer.Option(help="leave out the naive peer")] = False,
        publish: Annotated[bool, typer.Option(help="also write docs/results/bench.md, .png, .json")] = False,
    ) -> None:
        """In-process limit vs the service over HTTP vs its peers: table + PNG + JSON (docs/results/bench.md)."""
        root = Path(__file__).resolve().parents[1]
        if not (root / "benchmarks" / "fleet.py").is_file():
            raise CropsError(
                ErrorKind.NOT_FOUND,
                f"{root / 'benchmarks'} not found: crops bench runs from a source checkout of the project",
            )
        cmd = [sys.executable, "-m", "benchmarks.fleet", "--n", str(n)]
        if quick:
            cmd.append("--quick")
        if seconds:
            cmd += ["--seconds", str(seconds)]
        if skip_naive:
            cmd += ["--rows", "service,nginx,granian,peer"]
        if publish:
            cmd.append("--publish")
        _run(cmd, cwd=root)
