"""The bench's vectors and bundle: real embeddings of a real catalog expanded to N, indexed and tuned.

Encoding 1M documents with MiniLM on 2 shared cores is out of reach, so the index is built in two
steps (``docs/explanation/index.md``):

1. real all-MiniLM-L6-v2 doc-tower embeddings of a real catalog (:func:`catalog_texts`: the
   MicroLens-100k titles and one description per ActivityNet video, from ``../shared/data``; without
   it, a generated catalog, and the bench says so), cached under ``runs/perf``;
2. :func:`expand`: clustered perturbation up to N vectors; then the index builder's own
   ``build_from_vectors`` builds the default factory and tunes nprobe/k_factor on real queries (half
   of the MIMICS-Manual Bing queries, :func:`real_query_split`; without ``../shared/data``, queries of
   the generated mix, :func:`tuning_texts`); :func:`measured_recall` checks recall@100 against exact
   search on the other half, none of them seen by the tuning.

:func:`ensure_bench_bundle` does all of it once per N and reuses the result.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.harness import DATA, RUNS, log

if TYPE_CHECKING:
    import numpy as np


def bench_ids(n: int) -> list[str]:
    """The bench's document ids: ``v0000042`` names row 42 of the vector file (whatever row of the
    index it ends up in: a graph bundle stores its rows in cluster order)."""
    return [f"v{i:07d}" for i in range(n)]


def bench_row(doc_id: str) -> int:
    """The vector-file row a bench id names (the inverse of ``bench_ids``)."""
    return int(doc_id[1:])


def ensure_model_bundle(path: Path | None, work: Path = RUNS) -> Path:
    """An exported model bundle (no index): ``path`` if given, else ``crops export`` (with its variants,
    int8 included) into ``work/model``, once."""
    if path is not None:
        return path
    target = work / "model"
    if (target / "manifest.json").is_file():
        return target
    log(f"exporting the pretrained model to {target} (crops export, variants auto)")
    subprocess.run([sys.executable, "-m", "crops", "export", "--out", str(target)], check=True)
    return target


def catalog_texts(data: Path = DATA) -> tuple[list[str], str]:
    """(texts, source): the MicroLens-100k titles plus the first two caption sentences of each
    ActivityNet train video from ``data``; without them, a generated catalog from the query mix."""
    try:
        texts = []
        with open(data / "microlens100k_titles" / "MicroLens-100k_title_en.csv", encoding="utf-8") as fh:
            texts += [row[1].strip() for row in csv.reader(fh) if len(row) >= 2 and row[1].strip()]
        acts = json.loads((data / "activitynet_captions" / "train.json").read_text())
        texts += [" ".join(s.strip() for s in v["sentences"][:2]) for v in acts.values()]
        return texts, "MicroLens-100k titles + ActivityNet captions (shared/data)"
    except OSError:
        from loadtest.querymix import load_mix

        rng = random.Random(0)
        words = ["video", "clip", "short", "tutorial", "compilation"]
        queries = load_mix(None).queries * 8
        return [f"{q} {rng.choice(words)} #{i}" for i, q in enumerate(queries)], "generated catalog (no shared/data)"


def encode(bundle: Path, texts: list[str], *, doc: bool = False) -> np.ndarray:
    """Unit vectors of ``texts`` through the bundle's query tower (or doc tower), normalised as served."""
    from core.manifest import verify_bundle
    from core.normalize import normalize_text
    from core.onnx_encoder import OnnxEncoder

    m = verify_bundle(bundle, check_checksums=False).model
    assert m is not None
    onnx = (m.doc_onnx or m.query_onnx) if doc else m.query_onnx
    enc = OnnxEncoder(bundle / onnx, bundle / m.tokenizer, m.max_doc_tokens if doc else m.max_query_tokens)
    return enc.encode_batched([normalize_text(t) for t in texts], 64, normalized=True)


