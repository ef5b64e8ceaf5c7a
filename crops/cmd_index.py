"""``crops index ...``: build (from a corpus or encoded shards), encode shards, merge, add, remove."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

index_app = typer.Typer(help="Build and update faiss indexes inside bundles.", no_args_is_help=True)

_GiB = 1 << 30


def _summary(sec: Any) -> str:
    chosen = sec.chosen or {}
    lat = f", batch-1 {chosen['b1_ms_p50']:.3f} ms" if chosen else ""
    extra = sec.model_extra or {}
    kind = f" on {extra['recall_queries_kind']} queries" if extra.get("recall_queries_kind") else ""
    report = (f", held-out {sec.recall_at_100_report} ({sec.report_queries} queries)"
              if sec.recall_at_100_report is not None else "")
    from core.search_params import describe_point

    return (f"index {sec.factory}: {sec.ntotal} vectors, {describe_point(sec.nprobe, sec.k_factor, sec.ef_search)}, "
            f"recall@100 vs exact={sec.recall_at_100}{kind}{report}{lat}")


@index_app.command("build")
def build(
    bundle: Annotated[Path, typer.Option("--bundle", help="bundle folder (from `crops export`)")],
    corpus: Annotated[
        Path | None, typer.Option("--corpus", help="BEIR-style .jsonl[.gz] or videos .parquet")
    ] = None,
    from_shards: Annotated[
        Path | None, typer.Option("--from-shards", help="folder of shards from `crops index encode`")
    ] = None,
    factory: Annotated[
        str | None,
        typer.Option(help="faiss factory string (default: by corpus size; HNSW32,SQ8 for the lowest CPU latency)"),
    ] = None,
    ann: Annotated[bool, typer.Option("--ann", help="production IVF-PQ recipe even below the Flat threshold")]
    = False,
    memory_budget_gib: Annotated[
        float | None, typer.Option(min=0.001, help="index memory budget; picks the refine store")
    ] = None,
    opq: Annotated[bool, typer.Option(help="OPQ rotation before IVF-PQ")] = False,
    refine: Annotated[bool, typer.Option(help="exact re-ranking stage after PQ")] = True,
    target_recall: Annotated[float, typer.Option(min=0.01, max=1.0)] = 0.95,
    recall_queries: Annotated[int, typer.Option(min=1, help="tuning (and report) queries, at most")] = 200,
    queries: Annotated[
        Path | None,
        typer.Option("--queries", help="the queries the index will serve: text (one per line), JSONL "
                     "(query/text field) or a search_log/exposure log; half tune, the rest give the report"),
    ] = None,
    graded: Annotated[
        Path | None, typer.Option(help="BEIR folder with graded qrels: report recall per relevance level")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    device: Annotated[str, typer.Option(help=_DEVICE_HELP)] = "auto",
    gpu: Annotated[str | None, typer.Option(hidden=True, help="old spelling of --device: auto, on, off")] = None,
    reuse_vectors_from: Annotated[
        Path | None, typer.Option(help="bundle (same model, same docs, Flat index): reuse its vectors")
    ] = None,
) -> None:
    """Encode the corpus with the doc tower, build and tune the index to a recall@100 target."""
    from index_builder.build import build_index

    sec = build_index(
        bundle, corpus, factory=factory, target_recall=target_recall, n_recall_queries=recall_queries,
        batch_size=batch_size, shards_dir=from_shards, ann=ann, opq=opq, refine=refine, graded=graded,
        memory_budget_bytes=int(memory_budget_gib * _GiB) if memory_budget_gib else None,
        use_gpu=_device_flag(device, gpu), reuse_vectors_from=reuse_vectors_from, queries=queries,
    )
    typer.echo(_summary(sec))
    if sec.recall_by_level:
        for level, row in sec.recall_by_level.items():
            typer.echo(f"  level {level}: {row['pairs']:.0f} pairs, recall@100 exact {row['exact']:.4f} "
                       f"index {row['index']:.4f} (loss {row['loss']:+.4f})")


_DEVICE_HELP = ("auto, cpu or cuda: where faiss trains/adds the IVF part and the doc tower encodes "
                "(auto: the GPU when faiss GPU / the ONNX Runtime CUDA provider are present; cuda: "
                "fail unless they are)")


def _device_flag(device: str, gpu: str | None = None) -> bool | None:
    """``--device`` (or the older ``--gpu auto|on|off``) → use_gpu: None = auto, True = cuda, False = cpu."""
    from core.errors import CropsError, ErrorKind

    if gpu is not None:
        old = {"auto": None, "on": True, "off": False}
        if gpu not in old:
            raise CropsError(ErrorKind.INVALID_INPUT, f"--gpu must be auto, on or off, got {gpu!r}")
        return old[gpu]
    flags = {"auto": None, "cuda": True, "gpu": True, "cpu": False}
    if device not in flags:
        raise CropsError(ErrorKind.INVALID_INPUT, f"--device must be auto, cpu or cuda, got {device!r}")
    return flags[device]


@index_app.command("encode")
def encode(
    bundle: Annotated[Path, typer.Option("--bundle")],
    corpus: Annotated[Path, typer.Option("--corpus")],
    shard: Annotated[str, typer.Option("--shard", help="i/n: this process encodes shard i of n")],
    out: Annotated[Path, typer.Option("--out", help="shard folder shared by all shards")],
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    threads: Annotated[int, typer.Option(min=0, help="ONNX Runtime intra-op threads (0 = all cores)")] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (ONNX Runtime CUDA provider)")] = "auto",
    gpu: Annotated[str | None, typer.Option(hidden=True, help="old spelling of --device: auto, on, off")] = None,
) -> None:
    """Encode one shard of the corpus (resumable; a finished shard is skipped)."""
    from index_builder.shards import encode_shard, parse_shard

    meta = encode_shard(bundle, corpus, parse_shard(shard), out, batch_size=batch_size, threads=threads,
                        use_gpu=_device_flag(device, gpu))
    typer.echo(f"shard {shard} complete: {meta}")


@index_app.command("merge")
def merge(
    bundle: Annotated[Path, typer.Option("--bundle")],
    shards: Annotated[Path, typer.Option("--shards", help="folder of finished shards")],
    factory: Annotated[str | None, typer.Option(help="faiss factory string (default: by corpus size)")] = None,
    ann: Annotated[bool, typer.Option("--ann")] = False,
    target_recall: Annotated[float, typer.Option(min=0.01, max=1.0)] = 0.95,
    device: Annotated[str, typer.Option(help=_DEVICE_HELP)] = "auto",
    gpu: Annotated[str | None, typer.Option(hidden=True, help="old spelling of --device: auto, on, off")] = None,
) -> None:
    """Merge encoded shards into the bundle's index (same as ``build --from-shards``)."""
    from index_builder.build import build_index

    sec = build_index(bundle, None, shards_dir=shards, factory=factory, ann=ann, target_recall=target_recall,
                      use_gpu=_device_flag(device, gpu))
    typer.echo(_summary(sec))


