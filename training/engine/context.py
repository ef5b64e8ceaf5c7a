"""The state the data engine's steps share: inputs, settings, the SQL engine, the catalog texts, θ."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.normalize import normalize_text
from training.engine.config import MineConfig
from training.engine.cross_theta import CrossEncoderTheta
from training.engine.discriminator import Discriminator
from training.engine.engines import SqlEngine, make_engine
from training.engine.llm_client import DescriptionSource
from training.engine.tables import (
    MineInputs,
    is_eval_query,
    load_video_texts,
    read_table,
    sql_str,
    test_query_strings,
)

Scorer = Callable[[list[str], list[str]], np.ndarray]


class MineContext:
    """What every step reads and writes; ``scorer`` replaces θ (tests use a fake one)."""

    def __init__(
        self,
        inputs: MineInputs,
        out: Path,
        cfg: MineConfig,
        *,
        engine: str | SqlEngine = "duckdb",
        source: DescriptionSource | None = None,
        scorer: Scorer | None = None,
        relevant_grade: int = 2,
        max_fit_pairs: int = 30_000,
        seed: int = 0,
        progress: bool = True,
        threads: int = 2,
        theta_backend: str = "auto",
        theta_layers: int = 6,
        theta_steps: int = 300,
        theta_max_length: int = 64,
    ) -> None:
        self.theta_backend = theta_backend
        self.theta_cross = {"n_layers": theta_layers, "steps": theta_steps, "max_length": theta_max_length}
        self.inp = inputs
        self.out = out
        self.work = out / "work"
        self.cfg = cfg.validate()
        self._engine_arg = engine
        self._engine: SqlEngine | None = None
        self.source = source
        self.fake_scorer = scorer
        self.relevant_grade = relevant_grade
        self.max_fit_pairs = max_fit_pairs
        self.seed = seed
        self.progress = progress
        self.threads = threads
        self._disc: Discriminator | CrossEncoderTheta | None = None
        self._videos: dict[str, str] | None = None
        self._test_queries: set[str] | None = None

    @property
    def engine_name(self) -> str:
        return self._engine_arg if isinstance(self._engine_arg, str) else self._engine_arg.name

    @property
    def engine(self) -> SqlEngine:
        if self._engine is None:
            self._engine = make_engine(self._engine_arg) if isinstance(self._engine_arg, str) else self._engine_arg
        return self._engine

    def close(self) -> None:
        if self._engine is not None and isinstance(self._engine_arg, str):
            self._engine.close()
        self._engine = None

    @property
    def videos(self) -> dict[str, str]:
        if self._videos is None:
            self._videos = load_video_texts(self.inp.videos)
        return self._videos

    def register(self, *names: str) -> None:
        paths = {
            "search_log": self.inp.search_log,
            "rec_log": self.inp.rec_log,
            **{
                n: self.work / f"{n}.parquet"
                for n in ("log_samples", "p1_candidates", "p2_candidates", "theta", "p3", "examples")
            },
        }
        for n in names:
            self.engine.register(n, paths[n])

    @property
    def discriminator(self) -> Discriminator | CrossEncoderTheta:
        """θ: the bi-encoder (``auto``, ``torch``, ``onnx-int8`` embeddings) or the cross-encoder (``cross``)."""
        if self._disc is None:
            if self.theta_backend == "cross":
                self._disc = CrossEncoderTheta(
                    threads=self.threads,
                    n_layers=self.theta_cross["n_layers"],
                    steps=self.theta_cross["steps"],
                    max_length=self.theta_cross["max_length"],
                )
            else:
                self._disc = Discriminator(
                    cache_path=self.work / "embeddings.npz", threads=self.threads, backend=self.theta_backend
                )
        return self._disc

    def score(self, queries: list[str], docs: list[str]) -> np.ndarray:
        if self.fake_scorer is not None:
            return np.asarray(self.fake_scorer(queries, docs), dtype=np.float64)
        return self.discriminator.score(queries, docs, progress=self.progress)

    def candidate_pairs(self) -> tuple[list[str], list[str]]:
        """Distinct (query, video_id) over P1 ∪ P2 candidates, sorted (deterministic order)."""
        pairs: set[tuple[str, str]] = set()
        for name in ("p1_candidates", "p2_candidates"):
            t = read_table(self.work / f"{name}.parquet", ["query", "video_id"])
            pairs.update(zip(t.column("query").to_pylist(), t.column("video_id").to_pylist(), strict=True))
        srt = sorted(pairs)
        return [p[0] for p in srt], [p[1] for p in srt]

    def duck(self) -> Any:
        """An in-process DuckDB over this run's tables (the shared Python steps use it for joins
        over millions of pairs; it is a library here, whichever engine ran the perspectives)."""
        import duckdb

        con = duckdb.connect(":memory:")
        con.execute(f"SET threads = {max(1, self.threads)}")
        for n in ("log_samples", "p1_candidates", "p2_candidates", "theta"):
            path = self.work / f"{n}.parquet"
            if path.exists():
                src = str(path / "*.parquet") if path.is_dir() else str(path)
                con.execute(f"CREATE VIEW {n} AS SELECT * FROM read_parquet('{sql_str(src)}')")
        # sorted: a parallel engine writes rows in any order, and the random fit pairs are drawn per query
        qs = sorted(pc.unique(read_table(self.work / "log_samples.parquet", ["query"]).column("query")).to_pylist())
        if self._test_queries is None:
            self._test_queries = test_query_strings(self.inp.logs)
        # held out from θ's fit: a deterministic half of the queries, and every test-set string
        in_test = [normalize_text(str(q)) in self._test_queries for q in qs]
        con.register(
            "qflags",
            pa.table({"query": qs, "is_eval": [is_eval_query(q) or t for q, t in zip(qs, in_test, strict=True)],
                      "in_test": in_test}),
        )
        con.register("vids", pa.table({"video_id": sorted(self.videos)}))
        if self.inp.labels is not None:
            src = sql_str(str(self.inp.labels))
            cols = set(pq.read_schema(self.inp.labels).names)
            y = f"CAST(grade >= {int(self.relevant_grade)} AS INT)" if "grade" in cols else "CAST(label AS INT)"
            con.execute(
                f"CREATE VIEW truth AS SELECT CAST(query AS VARCHAR) AS query, CAST(video_id AS VARCHAR) "
                f"AS video_id, MAX({y}) AS y FROM read_parquet('{src}') GROUP BY 1, 2"
            )
            if "grade" in cols:
                con.execute(
                    f"CREATE VIEW truth_grade AS SELECT CAST(query AS VARCHAR) AS query, CAST(video_id AS VARCHAR) "
                    f"AS video_id, MAX(grade) AS grade FROM read_parquet('{src}') GROUP BY 1, 2"
                )
        return con

    def ensure_theta_loaded(self) -> None:
        if self.fake_scorer is None and self.discriminator.w is None:
            self.discriminator.load(self.work / "theta_model")

    def save_embeddings(self) -> None:
        """Persist θ's embedding cache (reruns embed nothing twice)."""
        if self._disc is not None:
            self._disc.cache.save()
