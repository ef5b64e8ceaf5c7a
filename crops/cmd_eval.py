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


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
