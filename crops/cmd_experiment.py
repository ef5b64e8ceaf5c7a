"""``crops experiment``: the Table-1 comparison on a world; ``crops experiment beir``: SciFact fine-tune."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

exp_app = typer.Typer(
    help="Table-1 experiment (methods × seeds) and the BEIR fine-tune.", invoke_without_command=True
)


@exp_app.callback()
def experiment(
    ctx: typer.Context,
    world: Annotated[
        list[Path] | None,
        typer.Option("--world", help="a built world (videos, train/, eval/); repeat for several (OUT/<name>/ each)"),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="output folder (resumable)")] = None,
    methods: Annotated[str | None, typer.Option(help="comma-separated subset of the methods")] = None,
    seeds: Annotated[int, typer.Option(min=1, help="number of seeds (0..N-1)")] = 3,
    budget: Annotated[str, typer.Option(help="tiny, small, full (2-core CPU) or gpu")] = "small",
    samples: Annotated[Path | None, typer.Option(help="samples.parquet (default: mine the world)")] = None,
    model: Annotated[
        Path | None, typer.Option(help="sentence-transformers folder (default MiniLM-L6)")
    ] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="override the budget's training steps")] = None,
    sampling: Annotated[
        str | None,
        typer.Option(help="docs per query: quota (per-level quota, default), stratified (round-robin) or uniform"),
    ] = None,
    level_quota: Annotated[
        str | None, typer.Option(help="docs per level per query, e.g. 5:1,4:3,3:2,2:1,1:1 (0 = hard negatives)")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="override the budget's device: auto, cpu or cuda (e.g. the gpu recipe on cpu)")
    ] = None,
    mine_theta: Annotated[
        str, typer.Option(help="θ when the world is mined here: auto (bi-encoder) or cross (the trained cross-encoder)")
    ] = "auto",
) -> None:
    """Train and evaluate bm25, dpr, ance, fs-lr, crops and its ablations; write table1.{md,png,json}."""
    if ctx.invoked_subcommand is not None:
        return
    from core.errors import CropsError, ErrorKind
    from training.experiment.runner import run_experiment

    if mine_theta not in ("auto", "torch", "onnx-int8", "cross"):
        raise CropsError(
            ErrorKind.INVALID_INPUT, f"--mine-theta must be auto, torch, onnx-int8 or cross, got {mine_theta!r}"
        )
    if not world or out is None:
        raise CropsError(ErrorKind.INVALID_INPUT, "crops experiment needs --world and --out")
    for w in world:
        if not w.is_dir():
            raise CropsError(ErrorKind.NOT_FOUND, f"--world {w} is not a folder")
    names = [w.resolve().name for w in world]
    if len(set(names)) < len(names):
        raise CropsError(ErrorKind.INVALID_INPUT, f"--world folders need distinct names, got {names}")
    if samples is not None and len(world) > 1:
        raise CropsError(ErrorKind.INVALID_INPUT, "--samples goes with one --world (each world mines its own)")
    chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    extra: dict[str, Any] = {"steps": steps} if steps else {}
    if sampling:
        extra["sampling"] = sampling
    if level_quota is not None:
        extra["level_quota"] = level_quota
    if device is not None:
        extra["device"] = device
    if len(world) == 1:
        run_experiment(
            world[0], out, chosen, seeds, budget, samples=samples, model_dir=model, theta_backend=mine_theta, **extra
        )
        typer.echo((out / "table1.md").read_text())
        return
    from core.atomic import atomic_write_text

    parts = []
    for w, name in zip(world, names, strict=True):
        run_experiment(w, out / name, chosen, seeds, budget, model_dir=model, theta_backend=mine_theta, **extra)
        parts.append(f"# World `{name}`\n\n" + (out / name / "table1.md").read_text())
    atomic_write_text(out / "table1.md", "\n".join(parts))
    typer.echo((out / "table1.md").read_text())


@exp_app.command("beir")
def beir(
    data: Annotated[Path, typer.Option("--data", help="BEIR folder with qrels/train.tsv and qrels/test.tsv")],
    out: Annotated[Path, typer.Option("--out")] = Path("runs/beir"),
    budget: Annotated[
        str, typer.Option(help="small (CPU adapter recipe) or gpu (full fine-tuning)")
    ] = "small",
    seed: Annotated[int, typer.Option()] = 0,
    steps: Annotated[int | None, typer.Option(min=1)] = None,
    doc_tokens: Annotated[int | None, typer.Option(min=8, help="max doc tokens (default 256)")] = None,
) -> None:
    """Fine-tune on train qrels (BM25 ranks as lower levels); print test nDCG@10 and Recall@100."""
    from training.experiment.beir import run_beir

    extra: dict[str, Any] = {"steps": steps} if steps else {}
    if doc_tokens:
        extra["max_doc_tokens"] = doc_tokens
    result = run_beir(data, out, budget, seed, True, **extra)
    typer.echo(
        json.dumps(
            {k: result[k] for k in ("fine_tuned", "pretrained_same_recipe", "bm25s", "published")}, indent=2
        )
    )


@exp_app.command("batch-audit")
def batch_audit(
    world: Annotated[Path, typer.Option("--world", help="a built world")],
    out: Annotated[Path, typer.Option("--out", help="output folder (shares the experiment's caches)")],
    samples: Annotated[Path | None, typer.Option(help="samples.parquet (default: mine the world)")] = None,
    methods: Annotated[str, typer.Option(help="comma-separated methods")] = "crops,crops-inherit,dpr",
    budget: Annotated[str, typer.Option(help="the recipe whose batches are audited")] = "full",
) -> None:
    """Per method: docs drawn and positive terms per level, true grades per level, relevant in-batch
    negatives, gradient norm at the start; writes batch_audit.{md,json}."""
    from core.errors import CropsError, ErrorKind
    from training.baselines.methods import METHODS
    from training.experiment.batch_audit import audit

    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    bad = [m for m in chosen if m not in METHODS or METHODS[m].sources is None]
    if bad or not chosen:
        raise CropsError(ErrorKind.INVALID_INPUT, f"--methods: unknown or untrained method(s) {bad}")
    if not (world / "truth" / "relevance.parquet").is_file():
        raise CropsError(ErrorKind.NOT_FOUND, f"{world}/truth/relevance.parquet not found: is {world} a built world?")
    audit(world, out, chosen, budget, samples=samples)
    typer.echo((out / "batch_audit.md").read_text())


@exp_app.command("slice-stats")
def slice_stats_cmd(world: Annotated[Path, typer.Option("--world", help="a built world")]) -> None:
    """What the test sets are made of (typo strings per set and class, CT pairs seen in training)."""
    from core.errors import CropsError, ErrorKind
    from training.experiment.evaluate import slice_stats

    if not (world / "truth" / "queries.parquet").is_file():
        raise CropsError(ErrorKind.NOT_FOUND, f"{world}/truth/queries.parquet not found: is {world} a built world?")
    typer.echo(json.dumps(slice_stats(world), indent=2))


def register(app: typer.Typer) -> None:
    app.add_typer(exp_app, name="experiment")
