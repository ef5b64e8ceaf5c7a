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

    @app.command("loop")
    def loop_cmd(
        world: Annotated[Path, typer.Option("--world", help="world folder (a small one: see docs)")],
        rounds: Annotated[int, typer.Option("--rounds", min=1, max=50, help="rounds (simulated days)")] = 3,
        sessions: Annotated[int, typer.Option(min=10, help="search sessions per round")] = 1500,
        out: Annotated[Path, typer.Option(help="loop folder (rerun to resume)")] = Path("runs/loop"),
        steps: Annotated[int, typer.Option(min=1, help="training steps per retrain")] = 150,
        recipe: Annotated[str, typer.Option(help="crops train --recipe (exportable: full, top1, top2)")] = "top1",
        port: Annotated[int, typer.Option(min=1024, max=65535, help="port of the loop's own service")] = 18_510,
        seed: Annotated[int, typer.Option()] = 0,
        concurrency: Annotated[int, typer.Option(min=1, max=256)] = 8,
        start: Annotated[Path | None, typer.Option(help="round-0 bundle of both arms (default: pretrained "
                                                        "MiniLM over the world's catalog)")] = None,
        progress: Annotated[bool, typer.Option(help="progress bars")] = True,
    ) -> None:
        """Retraining rounds: serve both arms to the world's users for a simulated day, collect the
        service's logs, retrain each arm on them (treatment: CroPS; control: clicks only), export,
        index, hot-reload; repeat. Writes OUT/loop.json, loop.md and loop.png."""
        from online.loop import run_loop

        if recipe not in ("full", "top1", "top2"):
            raise CropsError(ErrorKind.INVALID_INPUT, f"--recipe must be full, top1 or top2, not {recipe!r}")
        if not (world / "world.json").is_file():
            raise CropsError(ErrorKind.NOT_FOUND, f"{world} is not a world folder (no world.json)")
        if start is not None and not (start / "manifest.json").is_file():
            raise CropsError(ErrorKind.NOT_FOUND, f"--start {start} is not a bundle (no manifest.json)")
        state = run_loop(world, out, rounds=rounds, sessions=sessions, seed=seed, port=port, steps=steps,
                         recipe=recipe, concurrency=concurrency, start=start, progress=progress)
        for r in state["rounds"]:
            typer.echo(f"round {r['round']}: " + "  ".join(
                f"{a}: CTR {m['ctr']:.4f} reform {m['reformulation_rate']:.4f} never-exp "
                f"{m['never_exposed_share']:.4f}" for a, m in r["arms"].items()))
        typer.echo(f"{out / 'loop.md'} ({state.get('total_s', 0) / 60:.1f} min)")

    @app.command("ab")
    def ab_cmd(
        world: Annotated[Path, typer.Option("--world", help="world folder")] = Path("runs/world"),
        treatment: Annotated[Path | None, typer.Option(help="CroPS-trained bundle (default: train one on the "
                                                            "world's logs: mine, train, export, index)")] = None,
        control: Annotated[Path | None, typer.Option(help="control bundle (default: pretrained MiniLM over "
                                                          "the world's catalog)")] = None,
        sessions: Annotated[int, typer.Option(min=10, help="search sessions per simulated day")] = 5000,
        days: Annotated[int, typer.Option(min=1)] = 1,
        out: Annotated[Path, typer.Option(help="run folder")] = Path("runs/ab"),
        workers: Annotated[int, typer.Option(min=1, max=64)] = 2,
        redis_url: Annotated[str | None, typer.Option(envvar="CROPS_REDIS_URL",
                                                      help="A/B config and cache in Redis")] = None,
        port: Annotated[int, typer.Option(min=1024, max=65535)] = 18_520,
        steps: Annotated[int, typer.Option(min=1, help="training steps when the treatment is trained here")] = 300,
        recipe: Annotated[str, typer.Option(help="crops train --recipe when training here")] = "top1",
        seed: Annotated[int, typer.Option()] = 0,
        concurrency: Annotated[int, typer.Option(min=1, max=256)] = 8,
        progress: Annotated[bool, typer.Option(help="progress bars")] = True,
    ) -> None:
        """A/B of the pretrained bundle vs a CroPS-trained bundle through the real service: per-arm CTR,
        long-play and reformulation rates with CIs and deltas, and whether their signs agree with the
        paper's online test."""
        from online.loop import run_ab

        if not (world / "world.json").is_file():
            raise CropsError(ErrorKind.NOT_FOUND, f"{world} is not a world folder (no world.json)")
        for b in (treatment, control):
            if b is not None and not (b / "manifest.json").is_file():
                raise CropsError(ErrorKind.NOT_FOUND, f"{b} is not a bundle (no manifest.json)")
        rep = run_ab(world, out, treatment=treatment, control=control, sessions=sessions, days=days, seed=seed,
                     port=port, workers=workers, redis_url=redis_url, steps=steps, recipe=recipe,
                     concurrency=concurrency, progress=progress)
        for m in ("ctr", "long_play_rate", "reformulation_rate"):
            d = rep["deltas"]["treatment"][m]
            lo, hi = d["ci_low"], d["ci_high"]
            ci = f"[{100 * lo:+.2f}%, {100 * hi:+.2f}%]" if lo is not None and hi is not None else "[–]"
            typer.echo(f"{m:>20}: control {d['control']:.4f} treatment {d['treatment']:.4f} "
                       f"delta {100 * (d['delta_rel'] or 0):+.2f}% {ci} p={d['p_value']}  "
                       f"paper {100 * d['paper_delta_rel']:+.3f}%  same sign: {d['sign_agrees_with_paper']}")
        typer.echo(f"report: {out / 'report.md'}")
