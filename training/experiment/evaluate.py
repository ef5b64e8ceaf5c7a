"""Evaluation on the world's test sets: Recall@100 on CT and QR, NDCG@4 on the graded set(s).

Each metric is macro-averaged over distinct query strings and also weighted by test frequency
(``/freq``), broken down by query class (head / torso / tail), clean vs typo strings and ambiguous
queries; CT is also split into pairs already clicked for that string in training (``/seen``) and
the others (``/unseen``); ambiguous queries get sense coverage@10/@100 (share of their senses with
a video in the top k). Any other graded file in ``WORLD/eval`` (e.g. the sense-aware set, graded
by the user's sense) is scored as ``<name>_ndcg@4``. We also report the share of the top-100 that
the legacy stack never exposed for that query in the training logs (how far a model reaches
outside the filter bubble). Per-query maths is ``core.ir_metrics`` (checked against pytrec_eval
in tests); the slices come from ``world.evaluation``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import CropsError, ErrorKind
from core.ir_metrics import ndcg_at_k, recall_at_k
from core.normalize import normalize_text

SETS = {"ct": ("recall", 100), "qr": ("recall", 100), "graded": ("ndcg", 4)}
METRIC_NAMES = {"ct": "ct_recall@100", "qr": "qr_recall@100", "graded": "ndcg@4"}


@dataclass
class EvalSet:
    name: str
    qrels: dict[str, dict[str, float]] = field(default_factory=dict)  # normalised query → doc → gain
    query_class: dict[str, str] = field(default_factory=dict)
    ambiguous: dict[str, bool] = field(default_factory=dict)
    kind: str = ""  # recall | ndcg (default: from SETS, else ndcg)
    k: int = 0
    metric: str = ""
    # a set judged per request (the sense-aware set: grades by that user's need): qrels are keyed by
    # request id, and query_of maps each key to the query string whose ranking it judges
    query_of: dict[str, str] = field(default_factory=dict)
    seen: dict[tuple[str, str], bool] = field(default_factory=dict)  # CT: pair clicked in training

    def query(self, key: str) -> str:
        return self.query_of.get(key, key)

    def __post_init__(self) -> None:
        kind, k = SETS.get(self.name, ("ndcg", 4))
        self.kind = self.kind or kind
        self.k = self.k or k
        self.metric = self.metric or METRIC_NAMES.get(self.name, f"{self.name}_{self.kind}@{self.k}")


def load_eval_sets(world: Path | str) -> dict[str, EvalSet]:
    """``WORLD/eval/{ct,qr,graded}.parquet`` (query, video_id[, grade], query_class, ambiguous)."""
    import pyarrow.parquet as pq

    root = Path(world) / "eval"
    out: dict[str, EvalSet] = {}
    for name in SETS:
        path = root / f"{name}.parquet"
        if not path.exists():
            raise CropsError(ErrorKind.NOT_FOUND, f"{path} not found: is {world} a built world?")
    extra = sorted(
        p.stem for p in root.glob("*.parquet") if p.stem not in SETS and "grade" in pq.read_schema(p).names
    )
    for name in (*SETS, *extra):
        path = root / f"{name}.parquet"
        rows = pq.read_table(path).to_pylist()
        es = EvalSet(name)
        for r in rows:
            q = normalize_text(str(r["query"]))
            if r.get("request_id") is not None:
                es.query_of[f"request:{r['request_id']}"] = q
                q = f"request:{r['request_id']}"
            if r.get("pair_seen_in_training") is not None:
                es.seen[(q, str(r["video_id"]))] = bool(r["pair_seen_in_training"])
            gain = float(r.get("grade", 1.0) if r.get("grade") is not None else 1.0)
            es.qrels.setdefault(q, {})[str(r["video_id"])] = max(
                gain, es.qrels.get(q, {}).get(str(r["video_id"]), 0)
            )
            es.query_class[q] = str(r.get("query_class") or "all")
            es.ambiguous[q] = bool(r.get("ambiguous") or False)
        out[name] = es
    return out


def load_exposed(search_log: Path | str, queries: Sequence[str]) -> dict[str, set[str]]:
    """Normalised query → videos the legacy stack ever exposed for it in the logs."""
    import duckdb

    wanted = set(queries)
    con = duckdb.connect()
    con.execute("SET threads TO 1")
    rows = con.execute(
        "SELECT DISTINCT query, video_id FROM read_parquet(?) WHERE stage = 'exposed'", [str(search_log)]
    ).fetchall()
    out: dict[str, set[str]] = {q: set() for q in wanted}
    for q, v in rows:
        nq = normalize_text(str(q))
        if nq in wanted:
            out[nq].add(str(v))
    return out


def per_query(es: EvalSet, run: Mapping[str, Sequence[str]]) -> dict[str, float]:
    kind, k = es.kind, es.k
    fn: Callable[[Sequence[str], Mapping[str, float], int], float] = (
        ndcg_at_k if kind == "ndcg" else recall_at_k
    )
    return {
        q: fn(run.get(es.query(q), []), rel, k) for q, rel in es.qrels.items() if any(g > 0 for g in rel.values())
    }


@dataclass
class SliceInfo:
    """What the slices need from the world: per-query facts, CT's seen pairs, video senses."""

    queries: dict[str, dict[str, Any]]
    clicked: dict[str, set[str]]
    topic_of: dict[str, int]


def load_slice_info(world: Path | str, queries: Sequence[str]) -> SliceInfo:
    from world.evaluation import clicked_in_training, query_info, video_topics

    world = Path(world)
    return SliceInfo(query_info(world), clicked_in_training(world, queries), video_topics(world))


