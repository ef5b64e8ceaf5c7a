"""``crops train``: labelled samples → a checkpoint folder for ``crops export --checkpoint``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

RECIPES = ("full", "top1", "top2", "adapter")


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        samples: Annotated[
            Path, typer.Option("--samples", help="samples.parquet from `crops mine` (or its folder)")
        ],
        videos: Annotated[Path, typer.Option("--videos", help="videos.parquet (doc texts)")],
        out: Annotated[Path, typer.Option("--out", help="run folder; the model lands in OUT/checkpoint")],
        method: Annotated[
            str, typer.Option(help="crops, fs-lr, dpr, crops-binary, crops-no-p1/2/3")
        ] = "crops",
        recipe: Annotated[
            str,
            typer.Option(
                help="full (all layers; GPU), top1/top2 (top layers over "
                "cached lower states), adapter (not exportable)"
            ),
        ] = "full",
        steps: Annotated[int, typer.Option(min=1)] = 300,
        batch_queries: Annotated[int, typer.Option(min=1)] = 32,
        docs_per_query: Annotated[int, typer.Option(min=1)] = 8,
        lr: Annotated[float, typer.Option()] = 2e-5,
        temperature: Annotated[float, typer.Option()] = 0.05,
        seed: Annotated[int, typer.Option()] = 0,
        separate_towers: Annotated[bool, typer.Option(help="separate query and doc towers")] = False,
        model: Annotated[
            Path | None, typer.Option(help="sentence-transformers folder (default MiniLM-L6)")
        ] = None,
        device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
        max_query_tokens: Annotated[int, typer.Option(min=2)] = 16,
        max_doc_tokens: Annotated[int, typer.Option(min=2)] = 32,
        checkpoint_every: Annotated[int, typer.Option(min=1)] = 100,
    ) -> None:
        """Train a dual encoder (resumes from OUT/train_state.pt; works under torchrun for DDP)."""
        from core.errors import CropsError, ErrorKind
        from training.baselines.methods import METHODS
        from training.experiment.runner import load_catalog
        from training.trainer import TrainConfig, build_training_set, read_samples, train

        spec = METHODS.get(method)
        if spec is None or spec.sources is None or spec.hard_negatives == "ance":
            ok = [m for m, s in METHODS.items() if s.sources is not None and s.hard_negatives != "ance"]
            raise CropsError(
                ErrorKind.INVALID_INPUT,
                f"--method must be one of {', '.join(ok)} (ance/bm25 run inside `crops experiment`)",
            )
        if recipe not in RECIPES:
            raise CropsError(ErrorKind.INVALID_INPUT, f"--recipe must be one of {', '.join(RECIPES)}")
        ids, texts = load_catalog(videos)
        video_text = dict(zip(ids, texts, strict=True))
        ts = build_training_set(
            read_samples(samples),
            video_text,
            sources=spec.sources,
            level_map=spec.level_map,
            pos_level=spec.pos_level,
        )
        hard = None
        if spec.hard_negatives == "bm25":
            from training.baselines.bm25 import BM25Index

            bm = BM25Index(ids, texts)
            hard = {
                q: [d for d in hits if d not in g][:20]
                for q, g, hits in zip(ts.queries, ts.groups, bm.search(ts.queries, k=40), strict=True)
            }
            ts.doc_text.update(video_text)
        cfg = TrainConfig(
            loss=spec.loss,
            pos_level=spec.pos_level,
            hard_negatives=spec.hard_negatives,
            steps=steps,
            batch_queries=batch_queries,
            docs_per_query=docs_per_query,
            lr=lr,
            temperature=temperature,
            seed=seed,
            shared_towers=not separate_towers,
            adapter=recipe == "adapter",
            n_train_layers={"full": 0, "top1": 1, "top2": 2, "adapter": 0}[recipe],
            device=device,
            max_query_tokens=max_query_tokens,
            max_doc_tokens=max_doc_tokens,
            checkpoint_every=checkpoint_every,
        )
        res = train(
            ts,
            cfg,
            out,
            model_dir=model,
            hard_negatives=hard,
            meta={"method": method, "samples": str(samples)},
        )
        first = sum(res.losses[:10]) / max(1, min(10, len(res.losses)))
        last = sum(res.losses[-10:]) / max(1, min(10, len(res.losses)))
        typer.echo(
            f"trained {method} on {len(ts)} queries, {res.steps} steps in {res.seconds:.0f}s "
            f"(loss {first:.3f} → {last:.3f}); checkpoint: {res.checkpoint}"
        )
