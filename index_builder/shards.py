"""Corpus encoding in resumable shards that any batch engine can fan out (one process per shard).

Layout of a shard folder (``crops index encode --shard i/n --out DIR``)::

    DIR/shard-00001-of-00004.npy    float32 (rows, dim) doc-tower embeddings, corpus order
    DIR/shard-00001-of-00004.json   written last = the shard is complete (model_id, rows, ids)
    DIR/shard-00001-of-00004.parts/ chunk files while encoding; a rerun skips finished chunks

The corpus is cut into fixed chunks of ``CHUNK`` documents and shards are contiguous runs of whole
chunks; within a chunk, batches are length-sorted. A document is therefore encoded in the same
batch whether the corpus runs as 1 shard or 100, so a merge is bit-identical to a single build.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from core.atomic import atomic_write_bytes, atomic_write_json
from core.corpus import Doc, load_corpus
from core.errors import CropsError, ErrorKind
from core.manifest import verify_bundle
from core.normalize import doc_text
from core.onnx_encoder import OnnxEncoder

log = logging.getLogger(__name__)

CHUNK = 1024
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(spec: str) -> tuple[int, int]:
    """``"i/n"`` → (i, n) with 0 ≤ i < n."""
    m = _SPEC.match(spec)
    if not m:
        raise CropsError(ErrorKind.INVALID_INPUT, f"--shard must look like i/n (e.g. 0/4), got {spec!r}")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise CropsError(ErrorKind.INVALID_INPUT, f"--shard {spec}: need 0 <= i < n")
    return i, n


def shard_range(n_docs: int, i: int, n: int, chunk: int | None = None) -> tuple[int, int]:
    """Rows [start, end) of shard i of n: contiguous whole chunks, balanced to within one chunk."""
    chunk = chunk or CHUNK
    n_chunks = -(-n_docs // chunk)
    a, b = n_chunks * i // n, n_chunks * (i + 1) // n
    return min(a * chunk, n_docs), min(b * chunk, n_docs)


def doc_encoder(bundle_dir: Path, *, threads: int = 1, use_gpu: bool | None = None) -> tuple[OnnxEncoder, str]:
    """The bundle's doc tower (the query tower when towers are shared) and the model id."""
    manifest = verify_bundle(bundle_dir)
    assert manifest.model is not None
    m = manifest.model
    enc = OnnxEncoder(bundle_dir / (m.doc_onnx or m.query_onnx), bundle_dir / m.tokenizer,
                      m.max_doc_tokens, intra_op_threads=threads, use_gpu=use_gpu)
    return enc, m.model_id


def encode_chunk(enc: OnnxEncoder, docs: list[Doc], batch_size: int) -> np.ndarray:
    texts = [doc_text(d.title, d.text) for d in docs]
    return enc.encode_batched(texts, batch_size, normalized=True)


def encode_rows(
    enc: OnnxEncoder,
    docs: list[Doc],
    start: int,
    end: int,
    *,
    batch_size: int = 64,
    chunk: int | None = None,
    progress: bool = True,
    parts_dir: Path | None = None,
    desc: str = "encoding corpus",
) -> np.ndarray:
    """Embeddings of ``docs[start:end]`` chunk by chunk (``start`` on a chunk boundary).

    With ``parts_dir`` every finished chunk is saved, and a rerun loads it instead of encoding again.
    """
    chunk = chunk or CHUNK
    out = np.zeros((end - start, enc.dim), dtype=np.float32)
    bar = tqdm(total=end - start, desc=desc, unit="doc", disable=not progress)
    for c0 in range(start, end, chunk):
        c1 = min(end, c0 + chunk)
        part = parts_dir / f"{c0:012d}.npy" if parts_dir is not None else None
        if part is not None and part.is_file():
            vecs = np.load(part)
        else:
            vecs = encode_chunk(enc, docs[c0:c1], batch_size)
            if part is not None:
                _save_npy(part, vecs)
        out[c0 - start : c1 - start] = vecs
        bar.update(c1 - c0)
    bar.close()
    return out


