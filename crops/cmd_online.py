"""``crops online`` (simulated users on the served arms), ``crops loop`` (retraining rounds) and
``crops ab`` (pretrained vs CroPS-trained bundle through the real service)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from core.errors import CropsError, ErrorKind


def _check_url(url: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise CropsError(ErrorKind.INVALID_INPUT, f"--service must be an http(s) URL, not {url!r}")


def register(app: typer.Typer) -> None:
    @app.command("online")
    def online_cmd(
        world: Annotated[Path, typer.Option("--world", help="world folder (from `crops world build`)")],
        service: Annotated[str, typer.Option("--service", help="base URL of a running `crops serve`")],
        sessions: Annotated[int, typer.Option(min=1, help="search sessions per simulated day")] = 2000,
        days: Annotated[int, typer.Option(min=1, help="simulated days after the world's logs")] = 1,
        seed: Annotated[int, typer.Option(help="seed of the users' behaviour draws")] = 0,
        concurrency: Annotated[int, typer.Option(min=1, max=256, help="sessions and HTTP calls in flight")] = 8,
        control: Annotated[str, typer.Option(help="the control arm of the report")] = "control",
        out: Annotated[Path, typer.Option(help="run folder: requests/sessions tables and the report")] = Path(
            "runs/online"),
        run_id: Annotated[str, typer.Option(help="prefix of request and session ids")] = "r0",
        progress: Annotated[bool, typer.Option(help="progress bars")] = True,
    ) -> None:
        """The world's users search through the live service (the A/B router picks each user's arm);
        the arm's top-100 goes through the world's ranking stage, users behave as the world says and
        feedback goes to POST /feedback. Writes OUT/requests.parquet, sessions.parquet and the per-arm
        report (report.md/.json/.png)."""
        from online.driver import run_online
        from online.report import write_report

        _check_url(service)
        summary = run_online(world, service, out, sessions=sessions, days=days, seed=seed,
                             concurrency=concurrency, run_id=run_id, progress=progress)
        typer.echo(f"{summary['requests']} requests, {summary['feedback_events']} feedback events -> {out}")
        try:
            rep = write_report(out, control, title=f"Online A/B on {world.name}", seed=seed,
                               command=f"crops online --world {world} --service {service} --sessions {sessions} "
                                       f"--days {days} --seed {seed} --control {control} --out {out}")
        except ValueError as exc:
            raise CropsError(ErrorKind.INVALID_INPUT, str(exc)) from exc
        for arm, m in rep["arms"].items():
            typer.echo(f"{arm:>12}: users {m['users']}  CTR {m['ctr']:.4f}  long-play {m['long_play_rate']:.4f}  "
                       f"reformulation {m['reformulation_rate']:.4f}  success {m['session_success']:.4f}  "
                       f"recall {m['recall_relevant']:.4f}")
        typer.echo(f"report: {out / 'report.md'}")

    @app.command("online-report")
    def online_report_cmd(
        run: Annotated[Path, typer.Option("--run", help="a `crops online` run folder")],
        control: Annotated[str, typer.Option(help="the control arm")] = "control",
        boot: Annotated[int, typer.Option(min=100, help="bootstrap resamples")] = 2000,
        seed: Annotated[int, typer.Option()] = 0,
    ) -> None:
        """(Re)write the per-arm report of a run folder."""
        from online.report import write_report

        if not (run / "requests.parquet").is_file():
            raise CropsError(ErrorKind.NOT_FOUND, f"{run} has no requests.parquet (run `crops online` first)")
        try:
            write_report(run, control, n_boot=boot, seed=seed)
        except ValueError as exc:
            raise CropsError(ErrorKind.INVALID_INPUT, str(exc)) from exc
        typer.echo(f"report: {run / 'report.md'}")
