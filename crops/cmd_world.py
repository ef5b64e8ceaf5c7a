"""``crops world ...``: the short-video world simulator (catalog, logs with a filter bubble, truth)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

world_app = typer.Typer(help="Simulated short-video platform with known ground truth.", no_args_is_help=True)


@world_app.command("catalog")
def catalog(
    out: Annotated[Path, typer.Option("--out", help="output .jsonl (BEIR-style) or .parquet (videos table)")],
    videos: Annotated[int, typer.Option("--videos", min=50, help="number of videos")] = 20_000,
    seed: Annotated[int, typer.Option("--seed", help="world seed")] = 0,
    source: Annotated[
        str | None,
        typer.Option(
            "--catalog",
            help="real titles: microlens100k_titles, kuairec_captions, activitynet_captions or a .jsonl",
        ),
    ] = None,
) -> None:
    """Write only the catalog, fast (the same videos `crops world build` makes for this seed)."""
    from core.errors import CropsError, ErrorKind
    from training.world.catalog import build_catalog_file

    if not out.name.endswith((".jsonl", ".parquet")):
        raise CropsError(ErrorKind.INVALID_INPUT, f"--out {out}: expected a .jsonl or .parquet file name")
    t0 = time.perf_counter()
    cat = build_catalog_file(out, n_videos=videos, seed=seed, source=source)
    typer.echo(f"catalog: {len(cat)} videos → {out} in {time.perf_counter() - t0:.1f}s")


def register(app: typer.Typer) -> None:
    app.add_typer(world_app, name="world")
