"""``crops exposures``: the service's exposure log ⨝ feedback → search_log / rec_log for ``crops mine``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
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
        from online.exposures import LogSource, export_logs

        source = LogSource(jsonl=jsonl, redis_url=redis_url, prefix=prefix, feedback_jsonl=tuple(feedback_jsonl or ()))
        d = export_logs(source, out, stage=stage, max_delay_s=max_delay_s, clock=clock).as_dict()
        typer.echo(f"{d['search_rows']} search_log rows ({d['exposed_rows']} exposed, {d['clicked_rows']} clicked) "
                   f"from {d['exposure_records']} requests, {d['rec_rows']} rec_log rows -> {out}")
        if source.has_feedback and stage != "exposed":
            typer.echo(f"feedback: {d['feedback_events']} events, {d['requests_with_feedback']} requests with "
                       f"feedback; dropped {d['dropped_total']} " +
                       ", ".join(f"{k}={v}" for k, v in d["dropped"].items() if v))
        for e in d["first_errors"]:
            typer.echo(f"  dropped: {e}", err=True)