def _ct_split(es: EvalSet, run: Mapping[str, Sequence[str]], clicked: Mapping[str, set[str]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in ("seen", "unseen"):
        vals = []
        for q, rel in es.qrels.items():
            seen = {v for v in rel if es.seen.get((q, v))} if es.seen else clicked.get(q, set())
            sub = {v: g for v, g in rel.items() if g > 0 and ((v in seen) == (part == "seen"))}
            if sub:
                vals.append(recall_at_k(run.get(q, []), sub, es.k))
        if vals:
            out[f"{es.metric}/{part}"] = float(np.mean(vals))
            out[f"{es.metric}/{part}_queries"] = float(len(vals))
    return out


def summarise(
    sets: Mapping[str, EvalSet],
    run: Mapping[str, Sequence[str]],
    exposed: Mapping[str, set[str]] | None = None,
    info: SliceInfo | None = None,
) -> dict[str, float]:
    """Flat dict of metrics (fractions): overall, by class, ambiguous, never-exposed share, and with
    ``info`` the slices of the module docstring."""
    from world.evaluation import sense_coverage, sliced_means

    out: dict[str, float] = {}
    for name, es in sets.items():
        scores = per_query(es, run)
        metric = es.metric or METRIC_NAMES[name]
        if not scores:
            continue
        out[metric] = float(np.mean(list(scores.values())))
        classes = sorted({es.query_class[q] for q in scores})
        for c in classes:
            vals = [s for q, s in scores.items() if es.query_class[q] == c]
            out[f"{metric}/{c}"] = float(np.mean(vals))
        amb = [s for q, s in scores.items() if es.ambiguous.get(q)]
        if amb:
            out[f"{metric}/ambiguous"] = float(np.mean(amb))
        if info is not None:
            meta = {q: m for q in scores if (m := info.queries.get(es.query(q)))}
            if es.query_of:  # judged per request: each request already counts once, no frequency weight
                meta = {q: {**m, "n_test": 1.0} for q, m in meta.items()}
            out.update(sliced_means(metric, scores, meta))
            if name == "ct":
                out.update(_ct_split(es, run, info.clicked))
    if info is not None:
        amb_q = sorted({es.query(q) for es in sets.values() for q in es.qrels if es.ambiguous.get(q)})
        for k_cov in (10, 100):
            cov: dict[str, float] = {}
            for q in amb_q:
                cv = sense_coverage(run.get(q, []), info.queries.get(q, {}).get("topics", []), info.topic_of, k_cov)
                if cv == cv:
                    cov[q] = cv
            if cov:
                out[f"sense_coverage@{k_cov}"] = float(np.mean(list(cov.values())))
                typo = {q: v for q, v in cov.items() if info.queries.get(q, {}).get("typo")}
                clean = {q: v for q, v in cov.items() if q not in typo}
                if clean:
                    out[f"sense_coverage@{k_cov}/clean"] = float(np.mean(list(clean.values())))
                if typo:
                    out[f"sense_coverage@{k_cov}/typo"] = float(np.mean(list(typo.values())))
    if exposed is not None:
        shares = []
        for q, exp in exposed.items():
            top = list(run.get(q, []))[:100]
            if top:
                shares.append(sum(1 for v in top if v not in exp) / len(top))
        if shares:
            out["unexposed_share@100"] = float(np.mean(shares))
    return out


def exact_search(
    q_emb: np.ndarray, d_emb: np.ndarray, doc_ids: Sequence[str], k: int = 100, chunk: int = 1024
) -> list[list[str]]:
    """Exact inner-product top-k (unit vectors → cosine), in query chunks."""
    import torch

    d = torch.from_numpy(np.ascontiguousarray(d_emb, dtype=np.float32))
    k = min(k, d.shape[0])
    out: list[list[str]] = []
    for s in range(0, q_emb.shape[0], chunk):
        q = torch.from_numpy(np.ascontiguousarray(q_emb[s : s + chunk], dtype=np.float32))
        idx = torch.topk(q @ d.T, k, dim=1).indices.numpy()
        out.extend([[doc_ids[int(i)] for i in row] for row in idx])
    return out


def all_queries(sets: Mapping[str, EvalSet]) -> list[str]:
    return sorted({es.query(q) for es in sets.values() for q in es.qrels})


def slice_stats(world: Path | str) -> dict[str, Any]:
    """What the test sets are made of: typo share of the distinct strings per set and class, typo
    share of the test requests, and CT positives already clicked for that string in training."""
    world = Path(world)
    sets = load_eval_sets(world)
    info = load_slice_info(world, all_queries(sets))
    out: dict[str, Any] = {"typo_share_of_strings": {}, "ct_positives_seen_in_training": {}}
    for name, es in sets.items():
        for cls in ("all", "head", "torso", "tail"):
            qs = [q for q in es.qrels if cls == "all" or es.query_class.get(q) == cls]
            if qs:
                share = float(np.mean([bool(info.queries.get(q, {}).get("typo")) for q in qs]))
                out["typo_share_of_strings"][f"{name}/{cls}"] = {"strings": len(qs), "typo_share": share}
    n_test = [(m["n_test"], m["typo"]) for m in info.queries.values()]
    total = sum(n for n, _ in n_test)
    out["typo_share_of_test_requests"] = sum(n for n, t in n_test if t) / total if total else float("nan")
    ct = sets["ct"]
    for cls in ("all", "head", "torso", "tail"):
        seen = n = 0
        for q, rel in ct.qrels.items():
            if cls == "all" or ct.query_class.get(q) == cls:
                clicked = info.clicked.get(q, set())
                seen += sum(v in clicked for v in rel)
                n += len(rel)
        if n:
            out["ct_positives_seen_in_training"][cls] = seen / n
    return out
