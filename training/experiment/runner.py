"""``crops experiment``: world → (mine) → train every method × seed → evaluate → Table 1.

Resumable per (method, seed): each run writes ``OUT/runs/<method>/seed<k>/metrics.json`` last, and
a rerun skips the runs that have one. Frozen-encoder caches (``OUT/cache``) and the BM25 index are
computed once and shared by every run, so every method sees the same recipe and inputs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import atomic_write_json
from core.corpus import iter_corpus
from core.errors import CropsError, ErrorKind
from core.normalize import doc_text
from training.baselines.bm25 import BM25Index
from training.baselines.methods import METHODS, MethodSpec
from training.experiment.budgets import config_for
from training.experiment.evaluate import (
    EvalSet,
    all_queries,
    exact_search,
    load_eval_sets,
    load_exposed,
    load_slice_info,
    summarise,
)
from training.experiment.report import write_report
from training.trainer.config import TrainConfig
from training.trainer.data import TrainingSet, build_training_set, read_samples
from training.trainer.loop import train
from training.trainer.model import DualEncoder

log = logging.getLogger(__name__)


def hard_negatives(ts: TrainingSet, ranked: Sequence[Sequence[str]], n: int) -> dict[str, list[str]]:
    """The one hard-negative miner: per training query, the first ``n`` docs of a retriever's ranking
    (BM25's, or the model's own for ANCE) that carry no label for that query."""
    return {q: [d for d in r if d not in g][:n] for q, g, r in zip(ts.queries, ts.groups, ranked, strict=True)}


def load_catalog(videos: Path) -> tuple[list[str], list[str]]:
    """(video ids, doc texts) in catalog order; doc text = normalised title + caption + tags."""
    ids, texts = [], []
    for d in iter_corpus(videos):
        ids.append(d.doc_id)
        texts.append(doc_text(d.title, d.text))
    if not ids:
        raise CropsError(ErrorKind.INVALID_INPUT, f"{videos} has no videos")
    return ids, texts


def ensure_samples(world: Path, out: Path, samples: Path | None, theta_backend: str = "auto") -> Path:
    """The samples to train on: given, already mined under OUT, or mined now (engine's Python API,
    with the world's simulated LLM as the P3 source, as ``crops mine`` does on a simulated world)."""
    if samples is not None:
        return samples
    path = out / "samples" / "samples.parquet"
    if not path.exists():
        from training.engine.llm_client import SimulatedSource
        from training.engine.pipeline import mine
        from world.knowledge import SimulatedLLM

        logs = world / "train"
        if not logs.is_dir():
            raise CropsError(ErrorKind.NOT_FOUND, f"{logs} not found: is {world} a built world?")
        log.info("mining %s → %s", logs, path.parent)
        llm = SimulatedLLM(world, seed=0)
        source = SimulatedSource(
            llm, model=f"{llm.model}-err{llm.error_rate}-seed0", cache_dir=path.parent / "work" / "llm_cache"
        )
        mine(logs, path.parent, source=source, theta_backend=theta_backend)
    return path


class Experiment:
    """Shared state of one experiment: catalog, eval sets, caches, BM25."""

    def __init__(
        self,
        world: Path,
        out: Path,
        budget: str,
        *,
        samples: Path | None = None,
        model_dir: Path | None = None,
        progress: bool = True,
        theta_backend: str = "auto",
        **overrides: Any,
    ) -> None:
        self.world, self.out, self.budget, self.progress = world, out, budget, progress
        self.cfg = config_for(budget, **overrides)
        self.cfg.validate()
        out.mkdir(parents=True, exist_ok=True)
        self.model_dir = model_dir
        self.doc_ids, self.doc_texts = load_catalog(world / "videos.parquet")
        self.video_text = dict(zip(self.doc_ids, self.doc_texts, strict=True))
        self.sets: dict[str, EvalSet] = load_eval_sets(world)
        self.eval_queries = all_queries(self.sets)
        search_log = world / "train" / "search_log.parquet"
        self.exposed = load_exposed(search_log, self.eval_queries) if search_log.exists() else None
        self.slices = (
            load_slice_info(world, self.eval_queries)
            if search_log.exists() and (world / "truth" / "queries.parquet").exists()
            else None
        )
        self.samples_path = ensure_samples(world, out, samples, theta_backend)
        self.rows = read_samples(self.samples_path)
        self.bm25 = BM25Index(self.doc_ids, self.doc_texts)
        self._base: DualEncoder | None = None
        self._ts: tuple[str, TrainingSet] | None = None
        self._bm25_negs: tuple[str, dict[str, list[str]]] | None = None

    def new_model(self, cfg: TrainConfig) -> DualEncoder:
        model = DualEncoder(
            self.model_dir,
            shared=cfg.shared_towers,
            n_train_layers=cfg.n_train_layers,
            max_query_tokens=cfg.max_query_tokens,
            max_doc_tokens=cfg.max_doc_tokens,
            adapter=cfg.adapter,
        )
        from training.trainer.loop import resolve_device

        model.to(resolve_device(cfg.device))  # CUDA when the budget asks for it, also for evaluation
        if self._base is None:
            self._base = model
            self._fill_caches(model)
        else:
            model.share_caches(self._base)
        return model

    def _fill_caches(self, model: DualEncoder) -> None:
        """Frozen-part caches for every text any run will see, saved under OUT/cache for reruns."""
        if not (model.adapter or model.query_tower.cached):
            return
        if model.adapter:
            import hashlib

            tag = hashlib.sha1(
                f"{model.model_dir}|{model.max_query_tokens}|{model.max_doc_tokens}".encode()
            ).hexdigest()[:10]
            cache_dir = self.out / "cache"
            cache_dir.mkdir(exist_ok=True)
            for side, cache, texts in (
                ("d", model.d_pooled, self.doc_texts + sorted({str(t) for t in self.rows["text"] if t})),
                ("q", model.q_pooled, self.eval_queries + sorted({str(q) for q in self.rows["query"]})),
            ):
                assert cache is not None
                path = cache_dir / f"{side}-{tag}.pt"
                if path.exists():
                    cache.load(path)
                from core.normalize import normalize_text

                before = len(cache)
                cache.add([normalize_text(t) for t in texts], progress=self.progress)
                if len(cache) != before or not path.exists():
                    cache.save(path)

    def evaluate(self, model: DualEncoder | None) -> dict[str, float]:
        if model is None:  # BM25
            runs = self.bm25.search(self.eval_queries, k=100)
        else:
            d = model.encode(self.doc_texts, side="d", progress=False)
            q = model.encode(self.eval_queries, side="q", progress=False)
            runs = exact_search(q, d, self.doc_ids, k=100)
        return summarise(self.sets, dict(zip(self.eval_queries, runs, strict=True)), self.exposed, self.slices)

    def training_set(self, spec: MethodSpec) -> TrainingSet:
        assert spec.sources is not None
        if self._ts is None or self._ts[0] != spec.name:
            self._ts = None  # free the previous method's set first
            ts = build_training_set(
                self.rows,
                self.video_text,
                sources=spec.sources,
                level_map=spec.level_map,
                pos_level=spec.pos_level,
            )
            self._ts = (spec.name, ts)
        return self._ts[1]

    def drop_training_set(self) -> None:
        self._ts = None

    def bm25_negatives(self, ts: TrainingSet, n: int) -> dict[str, list[str]]:
        return hard_negatives(ts, self.bm25.search(ts.queries, k=n + 20), n)

    def ance_refresher(self, n: int) -> Callable[[DualEncoder, TrainingSet], dict[str, list[str]]]:
        def refresh(model: DualEncoder, ts: TrainingSet) -> dict[str, list[str]]:
            d = model.encode(self.doc_texts, side="d")
            q = model.encode(ts.queries, side="q")
            return hard_negatives(ts, exact_search(q, d, self.doc_ids, k=n + 20), n)

        return refresh

    def batch_report(
        self, ts: TrainingSet, cfg: TrainConfig, hard: Mapping[str, list[str]] | None, steps: int = 10
    ) -> dict[str, Any]:
        """The batch as the loss saw it (levels drawn and positive terms per query, masked pairs) on
        the run's first ``steps`` batches: the quota as realised, reported with every run."""
        from training.trainer.data import BatchSampler, batch_stats, parse_quota

        sampler = BatchSampler(
            ts, cfg.batch_queries, cfg.docs_per_query, cfg.seed * 1000, hard_negatives=hard,
            sampling=cfg.sampling, quota=parse_quota(cfg.level_quota), batch_labels=cfg.batch_labels,
        )
        return batch_stats(sampler, range(min(steps, cfg.steps)))

    def run_one(self, method: str, seed: int) -> dict[str, Any]:
        run_dir = self.out / "runs" / method / f"seed{seed}"
        done = run_dir / "metrics.json"
        if done.exists():
            return json.loads(done.read_text())  # type: ignore[no-any-return]
        spec = METHODS[method]
        t0 = time.perf_counter()
        result: dict[str, Any] = {"method": method, "seed": seed, "budget": self.budget}
        if spec.sources is None:
            result["metrics"] = self.evaluate(None)
        else:
            cfg = replace(
                self.cfg,
                seed=seed,
                loss=spec.loss,
                hard_negatives=spec.hard_negatives,
                pos_level=spec.pos_level,
                term_min_level=spec.term_min_level,
                **dict(spec.overrides),
            )
            ts = self.training_set(spec)
            model = self.new_model(cfg)
            hard = refresh = None
            if spec.hard_negatives == "bm25":
                if self._bm25_negs is None or self._bm25_negs[0] != method:  # deterministic: once per method
                    self._bm25_negs = (method, self.bm25_negatives(ts, cfg.n_hard))
                hard = self._bm25_negs[1]
            elif spec.hard_negatives == "ance":
                refresh = self.ance_refresher(cfg.n_hard)
            if hard is not None or refresh is not None:
                ts.doc_text.update(self.video_text)  # hard negatives come from the whole catalog
            res = train(
                ts,
                cfg,
                run_dir,
                model=model,
                hard_negatives=hard,
                refresh_hard_negatives=refresh,
                progress=self.progress,
                meta={"method": method, "world": str(self.world)},
            )
            result["metrics"] = self.evaluate(model)
            result.update(
                {
                    "batch": self.batch_report(ts, cfg, hard),
                    "grad_norm_median": float(np.median(res.grad_norms)) if res.grad_norms else None,
                    "train_queries": len(ts),
                    "levels": ts.level_counts(),
                    "steps": res.steps,
                    "loss_first": float(np.mean(res.losses[:10])),
                    "loss_last": float(np.mean(res.losses[-10:])),
                    "train_seconds": res.seconds,
                    "train_cpu_seconds": res.cpu_seconds,
                    "step_seconds": res.step_seconds,
                    "checkpoint": str(res.checkpoint),
                }
            )
        result["seconds"] = time.perf_counter() - t0
        atomic_write_json(done, result)
        return result

    def pretrained(self) -> dict[str, float]:
        path = self.out / "runs" / "pretrained.json"
        if path.exists():
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        metrics = self.evaluate(self.new_model(self.cfg))
        atomic_write_json(path, metrics)
        return metrics


def run_experiment(
    world: Path | str,
    out: Path | str,
    methods: Sequence[str] | None = None,
    seeds: int | Sequence[int] = 3,
    budget: str = "small",
    *,
    samples: Path | str | None = None,
    model_dir: Path | str | None = None,
    progress: bool = True,
    theta_backend: str = "auto",
    **overrides: Any,
) -> dict[str, Any]:
    """Run (or resume) the experiment and write Table 1 (markdown, PNG, JSON) under ``out``."""
    methods = list(methods or METHODS)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise CropsError(
            ErrorKind.INVALID_INPUT, f"unknown method(s) {bad}; choose from {', '.join(METHODS)}"
        )
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise CropsError(ErrorKind.INVALID_INPUT, "need at least one seed")
    exp = Experiment(
        Path(world),
        Path(out),
        budget,
        samples=Path(samples) if samples else None,
        model_dir=Path(model_dir) if model_dir else None,
        progress=progress,
        theta_backend=theta_backend,
        **overrides,
    )
    start = exp.pretrained()
    runs: dict[str, list[dict[str, Any]]] = {}
    for m in methods:  # method-major: one training set in memory at a time, shared by its seeds
        for seed in seed_list:
            log.info("experiment: %s seed %d", m, seed)
            runs.setdefault(m, []).append(exp.run_one(m, seed))
        exp.drop_training_set()
    return write_report(Path(out), runs, seed_list, budget, start, exp.cfg.to_dict())
