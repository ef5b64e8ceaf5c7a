"""``mine``: logs → labelled samples, as resumable steps run by a small runner.

Steps (each a function in ``training.engine.steps`` over the shared ``MineContext``; each writes its
outputs atomically under ``OUT/work`` and records a digest of its inputs and settings, chained
through the steps before it, in ``OUT/work/state.json``; a rerun skips every step whose digest is
unchanged and whose outputs exist):

1. ``sql``          engine (DuckDB or Spark): log-stage samples + P0, P1/P2 candidates, P3 examples
2. ``theta_fit``    fit θ on labelled pairs of half the queries (truth, user labels, or weak clicks)
3. ``theta_score``  θ for every distinct P1 ∪ P2 candidate pair
4. ``p3``           descriptions from the LLM / simulated LLM, quality-filtered (θ ≥ α)
5. ``assemble``     engine: highest level per (query, video) / (query, text) → ``OUT/samples.parquet``
6. ``report``       counts, never-exposed positives, α sweep vs truth, θ calibration → report.md/json
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.atomic import atomic_write_json
from core.samples import SAMPLES_FILE
from training.engine import steps
from training.engine.config import MineConfig
from training.engine.context import MineContext
from training.engine.tables import MineInputs, digest, fingerprint, read_table, resolve_inputs

__all__ = ["STEPS", "MineInputs", "MineResult", "Miner", "Step", "mine", "read_table", "resolve_inputs"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """One resumable step: what it depends on besides the steps before it, what it writes, what it runs."""

    name: str
    key: Callable[[MineContext], Any]
    outputs: Callable[[MineContext], list[Path]]
    run: Callable[[MineContext], object]


def _report(ctx: MineContext) -> None:
    from training.engine.report import build_report

    build_report(ctx, total_seconds=time.perf_counter() - getattr(ctx, "started", time.perf_counter()))


STEPS: tuple[Step, ...] = (
    Step(
        "sql",
        lambda c: (
            "examples-with-demand",
            fingerprint(c.inp.search_log),
            fingerprint(c.inp.rec_log),
            c.cfg.digest(
                "reformulation_window_s", "rec_window_s", "rec_cap_per_user", "rec_actions", "rec_exclude_actions"
            ),
        ),
        lambda c: [c.work / f"{n}.parquet" for n in ("log_samples", "p1_candidates", "p2_candidates", "examples")],
        steps.run_sql,
    ),
    Step(
        "theta_fit",
        lambda c: (
            fingerprint(c.inp.labels) if c.inp.labels else "weak",
            c.relevant_grade,
            c.max_fit_pairs,
            c.seed,
            c.fake_scorer is not None,
            c.theta_backend,
            c.theta_cross if c.theta_backend == "cross" else None,
        ),
        lambda c: [c.work / "theta_fit.json"],
        steps.fit_theta,
    ),
    Step(
        "theta_score",
        lambda c: (fingerprint(c.inp.videos), "recalibrated-v2"),
        lambda c: [c.work / "theta.parquet"],
        steps.score_candidates,
    ),
    Step(
        "p3",
        lambda c: (
            (c.source.model, c.source.prompt_version) if c.source else None,
            c.cfg.digest(
                "alpha", "p3_n", "p3_max_queries", "p3_min_chars", "p3_max_chars", "p3_sampling", "p3_volume",
                "p3_max_per_query",
            ),
            c.seed,
        ),
        lambda c: [c.work / "p3.parquet", c.out / "llm_positives.parquet"],
        steps.run_p3,
    ),
    Step("assemble", lambda c: (c.engine_name, c.cfg.alpha), lambda c: [c.out / SAMPLES_FILE], steps.assemble),
    Step(
        "report",
        lambda c: c.cfg.digest("alpha_sweep"),
        lambda c: [c.out / "report.json", c.out / "report.md"],
        _report,
    ),
)


@dataclass
class MineResult:
    out: Path
    samples: Path
    report: dict[str, Any]
    steps_run: list[str] = field(default_factory=list)
    steps_skipped: list[str] = field(default_factory=list)


class Miner(MineContext):
    """Runs :data:`STEPS` in order, skipping the ones that are up to date (see the module docstring)."""

    def run(self, plan: Sequence[Step] = STEPS) -> MineResult:
        self.started = time.perf_counter()
        state_path = self.work / "state.json"
        state: dict[str, str] = json.loads(state_path.read_text()) if state_path.is_file() else {}
        ran: list[str] = []
        skipped: list[str] = []
        chain = ""
        try:
            for step in plan:
                chain = digest(step.name, chain, step.key(self))
                if state.get(step.name) == chain and all(p.exists() for p in step.outputs(self)):
                    log.info("step %s: up to date, skipped", step.name)
                    skipped.append(step.name)
                    continue
                log.info("step %s: running", step.name)
                t0 = time.perf_counter()
                step.run(self)
                self._record_time(step.name, time.perf_counter() - t0)
                state[step.name] = chain
                atomic_write_json(state_path, state)
                ran.append(step.name)
        finally:
            self.close()
        report = json.loads((self.out / "report.json").read_text())
        return MineResult(self.out, self.out / SAMPLES_FILE, report, ran, skipped)

    def _record_time(self, name: str, seconds: float) -> None:
        """Keep the last measured time of every step across resumed runs (for the report)."""
        tpath = self.work / "timings.json"
        kept = json.loads(tpath.read_text()) if tpath.is_file() else {}
        kept[name] = {"seconds": round(seconds, 2), "engine": self.engine_name}
        atomic_write_json(tpath, kept)


def mine(
    logs: Path,
    out: Path,
    cfg: MineConfig | None = None,
    *,
    videos: Path | None = None,
    labels: Path | None = None,
    **kwargs: Any,
) -> MineResult:
    """Run (or resume) the data engine; see :class:`MineContext` for the keyword arguments."""
    inputs = resolve_inputs(logs, videos, labels)
    out.mkdir(parents=True, exist_ok=True)
    return Miner(inputs, out, cfg or MineConfig(), **kwargs).run()
