"""``crops index ...``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

index_app = typer.Typer(help="Build and inspect faiss indexes inside bundles.", no_args_is_help=True)


@index_app.command("build")
def build(
    bundle: Annotated[Path, typer.Option("--bundle", help="bundle folder (from `crops export`)")],
    corpus: Annotated[Path, typer.Option("--corpus", help="BEIR-style .jsonl[.gz] or videos .parquet")],
    factory: Annotated[str | None, typer.Option(help="faiss factory string (default: by corpus size)")] = None,
    target_recall: Annotated[float, typer.Option(min=0.01, max=1.0)] = 0.95,
    recall_queries: Annotated[int, typer.Option(min=1)] = 200,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
) -> None:
    """Encode the corpus with the doc tower and build the index; measure recall@100 vs exact search."""
    from index_builder.build import build_index

    sec = build_index(bundle, corpus, factory=factory, target_recall=target_recall,
                      n_recall_queries=recall_queries, batch_size=batch_size)
    typer.echo(f"index {sec.factory}: {sec.ntotal} vectors, nprobe={sec.nprobe}, "
               f"recall@100 vs exact={sec.recall_at_100}")


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")