@index_app.command("add")
def add(
    bundle: Annotated[Path, typer.Option("--bundle")],
    corpus: Annotated[Path, typer.Option("--corpus", help="new videos (.jsonl or .parquet)")],
    out: Annotated[Path | None, typer.Option(help="write the updated bundle here (default: in place)")] = None,
    skip_existing: Annotated[bool, typer.Option(help="ignore ids already indexed instead of failing")] = False,
) -> None:
    """Append new videos to the index without retraining or rebuilding."""
    from index_builder.build import add_docs

    sec = add_docs(bundle, corpus, out=out, on_duplicate="skip" if skip_existing else "error")
    typer.echo(_summary(sec))


@index_app.command("remove")
def remove(
    bundle: Annotated[Path, typer.Option("--bundle")],
    ids: Annotated[list[str] | None, typer.Option("--id", help="video id to remove (repeatable)")] = None,
    ids_file: Annotated[Path | None, typer.Option("--ids-file", help="one video id per line")] = None,
    out: Annotated[Path | None, typer.Option(help="write the updated bundle here (default: in place)")] = None,
) -> None:
    """Remove taken-down videos from the index and id map without a rebuild."""
    from core.errors import CropsError, ErrorKind
    from index_builder.build import remove_docs

    todo = list(ids or [])
    if ids_file is not None:
        if not ids_file.is_file():
            raise CropsError(ErrorKind.NOT_FOUND, f"{ids_file} does not exist")
        todo += [x.strip() for x in ids_file.read_text().splitlines() if x.strip()]
    if not todo:
        raise CropsError(ErrorKind.INVALID_INPUT, "give --id or --ids-file")
    sec = remove_docs(bundle, todo, out=out)
    typer.echo(_summary(sec))


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")
