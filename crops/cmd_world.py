"""``crops world ...``: the short-video world simulator (catalog, logs with a filter bubble, truth)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from world.ontology import Ontology

world_app = typer.Typer(help="Simulated short-video platform with known ground truth.", no_args_is_help=True)
ONTOLOGY_HELP = "vocabulary file (categories, facets, topics) in the format of world/vocabulary.txt"


def _ontology(path: Path | None) -> Ontology | None:
    """The ontology of ``--ontology`` (None: the embedded one), or one error line."""
    if path is None:
        return None
    from core.errors import CropsError, ErrorKind
    from world.ontology import parse_vocabulary

    if not path.is_file():
        raise CropsError(ErrorKind.NOT_FOUND, f"--ontology {path} does not exist")
    try:
        return parse_vocabulary(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CropsError(ErrorKind.INVALID_INPUT, f"--ontology {path}: {exc}") from exc


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
    ontology: Annotated[Path | None, typer.Option("--ontology", help=ONTOLOGY_HELP)] = None,
) -> None:
    """Write only the catalog, fast (the same videos `crops world build` makes for this seed)."""
    from core.errors import CropsError, ErrorKind
    from world.catalog import build_catalog_file

    if not out.name.endswith((".jsonl", ".parquet")):
        raise CropsError(ErrorKind.INVALID_INPUT, f"--out {out}: expected a .jsonl or .parquet file name")
    t0 = time.perf_counter()
    cat = build_catalog_file(out, n_videos=videos, seed=seed, source=source, onto=_ontology(ontology))
    typer.echo(f"catalog: {len(cat)} videos → {out} in {time.perf_counter() - t0:.1f}s")


@world_app.command("build")
def build(
    out: Annotated[Path, typer.Option("--out", help="world folder to write")],
    config: Annotated[Path | None, typer.Option("--config", help="YAML/JSON knobs (partial is fine)")] = None,
    seed: Annotated[int, typer.Option("--seed", help="world seed")] = 0,
    source: Annotated[
        str | None,
        typer.Option(
            "--catalog", help="real titles: microlens100k_titles, kuairec_captions, activitynet_captions or a .jsonl"
        ),
    ] = None,
    videos: Annotated[int | None, typer.Option("--videos", min=50, help="override catalog.n_videos")] = None,
    requests: Annotated[int | None, typer.Option("--requests", min=10, help="override n_requests")] = None,
    ontology: Annotated[Path | None, typer.Option("--ontology", help=ONTOLOGY_HELP)] = None,
    report: Annotated[
        bool,
        typer.Option(
            "--report/--no-report",
            help="also write the stats report (lexical + logs only; `crops world report` adds MiniLM)",
        ),
    ] = False,
) -> None:
    """Simulate the platform and write logs, truth and eval sets (see docs/explanation/simulator.md)."""
    from world.build import build_world
    from world.config import load_config

    cfg = load_config(config)
    over: dict[str, int] = {}
    if videos is not None:
        over["catalog.n_videos"] = videos
    if requests is not None:
        over["n_requests"] = requests
    if over:
        cfg = cfg.with_overrides(**over)
    info = build_world(out, cfg, seed=seed, source=source, ontology=ontology)
    c = info["counts"]
    typer.echo(
        f"world → {out}: {c['videos']} videos, {c['requests']} requests "
        f"({c['train_requests']} train / {c['test_requests']} test), {c['search_log_rows']} search-log rows, "
        f"{c['rec_log_rows']} feed rows in {info['build_seconds']['total']}s"
    )
    if report:
        from world.report import write_report

        md = write_report(out)
        typer.echo(f"report → {md}")


@world_app.command("report")
def report_cmd(
    world: Annotated[Path, typer.Option("--world", help="world folder (from `crops world build`)")],
    dense: Annotated[bool, typer.Option("--dense/--no-dense", help="also evaluate pretrained MiniLM")] = True,
    max_queries: Annotated[int, typer.Option(min=10, help="eval queries per set (sampled, seeded)")] = 2000,
    out: Annotated[Path | None, typer.Option("--out", help="report folder (default WORLD/report)")] = None,
) -> None:
    """Stats report (markdown + PNG): bubble, CTR, reformulations, feed overlap, BM25/MiniLM baselines."""
    from world.report import write_report

    encode = None
    if dense:
        from training.encoder import pretrained_encode_fn

        encode = pretrained_encode_fn()
    md = write_report(world, encode=encode, max_queries=max_queries, out_dir=out)
    typer.echo(f"report → {md}")


@world_app.command("mechanisms")
def mechanisms_cmd(
    worlds: Annotated[list[Path], typer.Option("--world", help="world folder; repeat to compare worlds")],
    out: Annotated[Path, typer.Option("--out", help="report folder (mechanisms.md + mechanisms.json)")],
    heads: Annotated[
        str, typer.Option("--heads", help="comma-separated ambiguous heads to show per sense (default: all)")
    ] = "",
) -> None:
    """Why users reformulate (retrieval miss / ranking miss / not clicked), the bubble per class and
    per sense, QR positives per sense, the feed's leaning items by grade, fresh and synonym-only videos."""
    from world.mechanisms import write_mechanisms_report

    md = write_mechanisms_report(worlds, out, heads=tuple(h for h in heads.split(",") if h))
    typer.echo(f"mechanisms report → {md}")


def register(app: typer.Typer) -> None:
    app.add_typer(world_app, name="world")