def base_embeddings(model: Path, cache_dir: Path = RUNS, base_bundle: Path | None = None) -> tuple[np.ndarray, str]:
    """(doc-tower embeddings of the base catalog, where they came from). The encoded catalog is cached
    in ``cache_dir``; ``base_bundle``: the vectors of that bundle's Flat index instead (not cached)."""
    import numpy as np

    if base_bundle is not None:
        import faiss

        from core.manifest import verify_bundle

        sec = verify_bundle(base_bundle, require_index=True).index
        assert sec is not None
        if sec.factory != "Flat":
            raise SystemExit(f"error: --base-bundle needs a Flat index, {base_bundle} has {sec.factory}")
        flat = faiss.read_index(str(base_bundle / sec.index_file))
        return flat.reconstruct_n(0, flat.ntotal), f"the Flat index of {base_bundle} ({sec.corpus})"
    cache, src = cache_dir / "base_docs.npy", cache_dir / "base_source.txt"
    if cache.is_file() and src.is_file():
        return np.load(cache), src.read_text()
    texts, source = catalog_texts()
    log(f"encoding {len(texts)} base docs ({source}) with the doc tower")
    base = encode(model, texts, doc=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(cache, base)
    src.write_text(source)
    return base, source


def expand(base: np.ndarray, n: int, *, sigma: float = 0.01, neighbours: int = 16, seed: int = 0) -> np.ndarray:
    """Clustered perturbation of ``base`` up to ``n`` unit rows (base rows first): each new row is
    normalise((1-λ)·x_i + λ·x_j + ε), i uniform over the base, j one of i's ``neighbours`` exact nearest
    neighbours, λ ~ U(0, 0.5), ε ~ N(0, σ²I). New rows stay between semantically close docs, so
    clusters keep real sizes and shapes instead of isotropic noise balls."""
    import faiss
    import numpy as np

    if len(base) >= n:
        return np.ascontiguousarray(base[:n], dtype=np.float32)
    rng = np.random.default_rng(seed)
    k = min(neighbours, len(base) - 1)
    _, nn = faiss.knn(np.ascontiguousarray(base, dtype=np.float32), np.ascontiguousarray(base, dtype=np.float32),
                      k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    nn = nn[:, 1:]
    out = np.empty((n, base.shape[1]), dtype=np.float32)
    out[: len(base)] = base
    for s in range(len(base), n, 100_000):
        e = min(n, s + 100_000)
        i = rng.integers(0, len(base), e - s)
        j = nn[i, rng.integers(0, k, e - s)]
        lam = rng.uniform(0, 0.5, (e - s, 1)).astype(np.float32)
        v = (1 - lam) * base[i] + lam * base[j] + rng.normal(0, sigma, (e - s, base.shape[1])).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out[s:e] = v
    return out


def mimics_queries(data: Path = DATA) -> list[str]:
    """The distinct MIMICS-Manual queries (real Bing queries), in file order; [] without the data."""
    seen: dict[str, None] = {}
    try:
        with open(data / "mimics_manual" / "MIMICS-Manual.tsv", encoding="utf-8") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                q = (row.get("query") or "").strip()
                if q:
                    seen.setdefault(q, None)
    except OSError:
        return []
    return list(seen)


def real_query_split(data: Path = DATA, n: int = 1000) -> tuple[list[str], list[str], str] | None:
    """(tuning, held-out, source): the MIMICS-Manual queries shuffled and halved (≤ ``n`` each), as
    ``crops index build --queries`` splits them; None without the data."""
    from index_builder.queries import split_given

    texts = mimics_queries(data)
    if not texts:
        return None
    qs = split_given(texts, n, 0, "MIMICS-Manual Bing queries")
    return qs.tune, qs.report, f"MIMICS-Manual Bing queries ({len(qs.tune)} tune, {len(qs.report)} held out)"


def tuning_texts(queries: list[str]) -> list[str]:
    """The queries nprobe/k_factor are tuned on (every other query of the mix, 1,000 at most); recall
    is reported on queries outside them."""
    return queries[1::2][:1000]


def has_index(bundle: Path) -> bool:
    manifest = bundle / "manifest.json"
    return manifest.is_file() and bool(json.loads(manifest.read_text()).get("index"))


def ensure_bench_bundle(
    n: int,
    model: Path,
    work: Path,
    tune_texts: list[str],
    *,
    base_bundle: Path | None = None,
    factory: str | None = None,
    target_recall: float = 0.95,
    tune_source: str = "queries of the generated mix",
) -> tuple[Path, Path, str]:
    """(bundle, vectors.npy, description): ``n`` expanded vectors indexed into a copy of ``model`` with
    the builder's default factory (or ``factory``) tuned to ``target_recall`` on ``tune_texts``; built
    once under ``work`` and reused."""
    import numpy as np

    from index_builder.build import build_from_vectors

    vec_path = work / "vectors.npy"
    suffix = "" if factory is None else "_" + "".join(c if c.isalnum() else "_" for c in factory)
    bundle = work / f"bundle{suffix}"
    base, source = base_embeddings(model, work.parent, base_bundle)
    if not vec_path.is_file():
        log(f"expanding {len(base)} real embeddings to {n} vectors (clustered perturbation)")
        work.mkdir(parents=True, exist_ok=True)
        tmp = work / "vectors.tmp.npy"
        np.save(tmp, expand(base, n))
        tmp.replace(vec_path)
    if not has_index(bundle):
        log(f"building the index over {n} vectors (the slow part at 1M: minutes)")
        shutil.rmtree(bundle, ignore_errors=True)
        shutil.copytree(model, bundle)
        vectors = np.load(vec_path)
        build_from_vectors(bundle, vectors, bench_ids(len(vectors)), encode(model, tune_texts),
                           corpus=f"bench:expanded:{n}", factory=factory, target_recall=target_recall,
                           queries_kind="given", queries_source=tune_source)
    return bundle, vec_path, f"{len(base)} real embeddings ({source}) expanded to {n}"


def measured_recall(bundle: Path, vec_path: Path, queries: list[str], exclude: set[str], n_q: int = 300
                    ) -> tuple[float, int]:
    """(recall@100 of the bundle's index at its tuned point against exact search, queries used):
    on the first ``n_q`` distinct ``queries`` not in ``exclude`` (the tuning queries).

    The index's labels are rows of the bundle's id map, which a graph index keeps in its own (cluster)
    order; they are mapped through it to rows of ``vec_path`` (``bench_row``) before they are compared
    with exact search over ``vec_path``."""
    import faiss
    import numpy as np

    from core.manifest import load_id_map, verify_bundle
    from core.search_params import apply_manifest_params
    from index_builder.faiss_utils import exact_topk, recall_vs_exact

    qs = [q for q in dict.fromkeys(queries) if q not in exclude][:n_q]
    qv = encode(bundle, qs)
    m = verify_bundle(bundle, require_index=True, check_checksums=False).index
    assert m is not None
    index = faiss.read_index(str(bundle / m.index_file))
    apply_manifest_params(index, m)
    _, found = index.search(qv, 100)
    vec_row = np.array([bench_row(i) for i in load_id_map(bundle / m.id_map_file)])
    truth = exact_topk(np.load(vec_path), qv, 100)
    return round(recall_vs_exact(np.where(found >= 0, vec_row[found], -1), truth), 4), len(qs)
