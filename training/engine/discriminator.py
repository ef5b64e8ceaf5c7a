"""θ: the semantic discriminator, a calibrated probability that a video is relevant to a query.

The paper's θ is a pretrained 6-layer transformer. Ours is the 6-layer all-MiniLM-L6-v2 (offline
package), used as a frozen bi-encoder: query and video texts are embedded once (cached on disk),
a logistic head reads ``[cos, q⊙d, |q−d|]`` and Platt scaling, fit on a held-out calibration split,
turns its margin into a probability, so "θ > 0.6" means "relevant with probability above 0.6".
Freezing the encoder keeps the fit within minutes on 2 CPU cores: only the head is trained; the
cost is embedding each distinct text once.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import atomic_write_bytes, atomic_write_json
from core.errors import CropsError, ErrorKind
from core.normalize import normalize_text

EMBED_VERSION = 1


# ----------------------------------------------------------------------------- calibration maths


def sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))
    return out


def fit_platt(margin: np.ndarray, labels: np.ndarray, iters: int = 100) -> tuple[float, float]:
    """Platt scaling: (a, b) minimising the log-loss of sigmoid(a·margin + b), with Platt's smoothed
    targets ((n₊+1)/(n₊+2), 1/(n₋+2)) so a separable calibration set cannot push a to infinity.
    Newton's method with backtracking on two parameters (a handful of steps)."""
    z = np.asarray(margin, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if z.shape != y.shape or z.ndim != 1 or len(z) < 2:
        raise CropsError(ErrorKind.INVALID_INPUT, "platt scaling needs two equal-length 1-d arrays (n >= 2)")
    n_pos, n_neg = float(y.sum()), float(len(y) - y.sum())
    if n_pos == 0 or n_neg == 0:
        raise CropsError(ErrorKind.INVALID_INPUT, "platt scaling needs both relevant and irrelevant pairs")
    t = np.where(y > 0.5, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))

    def loss(a_: float, b_: float) -> float:
        f = a_ * z + b_  # log(1 + e^f) − t·f, computed stably
        return float(np.sum(np.logaddexp(0.0, f) - t * f))

    a, b = 0.0, float(np.log((n_pos + 1) / (n_neg + 1)))
    cur = loss(a, b)
    for _ in range(iters):
        p = sigmoid(a * z + b)
        g = np.array([np.sum((p - t) * z), np.sum(p - t)])
        w = p * (1 - p) + 1e-12
        h = np.array([[np.sum(w * z * z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(h, g)
        lr = 1.0
        while lr > 1e-8:  # backtracking: a full Newton step overshoots where the sigmoid saturates
            na, nb = a - lr * float(step[0]), b - lr * float(step[1])
            new = loss(na, nb)
            if new <= cur - 1e-4 * lr * float(g @ step):  # Armijo
                break
            lr /= 2
        a, b, done = na, nb, abs(cur - new) < 1e-10 * max(1.0, abs(cur))
        cur = new
        if done:
            break
    return a, b


def expected_calibration_error(prob: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> float:
    """ECE: Σ_bins (n_bin/n)·|mean label − mean probability| over equal-width probability bins."""
    p = np.asarray(prob, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if len(p) == 0:
        return float("nan")
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(float(y[m].mean()) - float(p[m].mean()))
    return float(ece)


def reliability_table(prob: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> list[dict[str, float]]:
    """Per-bin mean probability, observed relevant rate and count (for the reliability plot)."""
    p, y = np.asarray(prob, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    out = []
    for b in range(n_bins):
        m = idx == b
        if m.any():
            out.append({"bin": b, "mean_prob": float(p[m].mean()), "rate": float(y[m].mean()), "n": int(m.sum())})
    return out


def roc_auc(score: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum statistic (ties get average ranks)."""
    from scipy.stats import rankdata

    y = np.asarray(labels) > 0.5
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rankdata(score)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ----------------------------------------------------------------------------- features and head


def pair_features(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """[cos, q⊙d, |q−d|] for unit vectors q, d (n, dim) → (n, 2·dim+1) float32."""
    prod = q * d
    return np.concatenate([prod.sum(axis=1, keepdims=True), prod, np.abs(q - d)], axis=1).astype(np.float32)


@dataclass
class FitReport:
    n_train: int
    n_calib: int
    n_test: int
    positive_rate: float
    auc_test: float
    ece_test_raw: float  # the head's own probabilities before Platt scaling
    ece_test: float  # after Platt scaling: what θ reports
    brier_test: float
    platt_a: float
    platt_b: float
    fit_seconds: float
    reliability: list[dict[str, float]]

    @classmethod
    def of(
        cls,
        y: np.ndarray,
        tr: np.ndarray,
        ca: np.ndarray,
        te: np.ndarray,
        raw: np.ndarray,
        cal: np.ndarray,
        platt: tuple[float, float],
        t0: float,
    ) -> FitReport:
        """The report of a θ fit: split sizes (masks ``tr``/``ca``/``te`` over labels ``y``) and the test
        split's quality from its raw and calibrated probabilities; ``t0`` is when the fit started."""
        return cls(
            n_train=int(tr.sum()),
            n_calib=int(ca.sum()),
            n_test=int(te.sum()),
            positive_rate=float(y.mean()),
            auc_test=roc_auc(cal, y[te]),
            ece_test_raw=expected_calibration_error(raw, y[te]),
            ece_test=expected_calibration_error(cal, y[te]),
            brier_test=float(np.mean((cal - y[te]) ** 2)),
            platt_a=platt[0],
            platt_b=platt[1],
            fit_seconds=time.perf_counter() - t0,
            reliability=reliability_table(cal, y[te]),
        )


class EmbeddingCache:
    """Embeddings of normalised texts keyed by sha1, persisted as one .npz (reruns embed nothing)."""

    def __init__(self, path: Path | None, dim: int = 384) -> None:
        self.path = path
        self.dim = dim
        self._vec: dict[str, np.ndarray] = {}
        self._dirty = False
        if path is not None and path.is_file():
            with np.load(path) as z:
                for k, v in zip(z["keys"].tolist(), z["vecs"], strict=True):
                    self._vec[str(k)] = v

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def missing(self, texts: Sequence[str]) -> list[str]:
        seen: set[str] = set()
        out = []
        for t in texts:
            k = self.key(t)
            if k not in self._vec and k not in seen:
                seen.add(k)
                out.append(t)
        return out

    def put(self, texts: Sequence[str], vecs: np.ndarray) -> None:
        for t, v in zip(texts, vecs, strict=True):
            self._vec[self.key(t)] = v.astype(np.float32)
        self._dirty = True

    def get(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._vec[self.key(t)] for t in texts])

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        import io

        keys = np.array(list(self._vec), dtype="U40")
        vecs = np.stack(list(self._vec.values())) if self._vec else np.zeros((0, self.dim), np.float32)
        buf = io.BytesIO()
        np.savez(buf, keys=keys, vecs=vecs)
        atomic_write_bytes(self.path, buf.getvalue())
        self._dirty = False


class Discriminator:
    """θ(q, d) ∈ [0, 1]: frozen MiniLM-L6 embeddings → logistic head → Platt scaling."""

    def __init__(
        self,
        model_dir: Path | str | None = None,
        cache_path: Path | None = None,
        max_query_tokens: int = 16,
        max_doc_tokens: int = 32,
        threads: int = 2,
        batch_size: int = 256,
        backend: str = "auto",
    ) -> None:
        if backend not in ("auto", "torch", "onnx-int8"):
            raise CropsError(ErrorKind.INVALID_INPUT, f"θ backend must be auto, torch or onnx-int8, got {backend!r}")
        self.backend = backend
        self.model_dir = model_dir
        self.max_query_tokens = max_query_tokens
        self.max_doc_tokens = max_doc_tokens
        self.threads = threads
        self.batch_size = batch_size
        self.cache = EmbeddingCache(cache_path)
        self._encoder: Any = None
        self.w: np.ndarray | None = None
        self.b: float = 0.0
        self.platt: tuple[float, float] = (1.0, 0.0)

    # -- embeddings
    def resolved_backend(self) -> str:
        """``auto``: torch on a GPU, int8 ONNX Runtime on CPU (≈3x cheaper, same MiniLM weights)."""
        if self.backend != "auto":
            return self.backend
        import torch

        self.backend = "torch" if torch.cuda.is_available() else "onnx-int8"
        return self.backend

    def _load_encoder(self) -> Any:
        if self._encoder is None:
            import torch

            torch.set_num_threads(max(1, self.threads))
            if self.resolved_backend() == "onnx-int8":
                from training.engine.onnx_embed import OnnxInt8Embedder

                where = self.cache.path.parent if self.cache.path is not None else Path.home() / ".cache" / "crops"
                self._encoder = OnnxInt8Embedder(
                    Path(self.model_dir) if self.model_dir else None, where, self.max_doc_tokens, self.threads
                )
                return self._encoder
            from training.encoder import TextEncoder

            device = "cuda" if torch.cuda.is_available() else "cpu"
            self._encoder = TextEncoder(self.model_dir, max_length=self.max_doc_tokens).to(device)
            self._encoder.eval()
        return self._encoder

    def embed(self, texts: Sequence[str], *, kind: str = "doc", progress: bool = False) -> np.ndarray:
        """Unit embeddings of ``texts`` (normalised first); computes only what the cache lacks."""
        norm = [normalize_text(t) for t in texts]
        keyed = [f"{kind}{EMBED_VERSION}{self.resolved_backend()}:{t}" for t in norm]
        todo_keys = self.cache.missing(keyed)
        if todo_keys:
            enc = self._load_encoder()
            enc.tokenizer.enable_truncation(self.max_query_tokens if kind == "query" else self.max_doc_tokens)
            todo = [k.split(":", 1)[1] for k in todo_keys]
            vecs = np.zeros((len(todo), self.cache.dim), dtype=np.float32)
            chunk = max(self.batch_size * 8, 1)
            from tqdm import tqdm

            with tqdm(total=len(todo), desc=f"embed {kind}s", disable=not progress, unit="text") as bar:
                for s in range(0, len(todo), chunk):
                    part = todo[s : s + chunk]
                    vecs[s : s + len(part)] = enc.encode(part, batch_size=self.batch_size, normalized=True)
                    bar.update(len(part))
            self.cache.put(todo_keys, vecs)
        return self.cache.get(keyed)

    # -- head
    def margin(self, q: np.ndarray, d: np.ndarray) -> np.ndarray:
        if self.w is None:
            raise CropsError(ErrorKind.INVALID_INPUT, "the discriminator is not fitted")
        out = np.empty(len(q), dtype=np.float64)
        for s in range(0, len(q), 50_000):  # bounded memory: features are 769 floats per pair
            out[s : s + 50_000] = pair_features(q[s : s + 50_000], d[s : s + 50_000]) @ self.w + self.b
        return out

    def margin_indexed(self, qe: np.ndarray, de: np.ndarray, qi: np.ndarray, di: np.ndarray) -> np.ndarray:
        """Margins of pairs (qe[qi[k]], de[di[k]]): each distinct text is embedded once and pairs
        are gathered chunk by chunk, so a million pairs never materialise a million vectors."""
        out = np.empty(len(qi), dtype=np.float64)
        for s in range(0, len(qi), 50_000):
            out[s : s + 50_000] = self.margin(qe[qi[s : s + 50_000]], de[di[s : s + 50_000]])
        return out

    def prob_from_vectors(self, q: np.ndarray, d: np.ndarray) -> np.ndarray:
        a, b = self.platt
        return sigmoid(a * self.margin(q, d) + b)

    def pair_margins(self, queries: Sequence[str], docs: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Head margins (before Platt) for aligned lists of query and document texts."""
        uq, qi = np.unique(np.asarray(list(queries), dtype=object).astype(str), return_inverse=True)
        ud, di = np.unique(np.asarray(list(docs), dtype=object).astype(str), return_inverse=True)
        qe = self.embed(uq.tolist(), kind="query", progress=progress)
        de = self.embed(ud.tolist(), kind="doc", progress=progress)
        return self.margin_indexed(qe, de, qi, di)

    def score(self, queries: Sequence[str], docs: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """θ for aligned lists of query and document texts."""
        if len(queries) == 0:
            return np.zeros(0)
        a, b = self.platt
        return sigmoid(a * self.pair_margins(queries, docs, progress=progress) + b)

    def fit_vectors(
        self,
        q: np.ndarray,
        d: np.ndarray,
        labels: np.ndarray,
        groups: np.ndarray,
        *,
        seed: int = 0,
        l2: float = 1.0,
        calib_mask: np.ndarray | None = None,
    ) -> FitReport:
        """Fit head + Platt on labelled pairs. ``groups`` (one id per pair, e.g. the query) splits
        60/20/20 into head-train / calibration / test so no query leaks across the splits. With
        ``calib_mask``, calibration and test use only those pairs: the distribution θ is applied
        to (P1/P2 candidates), so the probability is calibrated where it is used."""

        from sklearn.linear_model import LogisticRegression

        t0 = time.perf_counter()
        y = np.asarray(labels, dtype=np.int64)
        ug = np.unique(groups)
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(ug))
        cut1, cut2 = int(0.6 * len(ug)), int(0.8 * len(ug))
        part = np.empty(len(ug), dtype=np.int64)
        part[perm[:cut1]], part[perm[cut1:cut2]], part[perm[cut2:]] = 0, 1, 2
        split = part[np.searchsorted(ug, groups)]
        tr, ca, te = split == 0, split == 1, split == 2
        if calib_mask is not None:
            ca, te = ca & calib_mask, te & calib_mask
        for name, m in (("train", tr), ("calibration", ca), ("test", te)):
            if len(np.unique(y[m])) < 2:
                raise CropsError(
                    ErrorKind.INVALID_INPUT,
                    f"θ needs relevant and irrelevant pairs in its {name} split; give more labelled queries",
                )
        x = pair_features(q, d)
        head = LogisticRegression(C=1.0 / l2, max_iter=500, class_weight="balanced")
        head.fit(x[tr], y[tr])
        self.w = head.coef_[0].astype(np.float64)
        self.b = float(head.intercept_[0])
        self.platt = fit_platt(self.margin(q[ca], d[ca]), y[ca])
        raw = sigmoid(self.margin(q[te], d[te]))
        cal = self.prob_from_vectors(q[te], d[te])
        return FitReport.of(y, tr, ca, te, raw, cal, self.platt, t0)

    def fit(
        self,
        queries: Sequence[str],
        docs: Sequence[str],
        labels: Sequence[int],
        *,
        seed: int = 0,
        progress: bool = False,
        calib_mask: np.ndarray | None = None,
    ) -> FitReport:
        """Fit on labelled text pairs (label 1 = relevant); split by query."""
        q = self.embed(queries, kind="query", progress=progress)
        d = self.embed(docs, kind="doc", progress=progress)
        _, groups = np.unique(np.asarray(list(queries), dtype=object).astype(str), return_inverse=True)
        return self.fit_vectors(q, d, np.asarray(labels), groups, seed=seed, calib_mask=calib_mask)

    # -- persistence (plain numbers, no pickle)
    def save(self, folder: Path) -> None:
        if self.w is None:
            raise CropsError(ErrorKind.INVALID_INPUT, "cannot save an unfitted discriminator")
        folder.mkdir(parents=True, exist_ok=True)
        import io

        buf = io.BytesIO()
        np.save(buf, self.w)
        atomic_write_bytes(folder / "head_w.npy", buf.getvalue())
        atomic_write_json(
            folder / "theta.json",
            {
                "b": self.b,
                "platt_a": self.platt[0],
                "platt_b": self.platt[1],
                "max_query_tokens": self.max_query_tokens,
                "max_doc_tokens": self.max_doc_tokens,
                "embed_version": EMBED_VERSION,
                "backend": self.resolved_backend(),
                "encoder": str(self.model_dir or "default all-MiniLM-L6-v2"),
            },
        )

    def load(self, folder: Path) -> Discriminator:
        meta = json.loads((folder / "theta.json").read_text())
        self.w = np.load(folder / "head_w.npy")
        self.b = float(meta["b"])
        self.platt = (float(meta["platt_a"]), float(meta["platt_b"]))
        self.backend = str(meta.get("backend", "torch"))  # features must come from the fitted backend
        return self

    @staticmethod
    def report_dict(rep: FitReport) -> dict[str, Any]:
        return asdict(rep)