def _save_npy(path: Path, arr: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    atomic_write_bytes(path, buf.getvalue())


def shard_name(i: int, n: int) -> str:
    return f"shard-{i:05d}-of-{n:05d}"


def encode_shard(
    bundle_dir: Path | str,
    corpus: Path | str,
    shard: tuple[int, int],
    out_dir: Path | str,
    *,
    batch_size: int = 64,
    progress: bool = True,
    threads: int = 1,
    use_gpu: bool | None = None,
    docs: list[Doc] | None = None,
) -> Path:
    """Encode shard i of n into ``out_dir``; returns its meta file. Finished shards are skipped."""
    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    i, n = shard
    enc, model_id = doc_encoder(bundle_dir, threads=threads, use_gpu=use_gpu)
    name = shard_name(i, n)
    meta_path = out_dir / f"{name}.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("model_id") == model_id:
            log.info("%s already complete; skipping", name)
            return meta_path
        raise CropsError(ErrorKind.INCOMPATIBLE, f"{meta_path} was encoded by model {meta.get('model_id')}, "
                         f"bundle model is {model_id}; use a fresh --out folder")
    docs = docs if docs is not None else load_corpus(corpus)
    start, end = shard_range(len(docs), i, n)
    parts = out_dir / f"{name}.parts"
    parts.mkdir(parents=True, exist_ok=True)
    vecs = encode_rows(enc, docs, start, end, batch_size=batch_size, progress=progress, parts_dir=parts,
                       desc=f"shard {i}/{n}")
    _save_npy(out_dir / f"{name}.npy", vecs)
    meta = {
        "shard": i, "shards": n, "start": start, "end": end, "corpus_rows": len(docs),
        "corpus": str(corpus), "model_id": model_id, "dim": enc.dim, "chunk": CHUNK,
        "ids": [d.doc_id for d in docs[start:end]],
    }
    atomic_write_json(meta_path, meta)  # last: its presence marks the shard complete
    for p in parts.glob("*.npy"):
        p.unlink()
    parts.rmdir()
    return meta_path


def load_shards(
    shards_dir: Path | str, *, model_id: str | None = None, log_fn: Callable[[str], None] | None = None
) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """Concatenate all shards of a folder in order; refuses missing, mixed or foreign shards."""
    shards_dir = Path(shards_dir)
    metas = sorted(shards_dir.glob("shard-*-of-*.json"))
    if not metas:
        raise CropsError(ErrorKind.NOT_FOUND, f"no finished shards (shard-*-of-*.json) in {shards_dir}")
    rows = [json.loads(p.read_text()) for p in metas]
    n = rows[0]["shards"]
    if any(r["shards"] != n for r in rows):
        raise CropsError(ErrorKind.INVALID_INPUT, f"{shards_dir} mixes shard counts; use one --shard i/n split")
    have = {r["shard"] for r in rows}
    missing = sorted(set(range(n)) - have)
    if missing:
        raise CropsError(ErrorKind.INVALID_INPUT, f"{shards_dir}: shards {missing} of {n} are not finished")
    models = {r["model_id"] for r in rows}
    if len(models) != 1 or (model_id is not None and model_id not in models):
        raise CropsError(ErrorKind.INCOMPATIBLE,
                         f"{shards_dir}: shards encoded by model(s) {sorted(models)}, bundle model is {model_id}")
    rows.sort(key=lambda r: r["shard"])
    vecs = [np.load(shards_dir / f"{shard_name(r['shard'], n)}.npy") for r in rows]
    ids = [x for r in rows for x in r["ids"]]
    out = np.concatenate(vecs) if len(vecs) > 1 else vecs[0]
    if len(out) != rows[0]["corpus_rows"] or len(ids) != len(out):
        raise CropsError(ErrorKind.INVALID_INPUT, f"{shards_dir}: shards hold {len(out)} rows, "
                         f"corpus has {rows[0]['corpus_rows']}")
    return out, ids, {"corpus": rows[0]["corpus"], "shards": n, "model_id": rows[0]["model_id"]}
