"""One bundle loaded for serving: query encoder (ONNX Runtime) + faiss index + id map."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import sha256_file
from core.errors import CropsError, ErrorKind
from core.manifest import BundleManifest, compute_model_id, load_id_map, verify_bundle
from core.normalize import normalize_text
from core.onnx_encoder import OnnxEncoder, available_providers
from core.search_params import apply_manifest_params, set_search_params

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    ids: list[str]
    scores: list[float]


@dataclass
class Timings:
    normalize_ms: float = 0.0
    encode_ms: float = 0.0
    search_ms: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def _gpu_count() -> int:
    import faiss

    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get else 0


class Retriever:
    """Encode queries and search the bundle's index; thread-compatible (one call at a time per index)."""

    def __init__(
        self,
        bundle_dir: Path | str,
        *,
        nprobe: int | None = None,
        intra_op_threads: int = 1,
        use_gpu: bool | None = None,
        verify: bool = True,
        precision: str | None = None,
    ) -> None:
        import faiss

        # One OpenMP thread: two never helped faiss at batch 1 and they oversubscribe 2 workers.
        faiss.omp_set_num_threads(1)
        self.bundle_dir = Path(bundle_dir)
        self.manifest: BundleManifest = verify_bundle(self.bundle_dir, require_index=True, check_checksums=verify)
        model, index_sec = self.manifest.model, self.manifest.index
        assert model is not None and index_sec is not None
        # The model's identity comes from the towers' checksums (verified above), never from the
        # manifest's word: a re-signed manifest with a swapped tower and the old model_id is refused.
        towers = [self.manifest.files[model.query_onnx].sha256]
        if model.doc_onnx:
            towers.append(self.manifest.files[model.doc_onnx].sha256)
        if compute_model_id(*towers) != model.model_id:
            raise CropsError(
                ErrorKind.INCOMPATIBLE,
                f"{bundle_dir}: model_id {model.model_id} is not the hash of its towers' checksums "
                f"({compute_model_id(*towers)}); the towers were replaced: re-export and rebuild the index",
            )
        onnx_file, self.precision = model.query_onnx, "fp32"
        wanted: tuple[str, ...] = ()
        if precision == "auto":  # the gated variant for the device: fp16 on CUDA, int8 on CPU
            cuda = use_gpu is not False and "CUDAExecutionProvider" in available_providers()
            wanted = ("fp16",) if cuda else ("int8",)
        elif precision not in (None, "fp32"):
            wanted = (str(precision),)
        for name in wanted:
            if name in model.variants:
                onnx_file, self.precision = model.variants[name].file, name
                break
        else:
            if precision not in (None, "fp32", "auto"):
                raise CropsError(
                    ErrorKind.BUNDLE_INVALID,
                    f"{bundle_dir}: no {precision!r} encoder variant (has: {sorted(model.variants) or 'none'})",
                )
        # What the results depend on: the query tower actually loaded, the index and its id map.
        self.content_id = hashlib.sha256(
            "|".join(
                self.manifest.files[f].sha256 if f in self.manifest.files else sha256_file(self.bundle_dir / f)
                for f in (onnx_file, index_sec.index_file, index_sec.id_map_file)
            ).encode()
        ).hexdigest()[:16]
        self.encoder = OnnxEncoder(
            self.bundle_dir / onnx_file,
            self.bundle_dir / model.tokenizer,
            model.max_query_tokens,
            intra_op_threads=intra_op_threads,
            use_gpu=use_gpu,
        )
        index: Any = faiss.read_index(str(self.bundle_dir / index_sec.index_file))
        if int(index.d) != self.encoder.dim or int(index.d) != model.embedding_dim:
            raise CropsError(
                ErrorKind.INCOMPATIBLE,
                f"{bundle_dir}: encoder gives {self.encoder.dim}-d vectors, index holds {index.d}-d",
            )
        self.ids = load_id_map(self.bundle_dir / index_sec.id_map_file)
        if len(self.ids) != index.ntotal:
            raise CropsError(
                ErrorKind.BUNDLE_INVALID,
                f"{bundle_dir}: id map has {len(self.ids)} rows, index has {index.ntotal}",
            )
        self.nprobe = nprobe if nprobe is not None else index_sec.nprobe
        self.is_ivf = faiss.try_extract_index_ivf(index) is not None
        apply_manifest_params(index, index_sec)  # the tuned point: nprobe, k_factor or efSearch
        if nprobe is not None:
            set_search_params(index, nprobe=nprobe)
        self._params: dict[int, Any] = {}
        self.on_gpu = False
        if use_gpu is not False and _gpu_count() > 0:
            try:
                index = faiss.index_cpu_to_all_gpus(index)
                self.on_gpu = True
            except Exception as exc:  # some index types have no GPU version: serve from CPU
                log.warning("faiss GPU load failed (%s); serving from CPU", exc)
        self.index = index

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id

    def encode(self, queries: list[str]) -> np.ndarray:
        return self.encoder.encode(queries, normalized=True)

    def search_params(self, nprobe: int | None) -> Any:
        """faiss per-call search parameters for ``nprobe`` (None: the index's own settings).

        Per-call parameters let arms share one loaded index with different nprobe values.
        """
        if nprobe is None or not self.is_ivf or nprobe == self.nprobe:
            return None
        kept = self._params.get(nprobe)
        if kept is None:
            import faiss

            ivf_params: Any = faiss.SearchParametersIVF(nprobe=int(nprobe))  # type: ignore[call-arg]
            params: Any = ivf_params
            if hasattr(self.index, "k_factor") and hasattr(self.index, "refine_index"):
                params = faiss.IndexRefineSearchParameters(  # type: ignore[call-arg]
                    k_factor=float(self.index.k_factor), base_index_params=ivf_params
                )
            # SWIG holds a raw pointer to ivf_params: keep the Python object alive with it.
            kept = (params, ivf_params)
            self._params[nprobe] = kept
        return kept[0]

    def search_vectors(self, vectors: np.ndarray, k: int, nprobe: int | None = None) -> list[SearchResult]:
        k = min(k, len(self.ids))
        params = self.search_params(nprobe)
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if params is None:
            scores, rows = self.index.search(x, k)
        else:
            scores, rows = self.index.search(x, k, params=params)
        out = []
        ids = self.ids
        for srow, irow in zip(scores, rows, strict=True):
            keep = irow >= 0
            # .tolist() first: indexing a list with numpy integers one by one costs ~4x as much
            out.append(SearchResult([ids[i] for i in irow[keep].tolist()], srow[keep].tolist()))
        return out

    def retrieve(self, queries: list[str], k: int = 100) -> tuple[list[SearchResult], Timings]:
        """Normalise, encode and search a batch of raw queries."""
        t = Timings()
        t0 = time.perf_counter()
        norm = [normalize_text(q) for q in queries]
        t1 = time.perf_counter()
        vecs = self.encode(norm)
        t2 = time.perf_counter()
        res = self.search_vectors(vecs, k)
        t3 = time.perf_counter()
        t.normalize_ms, t.encode_ms, t.search_ms = (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3
        return res, t
