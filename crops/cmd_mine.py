"""``crops mine``: the CroPS data engine (logs → labelled samples + report)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from core.errors import CropsError, ErrorKind


def _description_source(
    logs: Path,
    out: Path,
    llm_url: str | None,
    llm_model: str,
    llm_api_key: str | None,
    concurrency: int,
    sim_error_rate: float | None,
    seed: int,
) -> Any:
    """The P3 source: an OpenAI-compatible endpoint when --llm-url is given, else the world's
    simulated LLM when the logs belong to a simulated world, else none (P3 is skipped)."""
    cache = out / "work" / "llm_cache"
    if llm_url:
        from training.engine.llm_client import OpenAIChatClient

        return OpenAIChatClient(llm_url, llm_model, api_key=llm_api_key, cache_dir=cache, concurrency=concurrency)
    world_dir = next((d for d in (logs, logs.parent) if (d / "truth").is_dir()), None)
    if world_dir is None:
        typer.echo("note: no --llm-url and the logs are not a simulated world: P3 is skipped", err=True)
        return None
    try:
        from world.knowledge import SimulatedLLM
    except ImportError:
        typer.echo("note: the world simulator's knowledge source is not available: P3 is skipped", err=True)
        return None
    from training.engine.llm_client import SimulatedSource

    kwargs: dict[str, Any] = {"seed": seed}
    if sim_error_rate is not None:
        kwargs["error_rate"] = sim_error_rate
    impl = SimulatedLLM(world_dir, **kwargs)
    return SimulatedSource(impl, model=f"{impl.model}-err{impl.error_rate}-seed{seed}", cache_dir=cache)


def mine_cmd(
    logs: Annotated[Path, typer.Option("--logs", help="folder with search_log.parquet and rec_log.parquet")],
    out: Annotated[Path, typer.Option("--out", help="output folder (samples.parquet, report.md); reruns resume")],
    engine: Annotated[str, typer.Option(help="duckdb (embedded) or spark (PySpark)")] = "duckdb",
    alpha: Annotated[float, typer.Option(help="θ threshold: P1/P2 keep θ > α, P3 keeps θ ≥ α")] = 0.6,
    videos: Annotated[Path | None, typer.Option(help="videos table (default: LOGS/ or LOGS/../videos.parquet)")] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="labelled pairs for θ (query, video_id, grade|label); default: the world's truth/relevance.parquet, "
            "else weak click labels"
        ),
    ] = None,
    relevant_grade: Annotated[int, typer.Option(min=1, max=3, help="grade counted as relevant")] = 2,
    window_s: Annotated[float, typer.Option(help="P1 reformulation window (s)")] = 90.0,
    rec_window_s: Annotated[float, typer.Option(help="P2: rec interactions within ± this (s) of the query")] = 1800.0,
    rec_cap: Annotated[int, typer.Option(help="P2: at most this many rec videos per (query, user)")] = 100,
    rec_actions: Annotated[str, typer.Option(help="P2: comma-separated rec_log actions that count (default all)")] = "",
    rec_exclude_actions: Annotated[
        str, typer.Option(help="P2: comma-separated rec_log actions that are not interactions")
    ] = "skip",
    p3_n: Annotated[int, typer.Option(min=0, help="P3: descriptions per query with --p3-sampling all (0 = no P3)")] = 3,
    p3_sampling: Annotated[
        str, typer.Option(help="P3: demand (descriptions spread over queries by their requests) or all")
    ] = "demand",
    p3_volume: Annotated[
        float, typer.Option(min=0.0, help="P3 (demand): descriptions asked = this × the number of click pairs")
    ] = 1.0,
    p3_max_per_query: Annotated[int, typer.Option(min=1, help="P3 (demand): at most this many per query")] = 30,
    p3_max_queries: Annotated[int, typer.Option(min=0, help="P3: at most this many queries (0 = all)")] = 0,
    llm_url: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL, e.g. http://host:8000/v1")] = None,
    llm_model: Annotated[str, typer.Option(help="model name sent to the LLM endpoint")] = "Qwen2.5-14B-Instruct",
    llm_concurrency: Annotated[int, typer.Option(min=1)] = 8,
    sim_error_rate: Annotated[float | None, typer.Option(help="simulated LLM hallucination rate")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    threads: Annotated[int, typer.Option(min=1, help="torch threads for θ")] = 2,
    theta_backend: Annotated[
        str,
        typer.Option(
            help="θ: bi-encoder embeddings auto (torch on GPU, int8 ONNX Runtime on CPU), torch, onnx-int8; "
            "or cross (a fine-tuned MiniLM cross-encoder, the paper's θ; meant for a GPU)"
        ),
    ] = "auto",
    theta_layers: Annotated[int, typer.Option(min=1, max=6, help="cross θ: MiniLM layers kept")] = 6,
    theta_steps: Annotated[int, typer.Option(min=1, help="cross θ: fine-tuning steps")] = 300,
    theta_max_length: Annotated[int, typer.Option(min=8, help="cross θ: tokens per (query, video) pair")] = 64,
    progress: Annotated[bool, typer.Option(help="progress bars")] = True,
) -> None:
    """Mine P0–P3 positives, label every sample on the HLA levels, and write the report."""
    from training.engine.config import MineConfig
    from training.engine.pipeline import mine, resolve_inputs

    if theta_backend not in ("auto", "torch", "onnx-int8", "cross"):
        raise CropsError(
            ErrorKind.INVALID_INPUT, f"--theta-backend must be auto, torch, onnx-int8 or cross, got {theta_backend!r}"
        )
    if engine not in ("duckdb", "spark"):
        raise CropsError(ErrorKind.INVALID_INPUT, f"--engine must be duckdb or spark, got {engine!r}")
    cfg = MineConfig(
        alpha=alpha,
        reformulation_window_s=window_s,
        rec_window_s=rec_window_s,
        rec_cap_per_user=rec_cap,
        rec_actions=tuple(a.strip() for a in rec_actions.split(",") if a.strip()),
        rec_exclude_actions=tuple(a.strip() for a in rec_exclude_actions.split(",") if a.strip()),
        p3_n=p3_n,
        p3_sampling=p3_sampling,
        p3_volume=p3_volume,
        p3_max_per_query=p3_max_per_query,
        p3_max_queries=p3_max_queries,
    ).validate()
    resolve_inputs(logs, videos, labels)  # bad input fails before any work (or LLM set-up)
    source = (
        _description_source(
            logs, out, llm_url, llm_model, os.environ.get("CROPS_LLM_API_KEY"), llm_concurrency, sim_error_rate, seed
        )
        if p3_n
        else None
    )
    res = mine(
        logs,
        out,
        cfg,
        videos=videos,
        labels=labels,
        engine=engine,
        source=source,
        relevant_grade=relevant_grade,
        seed=seed,
        progress=progress,
        threads=threads,
        theta_backend=theta_backend,
        theta_layers=theta_layers,
        theta_steps=theta_steps,
        theta_max_length=theta_max_length,
    )
    rep = res.report
    typer.echo(f"samples: {res.samples} ({rep.get('rows')} rows); report: {out / 'report.md'}")
    typer.echo(f"steps run: {', '.join(res.steps_run) or 'none'}; skipped: {', '.join(res.steps_skipped) or 'none'}")
    typer.echo("per source: " + ", ".join(f"{k}={v}" for k, v in rep.get("per_source", {}).items()))


def register(app: typer.Typer) -> None:
    app.command("mine")(mine_cmd)
