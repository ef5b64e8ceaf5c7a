"""Reduced-precision copies of the query tower, each gated on retrieval quality vs fp32.

- ``int8``: ONNX Runtime dynamic quantisation, per-channel int8 weights on MatMul (activations
  quantised on the fly). Per-channel kept mean cosine 0.993 vs fp32 where per-tensor fell to 0.965
  on the built-in held-out set, at almost no extra cost. A CPU variant.
- ``fp16``: weights and activations in float16 (``onnxruntime.transformers.float16``; inputs and
  output stay int64/float32 so callers do not change). A GPU variant: measured, and accepted, only
  where the CUDA execution provider is present; on CPU it is reported as skipped with the reason.

Each variant is measured on a held-out set: mean/min cosine of its query embeddings to fp32's, and
Recall@100: by default the overlap of its top-100 with fp32's top-100 over the held-out docs
(encoded once in fp32, as the index is), or true recall when qrels are given. A variant whose
recall loss exceeds ``max_recall_loss`` (default 0.10 of fp32's top-100: per-tensor int8 loses
~0.17 and is refused, per-channel ~0.05-0.08 passes) is refused: not written into
the bundle, and the refusal (with the numbers) is recorded under ``model.variants_refused``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import atomic_path
from core.corpus import load_corpus
from core.errors import CropsError, ErrorKind
from core.manifest import BundleManifest, EncoderVariant, register_file, verify_bundle, write_manifest
from core.normalize import doc_text, normalize_text
from core.onnx_encoder import OnnxEncoder, available_providers
from core.onnx_quant import quantize_int8

log = logging.getLogger(__name__)

VARIANTS = ("int8", "fp16")
DEFAULT_MAX_RECALL_LOSS = 0.10

# Built-in held-out set: short-video style titles over many topics (the project runs without data).
_TOPICS = {
    "pets": ["cat", "kitten", "puppy", "dog", "parrot", "hamster", "goldfish", "rabbit"],
    "cooking": ["pasta", "ramen", "fried rice", "sourdough", "dumplings", "tacos", "curry", "pancakes"],
    "gaming": ["minecraft", "fortnite", "speedrun", "zelda", "chess", "league of legends", "tetris"],
    "music": ["guitar", "piano", "drums", "violin", "lofi beats", "kpop dance", "rap battle", "choir"],
    "fitness": ["yoga", "push ups", "marathon", "deadlift", "stretching", "hiit workout", "cycling"],
    "tech": ["iphone", "laptop", "python", "gpu", "mechanical keyboard", "smart home", "drone"],
    "travel": ["tokyo", "paris", "iceland", "bali", "new york", "road trip", "camping", "hostel"],
    "diy": ["woodworking", "knitting", "plumbing", "painting walls", "3d printing", "sewing"],
    "science": ["black hole", "volcano", "dna", "rocket launch", "chemistry", "fossils", "weather"],
    "comedy": ["prank", "stand up", "fail compilation", "sketch", "parody", "bloopers", "roast"],
    "beauty": ["makeup", "skincare", "hairstyle", "nail art", "perfume", "haircut"],
    "cars": ["electric car", "drift", "engine repair", "motorbike", "car wash", "f1 race"],
}
_FORMS = ["{a} tutorial for beginners", "funny {a} moments", "{a} vs {b}", "best {a} of the year",
          "how to {a} at home", "{a} review", "my first {a}", "{a} and {b} challenge", "{a} in 60 seconds",
          "why {a} is so popular", "{a} tips and tricks", "relaxing {a} asmr", "{a} gone wrong",
          "{a} compilation part {n}", "day {n} of learning {a}", "{a} explained simply"]


def builtin_heldout(n_docs: int = 2000, n_queries: int = 200, seed: int = 0) -> tuple[list[str], list[str]]:
    """(doc texts, query texts): generated titles + captions; queries are drawn from held-out titles."""
    rng = random.Random(seed)
    topics = list(_TOPICS)

    def title() -> tuple[str, str]:
        t = rng.choice(topics)
        a, b = rng.sample(_TOPICS[t], 2)
        return t, rng.choice(_FORMS).format(a=a, b=b, n=rng.randint(1, 99))

    docs = []
    for _ in range(n_docs):
        t, ti = title()
        docs.append(normalize_text(f"{ti}. {rng.choice(_TOPICS[t])} video #{t} #{rng.choice(_TOPICS[t])}"))
    queries = []
    for _ in range(n_queries):
        words = title()[1].split()
        queries.append(normalize_text(" ".join(words[: rng.randint(2, len(words))])))
    return docs, queries


def corpus_heldout(corpus: Path | str, n_docs: int, n_queries: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(doc texts, pseudo-query texts) from a corpus: queries are first words of docs left out."""
    docs = load_corpus(corpus)
    rng = random.Random(seed)
    rng.shuffle(docs)
    qdocs, ddocs = docs[:n_queries], docs[n_queries : n_queries + n_docs]
    queries = []
    for d in qdocs:
        words = normalize_text(d.title or d.text).split()
        if words:
            queries.append(" ".join(words[: rng.randint(2, 8)]))
    return [doc_text(d.title, d.text) for d in ddocs], queries


