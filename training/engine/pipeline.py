"""``mine``: logs → labelled samples, as resumable steps.

Steps (each writes its outputs atomically under ``OUT/work`` and records a digest of its inputs and
settings in ``OUT/work/state.json``; a rerun skips every step whose digest is unchanged):

1. ``sql``          engine (DuckDB or Spark): log-stage samples + P0, P1/P2 candidates, P3 examples
2. ``theta_fit``    fit θ on labelled pairs of half the queries (truth, user labels, or weak clicks)
3. ``theta_score``  θ for every distinct P1 ∪ P2 candidate pair
4. ``p3``           descriptions from the LLM / simulated LLM, quality-filtered (θ ≥ α)
5. ``assemble``     engine: highest level per (query, video) / (query, text) → ``OUT/samples.parquet``
6. ``report``       counts, never-exposed positives, α sweep vs truth, θ calibration → report.md/json
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.atomic import atomic_write_bytes, atomic_write_json
from core.errors import CropsError, ErrorKind
from core.logs import REC_LOG, SEARCH_LOG
from core.normalize import doc_text
from core.samples import POSITIVE_LEVEL, SAMPLES_FILE, SAMPLES_SCHEMA
from training.engine.config import MineConfig
from training.engine.discriminator import Discriminator
from training.engine.engines import SqlEngine, make_engine
from training.engine.llm_client import DescriptionSource
from training.engine.perspectives import (
    assemble_sql,
    log_samples_sql,
    p1_candidates_sql,
    p2_candidates_sql,
)

log = logging.getLogger(__name__)

P3_SCHEMA = pa.schema(
    [
        ("query", pa.string()),
        ("text", pa.string()),
        ("example_video_id", pa.string()),
        ("model", pa.string()),
        ("prompt_version", pa.string()),
        ("theta", pa.float64()),
        ("keep", pa.bool_()),
        ("reason", pa.string()),
        ("truth_ok", pa.bool_()),  # simulated LLM only: the description truly fits (evaluation)
    ]
)

EXAMPLES_SQL = """
WITH c AS (SELECT query, video_id, COUNT(*) AS n FROM search_log WHERE clicked GROUP BY query, video_id),
r AS (SELECT query, video_id, n, ROW_NUMBER() OVER (PARTITION BY query ORDER BY n DESC, video_id) AS rn FROM c),
d AS (SELECT query, COUNT(DISTINCT request_id) AS demand FROM search_log GROUP BY query)
SELECT r.query AS query, r.video_id AS video_id, r.n AS n, d.demand AS demand
FROM r JOIN d ON d.query = r.query WHERE r.rn = 1
"""


@dataclass
class MineInputs:
    logs: Path
    videos: Path
    labels: Path | None  # (query, video_id, grade|label) parquet; None → weak labels from clicks

    @property
    def search_log(self) -> Path:
        return self.logs / SEARCH_LOG.file

    @property
    def rec_log(self) -> Path:
        return self.logs / REC_LOG.file


def resolve_inputs(logs: Path, videos: Path | None = None, labels: Path | None = None) -> MineInputs:
    """Find the tables (a world's ``WORLD/train`` works as ``--logs``) and check their columns."""
    if not logs.is_dir():
        raise CropsError(ErrorKind.NOT_FOUND, f"--logs {logs} is not a folder")
    if videos is None:
        for cand in (logs / "videos.parquet", logs.parent / "videos.parquet"):
            if cand.exists():
                videos = cand
                break
        else:
            raise CropsError(ErrorKind.NOT_FOUND, f"no videos.parquet in {logs} or its parent; pass --videos")
    if labels is None:
        for cand in (logs / "truth" / "relevance.parquet", logs.parent / "truth" / "relevance.parquet"):
            if cand.exists():
                labels = cand
                break
    inp = MineInputs(logs, videos, labels)
    for contract, path in ((SEARCH_LOG, inp.search_log), (REC_LOG, inp.rec_log)):
        _check_columns(path, contract.columns)
        contract.check_file(path)
    _check_columns(inp.videos, ("video_id", "title"))
    if labels is not None:
        cols = _check_columns(labels, ("query", "video_id"))
        if "grade" not in cols and "label" not in cols:
            raise CropsError(ErrorKind.INVALID_INPUT, f"{labels}: labels need a 'grade' (0..3) or 'label' (0/1) column")
    return inp


def _check_columns(path: Path, needed: tuple[str, ...]) -> set[str]:
    if not path.exists():
        raise CropsError(ErrorKind.NOT_FOUND, f"{path} does not exist")
    try:
        names = set(pq.read_schema(path).names) if path.is_file() else set(pq.ParquetDataset(str(path)).schema.names)
    except Exception as exc:
        raise CropsError(ErrorKind.INVALID_INPUT, f"{path} is not a readable Parquet table ({exc})") from exc
    missing = [c for c in needed if c not in names]
    if missing:
        raise CropsError(ErrorKind.INVALID_INPUT, f"{path} lacks columns {missing} (DESIGN §4)")
    return names


def _sql_str(s: str) -> str:
    return s.replace("'", "''")


def _fingerprint(path: Path) -> str:
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    return hashlib.sha256(
        json.dumps([(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]).encode()
    ).hexdigest()[:16]


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_table(table: pa.Table, path: Path) -> None:
    """Parquet, atomically."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(str(path), columns=columns)


def is_eval_query(query: str) -> bool:
    """Deterministic half of the queries held out from θ's fit: the α sweep is measured on them."""
    return hashlib.sha1(query.encode("utf-8")).digest()[0] % 2 == 1


def load_video_texts(videos: Path) -> dict[str, str]:
    from core.corpus import iter_corpus

    return {d.doc_id: doc_text(d.title, d.text) for d in iter_corpus(videos)}


def load_labels(path: Path, relevant_grade: int) -> dict[tuple[str, str], int]:
    """(query, video_id) → 1/0 (grade ≥ relevant_grade, or a 0/1 label column)."""
    t = read_table(path)
    q = t.column("query").to_pylist()
    v = t.column("video_id").to_pylist()
    if "grade" in t.column_names:
        g = t.column("grade").to_pylist()
        lab = [int(x is not None and x >= relevant_grade) for x in g]
    else:
        lab = [int(bool(x)) for x in t.column("label").to_pylist()]
    out: dict[tuple[str, str], int] = {}
    for a, b, c in zip(q, v, lab, strict=True):
        out[(str(a), str(b))] = max(out.get((str(a), str(b)), 0), c)
    return out


@dataclass
class MineResult:
    out: Path
    samples: Path
    report: dict[str, Any]
    steps_run: list[str] = field(default_factory=list)
    steps_skipped: list[str] = field(default_factory=list)


Scorer = Callable[[list[str], list[str]], np.ndarray]


class Miner:
    """Runs the steps; ``discriminator`` may be injected (tests use a fake θ scorer)."""

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
    ) -> None:
        self.theta_backend = theta_backend
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
        self._disc: Discriminator | None = None
        self._videos: dict[str, str] | None = None
        self.state_path = self.work / "state.json"
        self.state: dict[str, str] = json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}
        self.timings: dict[str, float] = {}
        self.run_steps: list[str] = []
        self.skipped: list[str] = []

    # -- plumbing
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

    def _step(self, name: str, digest: str, outputs: list[Path], fn: Callable[[], None]) -> None:
        if self.state.get(name) == digest and all(p.exists() for p in outputs):
            log.info("step %s: up to date, skipped", name)
            self.skipped.append(name)
            return
        log.info("step %s: running", name)
        t0 = time.perf_counter()
        fn()
        self.timings[name] = round(time.perf_counter() - t0, 2)
        # Keep the last measured time of every step across resumed runs (for the report).
        tpath = self.work / "timings.json"
        kept = json.loads(tpath.read_text()) if tpath.is_file() else {}
        kept[name] = {"seconds": self.timings[name], "engine": self.engine_name}
        atomic_write_json(tpath, kept)
        self.state[name] = digest
        atomic_write_json(self.state_path, self.state)
        self.run_steps.append(name)

    def _register(self, *names: str) -> None:
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

    # -- θ
    @property
    def discriminator(self) -> Discriminator:
        if self._disc is None:
            self._disc = Discriminator(
                cache_path=self.work / "embeddings.npz", threads=self.threads, backend=self.theta_backend
            )
        return self._disc

    def score(self, queries: list[str], docs: list[str]) -> np.ndarray:
        if self.fake_scorer is not None:
            return np.asarray(self.fake_scorer(queries, docs), dtype=np.float64)
        return self.discriminator.score(queries, docs, progress=self.progress)

    # -- steps
    def run(self) -> MineResult:
        t_start = time.perf_counter()
        fp = {"search": _fingerprint(self.inp.search_log), "rec": _fingerprint(self.inp.rec_log)}
        d_sql = _digest(
            "sql",
            "examples-with-demand",
            fp,
            self.cfg.digest(
                "reformulation_window_s", "rec_window_s", "rec_cap_per_user", "rec_actions", "rec_exclude_actions"
            ),
        )
        sql_outs = [self.work / f"{n}.parquet" for n in ("log_samples", "p1_candidates", "p2_candidates", "examples")]
        try:
            self._step("sql", d_sql, sql_outs, self._run_sql)
            labels_fp = _fingerprint(self.inp.labels) if self.inp.labels else "weak"
            d_fit = _digest(
                "fit",
                d_sql,
                labels_fp,
                self.relevant_grade,
                self.max_fit_pairs,
                self.seed,
                self.fake_scorer is not None,
                self.theta_backend,
            )
            self._step("theta_fit", d_fit, [self.work / "theta_fit.json"], self._fit_theta)
            d_score = _digest("score", d_fit, _fingerprint(self.inp.videos), "recalibrated-v2")
            self._step("theta_score", d_score, [self.work / "theta.parquet"], self._score_candidates)
            src = (self.source.model, self.source.prompt_version) if self.source else None
            d_p3 = _digest(
                "p3",
                d_score,
                src,
                self.cfg.digest(
                    "alpha", "p3_n", "p3_max_queries", "p3_min_chars", "p3_max_chars", "p3_sampling", "p3_volume",
                    "p3_max_per_query",
                ),
                self.seed,
            )
            self._step("p3", d_p3, [self.work / "p3.parquet", self.out / "llm_positives.parquet"], self._run_p3)
            d_asm = _digest("assemble", d_p3, self.engine_name, self.cfg.alpha)
            self._step("assemble", d_asm, [self.out / SAMPLES_FILE], self._assemble)
            d_rep = _digest("report", d_asm, self.cfg.digest("alpha_sweep"))
            report: dict[str, Any] = {}

            def _rep() -> None:
                from training.engine.report import build_report

                report.update(build_report(self, total_seconds=time.perf_counter() - t_start))

            self._step("report", d_rep, [self.out / "report.json", self.out / "report.md"], _rep)
            if not report:
                report = json.loads((self.out / "report.json").read_text())
        finally:
            self.close()
        return MineResult(self.out, self.out / SAMPLES_FILE, report, self.run_steps, self.skipped)

    def _run_sql(self) -> None:
        self._register("search_log", "rec_log")
        for name, sql in (
            ("log_samples", log_samples_sql()),
            ("p1_candidates", p1_candidates_sql(self.cfg)),
            ("p2_candidates", p2_candidates_sql(self.cfg)),
            ("examples", EXAMPLES_SQL),
        ):
            n = self.engine.write(sql, self.work / f"{name}.parquet")
            log.info("  %s: %d rows (%s)", name, n, self.engine.name)

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
                con.execute(f"CREATE VIEW {n} AS SELECT * FROM read_parquet('{_sql_str(src)}')")
        qs = pc.unique(read_table(self.work / "log_samples.parquet", ["query"]).column("query")).to_pylist()
        con.register("qflags", pa.table({"query": qs, "is_eval": [is_eval_query(q) for q in qs]}))
        con.register("vids", pa.table({"video_id": sorted(self.videos)}))
        if self.inp.labels is not None:
            src = _sql_str(str(self.inp.labels))
            cols = set(pq.read_schema(self.inp.labels).names)
            y = f"CAST(grade >= {int(self.relevant_grade)} AS INT)" if "grade" in cols else "CAST(label AS INT)"
            con.execute(
                f"CREATE VIEW truth AS SELECT CAST(query AS VARCHAR) AS query, CAST(video_id AS VARCHAR) "
                f"AS video_id, MAX({y}) AS y FROM read_parquet('{src}') GROUP BY 1, 2"
            )
        return con

    def _fit_pairs(self) -> tuple[list[str], list[str], list[int], np.ndarray, str]:
        """Labelled pairs of the fit half of the queries (the other half is held out for the α sweep):
        a few P1/P2 candidates, log samples, truth positives and random videos per query, labelled
        from the labels file (or weak click labels without one), then a uniform sample of at most
        ``max_fit_pairs``. Returns (queries, video_ids, labels, is_candidate, origin)."""
        con = self.duck()
        rng = np.random.default_rng(self.seed)
        fitq = [q for q, e in con.execute("SELECT query, is_eval FROM qflags").fetchall() if not e]
        vid_list = sorted(self.videos)
        rnd = rng.integers(0, len(vid_list), size=(len(fitq), 2))
        con.register(
            "rand_pairs",
            pa.table(
                {
                    "query": np.repeat(np.array(fitq, dtype=object), 2).tolist(),
                    "video_id": [vid_list[int(i)] for i in rnd.ravel()],
                }
            ),
        )
        if self.inp.labels is None:
            # Weak labels: clicked = relevant, filtered before ranking = irrelevant.
            con.execute(
                "CREATE VIEW truth AS SELECT query, video_id, CAST(level = 4 AS INT) AS y "
                "FROM log_samples WHERE level IN (1, 4)"
            )
            origin = "weak labels (clicked vs filtered before ranking)"
            pool = "SELECT query, video_id, 1 AS is_cand, 1 AS kind FROM truth"
        else:
            origin = f"labels from {self.inp.labels.name}"
            pool = """
  SELECT query, video_id, 1 AS is_cand, 0 AS kind FROM p1_candidates
  UNION ALL SELECT query, video_id, 1, 0 FROM p2_candidates
  UNION ALL SELECT query, video_id, 0, 1 FROM log_samples
  UNION ALL SELECT query, video_id, 0, 2 FROM truth WHERE y = 1
  UNION ALL SELECT query, video_id, 0, 3 FROM rand_pairs"""
        seed = int(self.seed)
        rows = con.execute(f"""
WITH pool AS ({pool}),
fit AS (
  SELECT p.* FROM pool p JOIN qflags f ON f.query = p.query AND NOT f.is_eval
  JOIN vids v ON v.video_id = p.video_id
),
ranked AS (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY query, kind ORDER BY hash(video_id, {seed})) AS rn FROM fit
),
picked AS (
  SELECT query, video_id, MAX(is_cand) AS is_cand FROM ranked
  WHERE rn <= CASE kind WHEN 0 THEN 6 WHEN 1 THEN 3 ELSE 2 END
  GROUP BY query, video_id
)
SELECT p.query, p.video_id, COALESCE(t.y, 0) AS y, p.is_cand FROM picked p
LEFT JOIN truth t ON t.query = p.query AND t.video_id = p.video_id
ORDER BY hash(p.query, p.video_id, {seed}), p.query, p.video_id
LIMIT {int(self.max_fit_pairs)}
""").fetchall()
        con.close()
        rows.sort()
        return (
            [r[0] for r in rows],
            [r[1] for r in rows],
            [int(r[2]) for r in rows],
            np.array([bool(r[3]) for r in rows]),
            origin,
        )

    def _fit_theta(self) -> None:
        if self.fake_scorer is not None:
            atomic_write_json(self.work / "theta_fit.json", {"fake_scorer": True})
            return
        qs, vs, ys, is_cand, origin = self._fit_pairs()
        if len(set(ys)) < 2:
            raise CropsError(ErrorKind.INVALID_INPUT, f"θ needs relevant and irrelevant labelled pairs ({origin})")
        t0 = time.perf_counter()
        disc = self.discriminator
        rep = disc.fit(qs, [self.videos[v] for v in vs], ys, seed=self.seed, progress=self.progress, calib_mask=is_cand)
        disc.cache.save()
        disc.save(self.work / "theta_model")
        d = Discriminator.report_dict(rep)
        d.update({"label_origin": origin, "n_pairs": len(ys), "fit_total_seconds": time.perf_counter() - t0})
        atomic_write_json(self.work / "theta_fit.json", d)
        log.info(
            "  θ: AUC %.3f, ECE %.4f (raw %.4f) on %d held-out pairs",
            rep.auc_test,
            rep.ece_test,
            rep.ece_test_raw,
            rep.n_test,
        )

    def _ensure_theta_loaded(self) -> None:
        if self.fake_scorer is None and self.discriminator.w is None:
            self.discriminator.load(self.work / "theta_model")

    def _score_candidates(self) -> None:
        self._ensure_theta_loaded()
        qs, vs = self.candidate_pairs()
        keep = [i for i, v in enumerate(vs) if v in self.videos]
        if len(keep) < len(vs):
            log.warning("  %d candidate videos are not in the videos table; they get no θ", len(vs) - len(keep))
        qs, vs = [qs[i] for i in keep], [vs[i] for i in keep]
        if qs and self.fake_scorer is None and self.inp.labels is not None:
            theta = self._recalibrated_theta(qs, vs)
        else:
            theta = self.score(qs, [self.videos[v] for v in vs]) if qs else np.zeros(0)
        if self._disc is not None:
            self._disc.cache.save()
        write_table(
            pa.table(
                {
                    "query": pa.array(qs, pa.string()),
                    "video_id": pa.array(vs, pa.string()),
                    "theta": pa.array(theta, pa.float64()),
                }
            ),
            self.work / "theta.parquet",
        )

    def _recalibrated_theta(self, qs: list[str], vs: list[str]) -> np.ndarray:
        """θ for every candidate, with Platt refitted on ALL labelled candidates of the fit-half
        queries: the fit step calibrated on a small sample, this calibrates on exactly the
        distribution θ is thresholded on. Held-out queries stay unseen (the α sweep uses them)."""
        from training.engine.discriminator import expected_calibration_error, fit_platt, sigmoid

        disc = self.discriminator
        margin = disc.pair_margins(qs, [self.videos[v] for v in vs], progress=self.progress)
        con = self.duck()
        con.register("pairs", pa.table({"i": np.arange(len(qs)), "query": qs, "video_id": vs}))
        rows = con.execute(
            "SELECT p.i, COALESCE(t.y, 0), COALESCE(f.is_eval, FALSE) FROM pairs p "
            "LEFT JOIN truth t ON t.query = p.query AND t.video_id = p.video_id "
            "LEFT JOIN qflags f ON f.query = p.query ORDER BY p.i"
        ).fetchall()
        con.close()
        y = np.array([r[1] for r in rows], dtype=np.int64)
        fit = ~np.array([bool(r[2]) for r in rows])
        old = disc.platt
        if fit.sum() >= 2 and 0 < y[fit].sum() < fit.sum():
            disc.platt = fit_platt(margin[fit], y[fit])
            disc.save(self.work / "theta_model")
            info = json.loads((self.work / "theta_fit.json").read_text())
            info["recalibration"] = {
                "pairs": int(fit.sum()),
                "platt_before": list(old),
                "platt_after": list(disc.platt),
                "ece_fit_candidates_before": expected_calibration_error(sigmoid(old[0] * margin[fit] + old[1]), y[fit]),
                "ece_fit_candidates_after": expected_calibration_error(
                    sigmoid(disc.platt[0] * margin[fit] + disc.platt[1]), y[fit]
                ),
            }
            atomic_write_json(self.work / "theta_fit.json", info)
        return sigmoid(disc.platt[0] * margin + disc.platt[1])

    def p3_requests(self) -> tuple[list[tuple[str, str, str]], list[int]]:
        """The queries the LLM is asked about, each with its most-clicked video as the example, and
        how many descriptions each gets (see ``MineConfig.p3_sampling``)."""
        from training.engine.p3 import allocate_by_demand

        ex = read_table(self.work / "examples.parquet").to_pydict()
        demand = ex.get("demand") or ex["n"]
        rows = sorted(
            (q, v, self.videos[v], float(d))
            for q, v, d in zip(ex["query"], ex["video_id"], demand, strict=True)
            if v in self.videos
        )
        if self.cfg.p3_max_queries:  # a hash sample, not the alphabetical head
            rows = sorted(rows, key=lambda e: hashlib.sha1(e[0].encode("utf-8")).digest())
            rows = sorted(rows[: self.cfg.p3_max_queries])
        if self.cfg.p3_sampling == "all":
            counts = [self.cfg.p3_n] * len(rows)
        else:
            levels = read_table(self.work / "log_samples.parquet", ["level"]).column("level")
            clicks = int(pc.sum(pc.equal(levels, POSITIVE_LEVEL)).as_py() or 0)
            total = round(self.cfg.p3_volume * clicks)
            counts = allocate_by_demand([r[3] for r in rows], total, self.cfg.p3_max_per_query, self.seed).tolist()
        keep = [i for i, c in enumerate(counts) if c > 0]
        return [rows[i][:3] for i in keep], [int(counts[i]) for i in keep]

    def _run_p3(self) -> None:
        from training.engine.p3 import generate_p3

        rows: list[Any] = []
        results: list[Any] = []
        if self.source is not None and self.cfg.p3_n > 0:
            self._ensure_theta_loaded()
            examples, counts = self.p3_requests()
            rows, results = generate_p3(
                self.source,
                examples,
                self.score,
                n=counts,
                alpha=self.cfg.alpha,
                min_chars=self.cfg.p3_min_chars,
                max_chars=self.cfg.p3_max_chars,
                progress=self.progress,
            )
            if self._disc is not None:
                self._disc.cache.save()
        model = self.source.model if self.source else ""
        pv = self.source.prompt_version if self.source else ""
        table = pa.Table.from_pylist(
            [
                {
                    "query": r.query,
                    "text": r.text,
                    "example_video_id": r.example_video_id,
                    "model": model,
                    "prompt_version": pv,
                    "theta": r.theta,
                    "keep": r.keep,
                    "reason": r.reason,
                    "truth_ok": r.truth_ok,
                }
                for r in rows
            ],
            schema=P3_SCHEMA,
        )
        write_table(table, self.work / "p3.parquet")
        kept = table.filter(table.column("keep"))
        write_table(
            kept.select(["query", "text", "example_video_id", "model", "prompt_version"]),
            self.out / "llm_positives.parquet",
        )
        from training.engine.llm_client import iter_errors

        atomic_write_json(
            self.work / "p3_stats.json",
            {
                "queries": len(results),
                "cached": sum(r.cached for r in results),
                "errors": iter_errors(results),
                "descriptions": len(rows),
                "reasons": {k: sum(r.reason == k for r in rows) for k in sorted({r.reason for r in rows})},
            },
        )

    def _assemble(self) -> None:
        self._register("log_samples", "p1_candidates", "p2_candidates", "theta", "p3")
        raw = self.work / "samples_raw.parquet"
        self.engine.write(assemble_sql(self.cfg), raw)
        t = read_table(raw).select(SAMPLES_SCHEMA.names).cast(SAMPLES_SCHEMA)
        t = t.sort_by(
            [
                ("query", "ascending"),
                ("level", "descending"),
                ("source", "ascending"),
                ("video_id", "ascending"),
                ("text", "ascending"),
            ]
        )
        write_table(t, self.out / SAMPLES_FILE)


def mine(
    logs: Path,
    out: Path,
    cfg: MineConfig | None = None,
    *,
    videos: Path | None = None,
    labels: Path | None = None,
    **kwargs: Any,
) -> MineResult:
    """Run (or resume) the data engine; see :class:`Miner` for the keyword arguments."""
    inputs = resolve_inputs(logs, videos, labels)
    out.mkdir(parents=True, exist_ok=True)
    return Miner(inputs, out, cfg or MineConfig(), **kwargs).run()
