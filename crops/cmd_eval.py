"""``crops eval beir``: BEIR queries through the serving path (ONNX encoder + the bundle's index)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated

import typer

eval_app = typer.Typer(help="Evaluate bundles on standard benchmarks.", no_args_is_help=True)


@eval_app.command("beir")
def beir(
    data: Annotated[Path, typer.Option("--data", help="BEIR folder: corpus.jsonl[.gz], queries.jsonl, qrels/")],
    split: Annotated[str, typer.Option()] = "test",
    index: Annotated[str, typer.Option(help="flat (exact) or default (the builder's choice)")] = "flat",
    bundle: Annotated[Path | None, typer.Option(help="bundle whose model to use (default: pretrained)")] = None,
    work: Annotated[Path, typer.Option(help="where the evaluation bundle is built and cached")] = Path(
        "runs/eval"),
    factory: Annotated[str | None, typer.Option(help="explicit faiss factory (overrides --index)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON only")] = False,
) -> None:
    """Print nDCG@10 and Recall@100 of the bundle's model over a BEIR dataset."""
    from core.errors import CropsError, ErrorKind
    from core.ir_metrics import mean_metrics
    from core.manifest import read_manifest

    if index not in ("flat", "default"):
        raise CropsError(ErrorKind.INVALID_INPUT, f"--index must be flat or default, got {index!r}")
    corpus = next((p for p in (data / "corpus.jsonl.gz", data / "corpus.jsonl") if p.is_file()), None)
    if corpus is None:
        raise CropsError(ErrorKind.NOT_FOUND, f"no corpus.jsonl[.gz] in {data}")
    from core.corpus import load_beir_split

    queries, qrels = load_beir_split(data, split)
    if bundle is None:
        bundle = work / "pretrained"
        if not (bundle / "manifest.json").is_file():
            from model_export.export import export_bundle

            export_bundle(bundle, force=True)
    model_id = read_manifest(bundle).model.model_id  # type: ignore[union-attr]
    chosen = factory or ("Flat" if index == "flat" else None)
    # "default" = the production recipe (IVF-PQ + refine, scaled to the corpus) even on small corpora,
    # so its loss vs flat is measured; below the size threshold `crops index build` would pick Flat.
    from index_builder.faiss_utils import production_factory

    eval_bundle = work / f"{data.name}-{model_id}-{(chosen or 'default').replace(',', '_')}"
    if not (eval_bundle / "manifest.json").is_file() or read_manifest(eval_bundle).index is None:
        shutil.rmtree(eval_bundle, ignore_errors=True)
        shutil.copytree(bundle, eval_bundle, ignore=shutil.ignore_patterns("index.faiss", "id_map.json"))
        m = read_manifest(eval_bundle)
        if m.index is not None:  # the source bundle had an index over another corpus: drop it
            from core.manifest import write_manifest

            m.files.pop(m.index.index_file, None)
            m.files.pop(m.index.id_map_file, None)
            m.index = None
            write_manifest(eval_bundle, m)
        from index_builder.build import build_index

        if chosen is None:
            import gzip

            with gzip.open(corpus, "rt") if corpus.suffix == ".gz" else open(corpus) as fh:
                n = sum(1 for _ in fh)
            chosen = production_factory(n, 384)
        build_index(eval_bundle, corpus, factory=chosen, progress=not as_json)

    from service.engine import Retriever

    retriever = Retriever(eval_bundle)
    qids = list(queries)
    run: dict[str, list[str]] = {}
    for start in range(0, len(qids), 32):
        batch = qids[start : start + 32]
        results, _ = retriever.retrieve([queries[q] for q in batch], k=100)
        for q, r in zip(batch, results, strict=True):
            run[q] = r.ids
    metrics = mean_metrics(run, qrels, ks=(10, 100))
    assert retriever.manifest.index is not None
    out = {
        "ndcg@10": round(metrics["ndcg@10"], 4),
        "recall@100": round(metrics["recall@100"], 4),
        "queries": int(metrics["queries"]),
        "split": split,
        "index": retriever.manifest.index.factory,
        "nprobe": retriever.manifest.index.nprobe,
        "index_recall@100_vs_exact": retriever.manifest.index.recall_at_100,
        "model_id": model_id,
        "bundle": str(eval_bundle),
    }
    typer.echo(json.dumps(out) if as_json else json.dumps(out, indent=2))


@eval_app.command("world")
def world(
    world_dir: Annotated[Path, typer.Option("--world", help="a built world (videos, eval/, truth/)")],
    bundle: Annotated[Path, typer.Option("--bundle", help="a bundle indexed over the world's catalog")],
    max_per_set: Annotated[
        int | None, typer.Option(min=1, help="a seeded sample of at most this many queries per eval set")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON only")] = False,
) -> None:
    """CT / QR Recall@100 and graded NDCG@4 of a bundle on a world, through the serving path
    (ONNX query tower + the bundle's faiss index): the Table-1 metrics of what would be deployed."""
    from core.errors import CropsError, ErrorKind
    from core.manifest import load_id_map, verify_bundle
    from service.engine import Retriever
    from world.evaluation import eval_queries, evaluate_run

    if not (world_dir / "eval").is_dir():
        raise CropsError(ErrorKind.NOT_FOUND, f"--world {world_dir} has no eval/: is it a built world?")
    man = verify_bundle(bundle)
    if man.index is None:
        raise CropsError(
            ErrorKind.INVALID_INPUT,
            f"{bundle} has no index: crops index build --bundle {bundle} --corpus {world_dir / 'videos.parquet'}",
        )
    import pyarrow.parquet as pq

    world_ids = set(pq.read_table(world_dir / "videos.parquet", columns=["video_id"]).column(0).to_pylist())
    ids = load_id_map(bundle / man.index.id_map_file)
    covered = sum(1 for i in ids if i in world_ids) / max(1, len(world_ids))
    if covered < 0.99:
        raise CropsError(
            ErrorKind.INCOMPATIBLE,
            f"{bundle}'s index covers {covered:.1%} of {world_dir}'s videos: index the world's catalog "
            f"(crops index build --bundle {bundle} --corpus {world_dir / 'videos.parquet'})",
        )
    retriever = Retriever(bundle)
    queries = eval_queries(world_dir, max_per_set)
    ranked: dict[str, list[str]] = {}
    for start in range(0, len(queries), 32):
        batch = queries[start : start + 32]
        results, _ = retriever.retrieve(batch, k=100)
        ranked.update({q: r.ids for q, r in zip(batch, results, strict=True)})
    res = evaluate_run(world_dir, ranked, only_ranked=max_per_set is not None)
    names = {"ct": "recall@100", "qr": "recall@100", "graded": "ndcg@4"}
    out: dict[str, object] = {
        f"{s}_{names[s]}" if s != "graded" else "ndcg@4": round(res[s]["all"][names[s]], 4) for s in names
    }
    out.update({
        "queries": len(queries),
        "by_class": {s: {g: round(v[names[s]], 4) for g, v in res[s].items()} for s in names},
        "bundle": man.bundle_id,
        "index": man.index.factory,
        "model_id": man.model.model_id if man.model else None,
    })
    typer.echo(json.dumps(out) if as_json else json.dumps(out, indent=2))


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