def convert_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    # keep_io_types: callers feed int64 ids and read float32 embeddings, whatever the precision.
    half = convert_float_to_float16(model, keep_io_types=True)
    with atomic_path(dst) as tmp:
        onnx.save(half, str(tmp))


@dataclass
class VariantReport:
    name: str
    accepted: bool
    reason: str = ""
    mean_cosine: float | None = None
    min_cosine: float | None = None
    recall_at_100: float | None = None
    recall_delta: float | None = None
    providers: list[str] = field(default_factory=list)

    def line(self) -> str:
        if self.mean_cosine is None:
            return f"{self.name}: skipped ({self.reason})"
        verdict = "accepted" if self.accepted else f"REFUSED ({self.reason})"
        return (f"{self.name}: cosine to fp32 mean {self.mean_cosine:.4f} min {self.min_cosine:.4f}, "
                f"recall@100 {self.recall_at_100:.4f} (delta {self.recall_delta:+.4f}) -> {verdict}")


def _topk(doc_vecs: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    scores = q @ doc_vecs.T
    k = min(k, doc_vecs.shape[0])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return part


def evaluate_variant(
    fp32_q: np.ndarray, var_q: np.ndarray, doc_vecs: np.ndarray, *, k: int = 100,
    qrels_rows: Sequence[set[int]] | None = None,
) -> tuple[float, float, float, float]:
    """(mean cosine, min cosine, recall@k of the variant, its change vs fp32)."""
    cos = np.sum(fp32_q * var_q, axis=1) / (
        np.linalg.norm(fp32_q, axis=1) * np.linalg.norm(var_q, axis=1) + 1e-12)
    ref, got = _topk(doc_vecs, fp32_q, k), _topk(doc_vecs, var_q, k)
    if qrels_rows is None:
        overlap = [len(set(a.tolist()) & set(b.tolist())) / len(a) for a, b in zip(ref, got, strict=True)]
        rec = float(np.mean(overlap))
        return float(cos.mean()), float(cos.min()), rec, rec - 1.0
    rec_ref = np.mean([len(set(a.tolist()) & r) / len(r) for a, r in zip(ref, qrels_rows, strict=True) if r])
    rec_got = np.mean([len(set(a.tolist()) & r) / len(r) for a, r in zip(got, qrels_rows, strict=True) if r])
    return float(cos.mean()), float(cos.min()), float(rec_got), float(rec_got - rec_ref)


def build_variants(
    bundle_dir: Path | str,
    variants: Sequence[str] = ("int8",),
    *,
    max_recall_loss: float = DEFAULT_MAX_RECALL_LOSS,
    eval_corpus: Path | str | None = None,
    n_docs: int = 2000,
    n_queries: int = 200,
    manifest: BundleManifest | None = None,
    write: bool = True,
    seed: int = 0,
) -> list[VariantReport]:
    """Make, measure and gate the requested variants of the bundle's query tower.

    Accepted variants are written and registered under ``manifest.model.variants``; refused or
    skipped ones land in ``model.variants_refused`` with their numbers and reason.
    """
    bundle_dir = Path(bundle_dir)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise CropsError(ErrorKind.INVALID_INPUT, f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    if not 0 <= max_recall_loss < 1:
        raise CropsError(ErrorKind.INVALID_INPUT, f"max recall loss must be in [0, 1), got {max_recall_loss}")
    manifest = manifest or verify_bundle(bundle_dir)
    model = manifest.model
    assert model is not None
    docs, queries = (corpus_heldout(eval_corpus, n_docs, n_queries, seed) if eval_corpus
                     else builtin_heldout(n_docs, n_queries, seed))
    tok = bundle_dir / model.tokenizer
    fp32 = OnnxEncoder(bundle_dir / model.query_onnx, tok, model.max_query_tokens, use_gpu=False)
    doc_enc = OnnxEncoder(bundle_dir / (model.doc_onnx or model.query_onnx), tok, model.max_doc_tokens,
                          use_gpu=False)
    doc_vecs = doc_enc.encode_batched(docs, normalized=True)
    fp32_q = fp32.encode_batched(queries, normalized=True)
    gpu = "CUDAExecutionProvider" in available_providers()
    reports: list[VariantReport] = []
    refused: dict[str, Any] = dict(model.variants_refused)
    for name in variants:
        fname = Path(model.query_onnx).stem + f".{name}.onnx"
        path = bundle_dir / fname
        if name == "fp16" and not gpu:
            rep = VariantReport(name, False, "fp16 runs on the CUDA execution provider; none here "
                                "(install onnxruntime-gpu on a GPU host)")
            reports.append(rep)
            refused[name] = {"reason": rep.reason}
            continue
        (quantize_int8 if name == "int8" else convert_fp16)(bundle_dir / model.query_onnx, path)
        enc = OnnxEncoder(path, tok, model.max_query_tokens, use_gpu=(name == "fp16"))
        var_q = enc.encode_batched(queries, normalized=True)
        mean_c, min_c, rec, delta = evaluate_variant(fp32_q, var_q, doc_vecs)
        ok = -delta <= max_recall_loss
        rep = VariantReport(name, ok, "" if ok else
                            f"recall@100 loss {-delta:.4f} > max {max_recall_loss:.4f}",
                            round(mean_c, 5), round(min_c, 5), round(rec, 4), round(delta, 4), enc.providers)
        reports.append(rep)
        log.info("variant %s", rep.line())
        common = {"mean_cosine_to_fp32": rep.mean_cosine, "min_cosine_to_fp32": rep.min_cosine,
                  "recall_at_100": rep.recall_at_100, "recall_at_100_delta": rep.recall_delta,
                  "max_recall_loss": max_recall_loss, "eval_queries": len(queries), "eval_docs": len(docs),
                  "providers": enc.providers}
        if ok and write:
            precision = "int8" if name == "int8" else "fp16"
            model.variants[name] = EncoderVariant.model_validate({"file": fname, "precision": precision, **common})
            register_file(bundle_dir, manifest, fname)
            refused.pop(name, None)
        else:
            path.unlink(missing_ok=True)
            model.variants.pop(name, None)
            manifest.files.pop(fname, None)
            refused[name] = {**common, "reason": rep.reason or "not written"}
    model.variants_refused = refused
    model.variants_eval = {"set": str(eval_corpus) if eval_corpus else "builtin", "docs": len(docs),
                           "queries": len(queries), "metric": "overlap with fp32 top-100"}
    if write:
        write_manifest(bundle_dir, manifest)
    return reports
